"""Build a synthetic itsup host tree for the benchmark, deterministically from a seed.

Layout (under ROOT):

    projects/itsup.yml                        backup settings (S3 target)
    projects/<name>/docker-compose.yml        project definitions
    projects/<name>/ingress.yml
    upstream/<name>/docker-compose.yml        generated compose files
    upstream/<name>/volumes/...               the bulk: bind-mounted volume data
    proxy/docker-compose.yml
    proxy/traefik/traefik.yml
    proxy/traefik/acme.json                   mode 0600

The volume data is roughly half compressible (log-, JSON- and text-like, about 3-4x with
gzip -6) and half incompressible (random bytes standing in for photos, video and archives),
by bytes. It holds many small files (100 B - 16 KiB) and a few large ones (up to 200 MiB,
bigger shares are split into parts). Every run with the same arguments writes the same bytes.

Run standalone: python bench/synth.py ROOT [--size-mb N] [--small-files N] [--seed N]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20
WRITE_CHUNK = 4 * MIB
MAX_LARGE_FILE = 200 * MIB
SMALL_MIN, SMALL_MAX = 100, 16 * 1024
POOL_LINES = 50_000
FILES_PER_DIR = 100

LineMaker = Callable[[random.Random], str]


@dataclass(frozen=True)
class Project:
    name: str
    image: str
    port: int
    volumes: tuple[str, ...]


PROJECTS: tuple[Project, ...] = (
    Project("blog", "ghost:5", 2368, ("content",)),
    Project("cloud", "nextcloud:29", 80, ("data", "config")),
    Project("git", "gitea/gitea:1.22", 3000, ("repos",)),
    Project("metrics", "grafana/loki:3.0", 3100, ("logs", "tsdb")),
    Project("db", "postgres:16", 5432, ("pgdata",)),
    Project("photos", "immich-app/immich-server:v1.106", 2283, ("library", "thumbs")),
)


@dataclass(frozen=True)
class SmallDir:
    """A folder that receives a share of the small files."""

    path: str  # relative to upstream/
    compressible: bool
    ext: str
    kind: str = "text"  # line pool for compressible content


SMALL_DIRS: tuple[SmallDir, ...] = (
    SmallDir("blog/volumes/content/posts", True, "md", "text"),
    SmallDir("cloud/volumes/data/alice/files/notes", True, "txt", "text"),
    SmallDir("cloud/volumes/config/apps", True, "json", "json"),
    SmallDir("metrics/volumes/logs/services", True, "log", "log"),
    SmallDir("blog/volumes/content/images", False, "jpg"),
    SmallDir("git/volumes/repos/objects", False, "pack"),
    SmallDir("photos/volumes/thumbs/preview", False, "webp"),
)


@dataclass(frozen=True)
class LargeShare:
    """A share of the remaining bytes written as one or a few large files."""

    path: str  # relative to upstream/
    compressible: bool
    weight: float
    kind: str = "log"
    spread: bool = False  # many medium files (1-6 MiB) instead of one large file


LARGE_SHARES: tuple[LargeShare, ...] = (
    LargeShare("db/volumes/pgdata/dumps/app.sql", True, 0.40, "json"),
    LargeShare("metrics/volumes/logs/access.log", True, 0.35, "log"),
    LargeShare("cloud/volumes/data/alice/files/export.json", True, 0.25, "json"),
    LargeShare("cloud/volumes/data/bob/files/holiday.mp4", False, 0.40),
    LargeShare("cloud/volumes/data/bob/files/archive.tar.gz", False, 0.25),
    LargeShare("photos/volumes/library/2024/IMG.jpg", False, 0.20, spread=True),
    LargeShare("metrics/volumes/tsdb/chunks/000001", False, 0.15),
)

MAGIC = {"jpg": b"\xff\xd8\xff\xe0", "webp": b"RIFF", "pack": b"PACK", "mp4": b"\x00\x00\x00 ftyp"}


@dataclass
class TreeStats:
    """What was written under upstream/ and proxy/ (the data every method backs up)."""

    files: int = 0
    bytes: int = 0
    compressible_bytes: int = 0
    incompressible_bytes: int = 0
    small_files: int = 0
    large_files: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TreeStats:
        data = json.loads(text)
        data["large_files"] = [tuple(item) for item in data["large_files"]]
        return cls(**data)

    def describe(self) -> str:
        return (
            f"{self.bytes / MIB:.0f} MiB in {self.files} files under upstream/ and proxy/ "
            f"({self.compressible_bytes / max(self.bytes, 1):.0%} compressible by bytes, "
            f"{self.small_files} small files of 100 B - 16 KiB, "
            f"{len(self.large_files)} files of 16 MiB or more)"
        )


def itsup_config(
    bucket: str = "itsup-bench",
    endpoint: str = "http://127.0.0.1:9000",
    prefix: str = "bench-itsup/",
) -> str:
    """The projects/itsup.yml the benchmark uses; credentials come from the environment."""
    return (
        "backup:\n"
        "  s3:\n"
        f"    bucket: {bucket}\n"
        f"    prefix: {prefix}\n"
        "    region: us-east-1\n"
        f"    endpoint: {endpoint}\n"
        "    access_key_id: ${AWS_ACCESS_KEY_ID}\n"
        "    secret_access_key: ${AWS_SECRET_ACCESS_KEY}\n"
        "  include_volumes: true\n"
        "  compression: true\n"
    )


# --- content generators -------------------------------------------------------------------


def make_vocabulary(rng: random.Random, size: int) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = range(len(letters), 0, -1)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choices(letters, weights=weights, k=rng.randint(3, 10))))
    return sorted(words)


class ContentFactory:
    """Produces compressible and incompressible bytes from one seeded generator.

    Compressible content is a random sequence of lines drawn from per-kind pools of
    template-generated lines, so it repeats within gzip's window (ratio about 3-4x) but no
    two stretches of a file, or of two files, are the same (no free deduplication).
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = make_vocabulary(self.rng, 3000)
        self.paths = [
            "/" + "/".join(self.rng.sample(self.vocab, self.rng.randint(1, 4))) for _ in range(400)
        ]
        self.agents = [
            "Mozilla/5.0 (X11; Linux x86_64) " + " ".join(self.rng.sample(self.vocab, 3))
            for _ in range(40)
        ]
        makers: dict[str, LineMaker] = {
            "log": self._log_line,
            "json": self._json_line,
            "text": self._text_line,
        }
        self.pools = {
            kind: [maker(self.rng).encode() for _ in range(POOL_LINES)]
            for kind, maker in makers.items()
        }
        self.avg_line = {
            kind: sum(map(len, pool)) // len(pool) for kind, pool in self.pools.items()
        }

    def _log_line(self, rng: random.Random) -> str:
        return (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z "
            f"{rng.choice(['INFO', 'INFO', 'INFO', 'WARN', 'DEBUG', 'ERROR'])} "
            f"[{rng.choice([p.name for p in PROJECTS])}] "
            f"{rng.choice(['GET', 'GET', 'POST', 'PUT', 'DELETE'])} {rng.choice(self.paths)}"
            f"?id={rng.randint(1, 99999)} {rng.choice([200, 200, 200, 201, 204, 304, 404, 500])} "
            f"{rng.randint(1, 999)}ms ip=10.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f'{rng.randint(1, 254)} ua="{rng.choice(self.agents)}"\n'
        )

    def _json_line(self, rng: random.Random) -> str:
        record = {
            "id": rng.randint(1, 10**7),
            "type": rng.choice([p.name for p in PROJECTS]),
            "name": " ".join(rng.sample(self.vocab, 2)),
            "tags": [rng.choice(self.vocab), rng.choice(self.vocab)],
            "active": rng.random() < 0.5,
            "score": round(rng.random() * 100, 3),
            "owner": {
                "user": rng.choice(self.vocab),
                "email": f"{rng.choice(self.vocab)}@example.org",
            },
            "updated": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
        }
        return json.dumps(record) + ",\n"

    def _text_line(self, rng: random.Random) -> str:
        sentence = " ".join(rng.choices(self.vocab[:800], k=rng.randint(8, 24))).capitalize()
        end = rng.choice([".", ".", ",", ";", "?"])
        return sentence + end + ("\n\n" if rng.random() < 0.1 else "\n")

    def compressible(self, kind: str, size: int) -> bytes:
        pool = self.pools[kind]
        out = b"".join(self.rng.choices(pool, k=size // self.avg_line[kind] + 2))
        while len(out) < size:
            out += b"".join(self.rng.choices(pool, k=64))
        return out[:size]

    def incompressible(self, size: int, ext: str = "") -> bytes:
        magic = MAGIC.get(ext, b"")[:size]
        return magic + self.rng.randbytes(size - len(magic))

    def chunks(self, size: int, compressible: bool, kind: str, ext: str) -> Iterator[bytes]:
        remaining = size
        first = True
        while remaining > 0:
            n = min(WRITE_CHUNK, remaining)
            if compressible:
                yield self.compressible(kind, n)
            else:
                yield self.incompressible(n, ext if first else "")
            remaining -= n
            first = False


# --- tree writers -------------------------------------------------------------------------


def write_text(path: Path, text: str, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)


def write_chunks(path: Path, chunks: Iterator[bytes]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in chunks:
            f.write(chunk)
            written += len(chunk)
    return written


def project_compose(project: Project) -> str:
    mounts = "".join(f"      - ./volumes/{v}:/srv/{v}\n" for v in project.volumes)
    return (
        "services:\n"
        "  app:\n"
        f"    image: {project.image}\n"
        "    restart: unless-stopped\n"
        "    environment:\n"
        f"      - APP_SECRET=${{{project.name.upper()}_SECRET}}\n"
        "    volumes:\n"
        f"{mounts}"
        "    networks:\n"
        "      - proxynet\n"
        "networks:\n"
        "  proxynet:\n"
        "    external: true\n"
    )


def project_ingress(project: Project) -> str:
    return (
        "enabled: true\n"
        "ingress:\n"
        "  - service: app\n"
        f"    domain: {project.name}.example.org\n"
        f"    port: {project.port}\n"
        "    router: http\n"
    )


def upstream_compose(project: Project) -> str:
    labels = (
        "    labels:\n"
        "      - traefik.enable=true\n"
        f"      - traefik.http.routers.{project.name}.rule=Host(`{project.name}.example.org`)\n"
        f"      - traefik.http.routers.{project.name}.tls.certresolver=letsencrypt\n"
        f"      - traefik.http.services.{project.name}.loadbalancer.server.port={project.port}\n"
    )
    return project_compose(project).replace("    networks:\n", labels + "    networks:\n", 1)


TRAEFIK_YML = """\
entryPoints:
  web:
    address: ":80"
    http:
      redirections:
        entryPoint:
          to: websecure
  websecure:
    address: ":443"
providers:
  docker:
    exposedByDefault: false
    network: proxynet
certificatesResolvers:
  letsencrypt:
    acme:
      email: admin@example.org
      storage: /etc/traefik/acme.json
      tlsChallenge: {}
log:
  level: INFO
"""

PROXY_COMPOSE = """\
services:
  traefik:
    image: traefik:v3.2
    restart: unless-stopped
    ports:
      - "80:80"
      - "443:443"
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock:ro
      - ./traefik/traefik.yml:/etc/traefik/traefik.yml:ro
      - ./traefik/acme.json:/etc/traefik/acme.json
    networks:
      - proxynet
networks:
  proxynet:
    external: true
"""


def acme_json(factory: ContentFactory) -> str:
    certs = [
        {
            "domain": {"main": f"{p.name}.example.org"},
            "certificate": base64.b64encode(factory.incompressible(1800)).decode(),
            "key": base64.b64encode(factory.incompressible(1200)).decode(),
            "Store": "default",
        }
        for p in PROJECTS
    ]
    account = {
        "Email": "admin@example.org",
        "PrivateKey": base64.b64encode(factory.incompressible(1200)).decode(),
    }
    return json.dumps({"letsencrypt": {"Account": account, "Certificates": certs}}, indent=2)


def write_config_files(root: Path, factory: ContentFactory, config: str, stats: TreeStats) -> None:
    write_text(root / "projects" / "itsup.yml", config)
    for project in PROJECTS:
        write_text(
            root / "projects" / project.name / "docker-compose.yml", project_compose(project)
        )
        write_text(root / "projects" / project.name / "ingress.yml", project_ingress(project))
        path = root / "upstream" / project.name / "docker-compose.yml"
        write_text(path, upstream_compose(project))
        stats.files += 1
        stats.bytes += path.stat().st_size
    for rel, text, mode in (
        ("proxy/docker-compose.yml", PROXY_COMPOSE, None),
        ("proxy/traefik/traefik.yml", TRAEFIK_YML, None),
        ("proxy/traefik/acme.json", acme_json(factory), 0o600),
    ):
        write_text(root / rel, text, mode)
        stats.files += 1
        stats.bytes += (root / rel).stat().st_size


def small_file_sizes(rng: random.Random, count: int, budget: int) -> list[int]:
    """Sizes uniform in 100 B - 16 KiB, shrunk if they would take more than `budget` bytes."""
    sizes = [rng.randint(SMALL_MIN, SMALL_MAX) for _ in range(count)]
    total = sum(sizes)
    if total > budget > 0:
        scale = budget / total
        sizes = [max(SMALL_MIN, int(s * scale)) for s in sizes]
    return sizes


def write_small_files(
    upstream: Path, factory: ContentFactory, sizes: list[int], stats: TreeStats
) -> None:
    counters = [0] * len(SMALL_DIRS)
    rng = factory.rng
    for size in sizes:
        # Half of the picks go to compressible folders, half to incompressible ones.
        compressible = rng.random() < 0.5
        choices = [i for i, d in enumerate(SMALL_DIRS) if d.compressible == compressible]
        index = rng.choice(choices)
        spec = SMALL_DIRS[index]
        n = counters[index]
        counters[index] += 1
        path = upstream / spec.path / f"{n // FILES_PER_DIR:03d}" / f"f{n:06d}.{spec.ext}"
        data = (
            factory.compressible(spec.kind, size)
            if spec.compressible
            else factory.incompressible(size, spec.ext)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stats.files += 1
        stats.small_files += 1
        stats.bytes += size
        if spec.compressible:
            stats.compressible_bytes += size
        else:
            stats.incompressible_bytes += size


def part_sizes(total: int, spread: bool, rng: random.Random) -> list[int]:
    """Split a share into files: medium files of 1-6 MiB if spread, else parts of <= 200 MiB."""
    if total <= 0:
        return []
    if spread:
        sizes: list[int] = []
        while total > 0:
            n = min(total, rng.randint(1 * MIB, 6 * MIB))
            sizes.append(n)
            total -= n
        return sizes
    parts = -(-total // MAX_LARGE_FILE)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def numbered(path: str, index: int, count: int) -> str:
    if count == 1:
        return path
    stem, dot, ext = path.rpartition(".")
    if not dot or "/" in ext:
        return f"{path}.{index + 1:04d}"
    return f"{stem}-{index + 1:04d}.{ext}"


def write_large_files(
    upstream: Path,
    factory: ContentFactory,
    compressible_budget: int,
    incompressible_budget: int,
    stats: TreeStats,
) -> None:
    for compressible, budget in ((True, compressible_budget), (False, incompressible_budget)):
        shares = [s for s in LARGE_SHARES if s.compressible == compressible]
        total_weight = sum(s.weight for s in shares)
        for share in shares:
            share_bytes = int(max(budget, 0) * share.weight / total_weight)
            sizes = part_sizes(share_bytes, share.spread, factory.rng)
            ext = share.path.rpartition(".")[2]
            for i, size in enumerate(sizes):
                path = upstream / numbered(share.path, i, len(sizes))
                written = write_chunks(path, factory.chunks(size, compressible, share.kind, ext))
                stats.files += 1
                stats.bytes += written
                if compressible:
                    stats.compressible_bytes += written
                else:
                    stats.incompressible_bytes += written
                if written >= 16 * MIB:
                    stats.large_files.append(
                        (path.relative_to(upstream.parent).as_posix(), written)
                    )


def build_tree(
    root: Path,
    size_mb: int = 1024,
    small_files: int = 20_000,
    seed: int = 1,
    config: str | None = None,
) -> TreeStats:
    """Write the synthetic host tree under `root` (which must not exist or be empty)."""
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    factory = ContentFactory(seed)
    stats = TreeStats()
    write_config_files(root, factory, config or itsup_config(), stats)
    upstream = root / "upstream"
    total = size_mb * MIB
    sizes = small_file_sizes(factory.rng, small_files, total // 2)
    write_small_files(upstream, factory, sizes, stats)
    half = total // 2
    write_large_files(
        upstream,
        factory,
        half - stats.compressible_bytes,
        total - half - stats.incompressible_bytes,
        stats,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="folder to create (must be empty or absent)")
    parser.add_argument("--size-mb", type=int, default=1024, help="total size in MiB")
    parser.add_argument("--small-files", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bucket", default="itsup-bench")
    parser.add_argument("--endpoint", default="http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    stats = build_tree(
        args.root,
        args.size_mb,
        args.small_files,
        args.seed,
        itsup_config(args.bucket, args.endpoint),
    )
    print(stats.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
