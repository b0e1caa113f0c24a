"""What the tests share (fixtures are in conftest.py): the `itsup` command, sample host
trees and their backup storage as an operator sees it, and snapshots of a host tree
to compare before and after a restore.

Hosts are built in three steps, each on the one before: `make_host` lays out the
tree, `setup_host` adds an itsup.yml for the local target or the S3 server and
returns its `Store`, and the `new_host` fixture calls `setup_host` in the test's
own folder, once per target kind.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3server import S3Server

from itsup.manifest import Manifest, ObjectRef

REPO = Path(__file__).resolve().parent.parent
ITSUP = [sys.executable, "-m", "itsup"]
MiB = 1 << 20
GiB = 1 << 30
TOPS = ("upstream", "proxy")
ACME = "proxy/traefik/acme.json"
NAME_RE = re.compile(r"^backup-\d{4}-\d{2}-\d{2}-\d{6}$")
STAGING_MARK = ".itsup-restore-"
LOCK_FILE = ".itsup-backup.lock"  # the host lock, in the host root


# -- the command ---------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_itsup(
    *args: str | os.PathLike[str],
    root: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
    expect: int | None = None,
) -> Result:
    """Run the installed `itsup` command as an operator would, in a subprocess.

    With `expect`, the exit code must be that one and no traceback may show;
    without it the caller checks the Result itself.
    """
    cmd = [*ITSUP]
    if root is not None:
        cmd += ["--root", str(root)]
    cmd += [str(a) for a in args]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ITSUP_ROOT", None) if root is not None else None
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=stdin if stdin is not None else "",
        cwd=str(root or REPO),
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if expect is not None:
        assert res.code == expect, f"itsup {' '.join(map(str, args))}: exit {res.code}\n{res.err}"
        assert "Traceback" not in res.err + res.out
    return res


def itsup(root: Path, *args: str | os.PathLike[str], expect: int = 0, **kw: Any) -> Result:
    """`run_itsup(*args, root=root, expect=0)`: the short form most end-to-end tests use."""
    kw.setdefault("timeout", 120)
    return run_itsup(*args, root=root, expect=expect, **kw)


def start_itsup(
    root: Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None, **kw: Any
) -> subprocess.Popen[str]:
    """`itsup --root ROOT ARGS` running in the background, as cron would start it.

    Its stdout and stderr are pipes (text); `env` adds to the environment; other
    keyword arguments go to Popen.
    """
    full_env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"} | (env or {})
    return subprocess.Popen(
        [*ITSUP, "--root", str(root), *map(str, args)],
        cwd=root,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# -- hosts and their storage ---------------------------------------------------------


def write_config(root: Path, text: str) -> None:
    (root / "projects").mkdir(parents=True, exist_ok=True)
    (root / "projects" / "itsup.yml").write_text(text)


def s3_config(server: S3Server, prefix: str, extra: str = "") -> str:
    return (
        "backup:\n"
        "  s3:\n"
        f"    bucket: {server.bucket}\n"
        f"    prefix: {prefix}\n"
        "    region: us-east-1\n"
        f"    endpoint: {server.endpoint}\n"
        "    access_key_id: ${S3_KEY_ID}\n"
        "    secret_access_key: ${S3_SECRET}\n"
        f"{extra}"
    )


def s3_secrets(root: Path, server: S3Server) -> None:
    """Credentials go where operators keep them: secrets/itsup.txt."""
    (root / "secrets").mkdir(parents=True, exist_ok=True)
    path = root / "secrets" / "itsup.txt"
    path.write_text(f"S3_KEY_ID={server.access_key}\nS3_SECRET={server.secret_key}\n")
    path.chmod(0o600)


def make_host(root: Path, *, volumes: bool = True) -> Path:
    """A small host tree as the spec lays it out."""
    (root / "projects" / "app").mkdir(parents=True, exist_ok=True)
    (root / "projects" / "app" / "docker-compose.yml").write_text(
        "services:\n  web:\n    image: nginx\n"
    )
    (root / "projects" / "app" / "ingress.yml").write_text("enabled: true\n")
    (root / "projects" / "traefik.yml").write_text("log:\n  level: INFO\n")
    for project in ("app", "blog"):
        up = root / "upstream" / project
        up.mkdir(parents=True, exist_ok=True)
        (up / "docker-compose.yml").write_text(f"services:\n  {project}:\n    image: {project}\n")
        if volumes:
            (up / "volumes" / "data").mkdir(parents=True, exist_ok=True)
            (up / "volumes" / "data" / "db.bin").write_bytes(os.urandom(200_000))
    traefik = root / "proxy" / "traefik"
    traefik.mkdir(parents=True, exist_ok=True)
    (traefik / "traefik.yml").write_text("entryPoints:\n  web:\n    address: ':80'\n")
    (traefik / "dynamic.conf.yaml").write_text("http: {}\n")
    acme = traefik / "acme.json"
    acme.write_text('{"letsencrypt": {"Certificates": []}}\n')
    acme.chmod(0o600)
    (root / "proxy" / "docker-compose.yml").write_text(
        "services:\n  traefik:\n    image: traefik\n"
    )
    (root / "logs").mkdir(exist_ok=True)
    return root


@dataclass
class Store:
    """The backup storage as an operator sees it: objects named below the itsup prefix."""

    kind: str  # "local" | "s3"
    root: Path  # the host root
    server: S3Server | None
    prefix: str

    @property
    def base(self) -> Path:
        return self.root / "backups" / "itsup"

    def client(self) -> Any:
        assert self.server is not None
        return self.server.client()

    def names(self) -> list[str]:
        """Every object (relative to the prefix), in-progress local uploads included."""
        if self.kind == "local":
            if not self.base.is_dir():
                return []
            return sorted(p.name for p in self.base.iterdir())
        assert self.server is not None
        resp = self.client().list_objects_v2(Bucket=self.server.bucket, Prefix=self.prefix)
        return sorted(o["Key"][len(self.prefix) :] for o in resp.get("Contents", []))

    def read(self, name: str) -> bytes:
        if self.kind == "local":
            return (self.base / name).read_bytes()
        assert self.server is not None
        resp = self.client().get_object(Bucket=self.server.bucket, Key=self.prefix + name)
        return bytes(resp["Body"].read())

    def write(self, name: str, data: bytes) -> None:
        """Replace an object's content under the same name (damage it on purpose)."""
        if self.kind == "local":
            path = self.base / name
            path.unlink()  # break the hard link `latest` shares with it
            path.write_bytes(data)
            return
        assert self.server is not None
        self.client().put_object(Bucket=self.server.bucket, Key=self.prefix + name, Body=data)

    def delete(self, name: str) -> None:
        if self.kind == "local":
            (self.base / name).unlink()
            return
        assert self.server is not None
        self.client().delete_object(Bucket=self.server.bucket, Key=self.prefix + name)

    def fetch(self, name: str, dest: Path) -> Path:
        """Download an object to a file, as `aws s3 cp` would."""
        if self.kind == "local":
            shutil.copyfile(self.base / name, dest)
        else:
            assert self.server is not None
            self.client().download_file(self.server.bucket, self.prefix + name, str(dest))
        return dest

    def multipart_uploads(self) -> list[dict[str, Any]]:
        assert self.server is not None
        resp = self.client().list_multipart_uploads(Bucket=self.server.bucket, Prefix=self.prefix)
        return list(resp.get("Uploads", []) or [])


HostFactory = Callable[..., Store]  # the `new_host` fixture: new_host(name, **setup_host options)


def setup_host(
    root: Path,
    kind: str,
    server: S3Server | None,
    prefix: str,
    *,
    include_volumes: bool = True,
    extra: str = "",
    volumes: bool = True,
) -> Store:
    """A sample host tree whose itsup.yml points at the local target or the S3 server."""
    make_host(root, volumes=volumes)
    options = f"  include_volumes: {str(include_volumes).lower()}\n{extra}"
    if kind == "s3":
        assert server is not None
        s3_secrets(root, server)
        write_config(root, s3_config(server, prefix, options))
        return Store(kind, root, server, prefix)
    write_config(root, "backup:\n" + options)
    return Store(kind, root, None, "itsup/")


def generations(root: Path) -> list[dict[str, Any]]:
    rows = json.loads(itsup(root, "backup", "list", "--json").out)
    assert isinstance(rows, list)
    return rows


def payload(size: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible bytes (a SHA-256 counter stream)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha256_file(path: Path | bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def tree_state(base: Path, tops: tuple[str, ...] = TOPS) -> dict[str, tuple[Any, ...]]:
    """What a restore must bring back, per relative path (bytes-safe names)."""
    state: dict[str, tuple[Any, ...]] = {}

    def visit(rel: bytes, path: bytes) -> None:
        st = os.lstat(path)
        meta = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
        key = os.fsdecode(rel)
        if stat.S_ISDIR(st.st_mode):
            state[key] = ("dir", *meta)
            for name in sorted(os.listdir(path)):
                visit(rel + b"/" + name, path + b"/" + name)
        elif stat.S_ISLNK(st.st_mode):
            state[key] = ("symlink", *meta, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            state[key] = ("file", *meta, st.st_size, sha256_file(path))
        else:
            state[key] = ("special", stat.S_IFMT(st.st_mode))

    for top in tops:
        top_path = os.fsencode(base / top)
        if os.path.lexists(top_path):
            visit(top.encode(), top_path)
    return state


def leftovers(folder: Path) -> list[str]:
    """Staging folders a restore left behind (there must be none)."""
    return [p.name for p in folder.iterdir() if p.name.startswith(STAGING_MARK)]


def archive_members(store: Store, name: str) -> list[str]:
    data = store.read(name)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        return tf.getnames()


def read_index(store: Store, generation: str) -> dict[str, dict[str, Any]]:
    raw = gzip.decompress(store.read(f"{generation}.index.jsonl.gz"))
    entries = (json.loads(line) for line in raw.splitlines() if line.strip())
    return {e["path"]: e for e in entries}


def read_manifest(store: Store, generation: str) -> dict[str, Any]:
    manifest = json.loads(store.read(f"{generation}.manifest.json"))
    assert isinstance(manifest, dict)
    return manifest


def make_manifest(**overrides: Any) -> Manifest:
    """A complete, plausible manifest built in the test; any field can be given instead.

    The archive and index keys follow `generation` unless they are given too.
    """
    name = overrides.get("generation", "backup-2026-01-01-000000")
    fields: dict[str, Any] = {
        "generation": name,
        "host": "h",
        "root": "/srv/host",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:01+00:00",
        "duration_seconds": 1.0,
        "archive": ObjectRef(f"itsup/{name}.tar.gz", 10, "0" * 64),
        "index": ObjectRef(f"itsup/{name}.index.jsonl.gz", 10, "0" * 64),
        "compression": "gzip",
        "encryption": None,
        "roots": ["upstream", "proxy"],
        "include_volumes": True,
        "files": 3,
        "dirs": 1,
        "symlinks": 0,
        "source_bytes": 100,
        "partial": False,
    }
    return Manifest(**{**fields, **overrides})


def write_generation(
    folder: Path, name: str, *, manifest: bool | bytes = True, age: float | None = None
) -> None:
    """A tiny generation written straight into a local target's folder: an archive
    and an index of one byte each and, unless `manifest` is False, a real manifest
    (or the bytes given). `age` backdates its objects by that many seconds.

    Enough for retention, which decides from the listing alone."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / f"{name}.tar.gz", folder / f"{name}.index.jsonl.gz"]
    for path in written:
        path.write_bytes(b"x")
    if manifest is not False:
        data = (
            manifest if isinstance(manifest, bytes) else make_manifest(generation=name).to_bytes()
        )
        written.append(folder / f"{name}.manifest.json")
        written[-1].write_bytes(data)
    if age is not None:
        when = time.time() - age
        for path in written:
            os.utime(path, (when, when))


@contextmanager
def lock_held(root: Path, record: str | None = None) -> Iterator[None]:
    """Hold a host root's lock from the test, as a running backup would.

    With `record`, the lock file says it, as a holder's own record does.
    """
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if record is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        yield
    finally:
        os.close(fd)


def dead_pid() -> str:
    """The PID of a process that has just exited (for leftovers of a killed run)."""
    return subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def flip_middle(data: bytes) -> bytes:
    """Bit rot: 16 bytes inverted in the middle of an object."""
    damaged = bytearray(data)
    mid = len(data) // 2
    damaged[mid : mid + 16] = bytes(b ^ 0xFF for b in damaged[mid : mid + 16])
    return bytes(damaged)


def retar_with_new_content(store: Store, name: str, path: str) -> None:
    """Rewrite a generation's archive with plain tarfile, one file's content changed
    (same size), and a manifest that vouches for the new archive: the archive
    SHA-256 and member list check out; only the per-file hashes betray it."""
    old = store.read(f"{name}.tar.gz")
    buffer = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(old), mode="r:gz") as src,
        tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as dst,
    ):
        for member in src:
            data = src.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            if member.name == path:
                assert data is not None
                data = data.upper()
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    new = buffer.getvalue()
    store.write(f"{name}.tar.gz", new)
    manifest = read_manifest(store, name)
    manifest["archive"].update(size=len(new), sha256=hashlib.sha256(new).hexdigest())
    store.write(f"{name}.manifest.json", json.dumps(manifest).encode())


def add_awkward_entries(root: Path) -> None:
    """Everything a host tree holds that a naive backup gets wrong."""
    app = root / "upstream" / "app"
    traefik = root / "proxy" / "traefik"
    # modes and owners
    script = app / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (app / "readonly.txt").write_text("do not touch\n")
    (app / "readonly.txt").chmod(0o444)
    (app / "setgid-tool").write_bytes(b"\x7fELF")
    (app / "setgid-tool").chmod(0o2750)
    private = app / "private"
    private.mkdir(mode=0o700)
    (private / "token").write_text("t\n")
    os.chown(private / "token", 1000, 1000)
    os.chown(private, 33, 33)
    (app / "tmp").mkdir()
    (app / "tmp").chmod(0o1777)
    # empty folders
    (app / "empty").mkdir()
    (traefik / "certs").mkdir(mode=0o750)
    # symlinks: to a file, to a folder, dangling; all inside the tree
    (traefik / "current.yml").symlink_to("traefik.yml")
    (root / "upstream" / "blog" / "shared").symlink_to("../app")
    (app / "dangling").symlink_to("no-such-file")
    # unicode, spaces and a newline in names; a name that is not UTF-8 at all
    (app / "données").mkdir()
    (app / "données" / "naïve-文件-🚀.txt").write_text("unicode\n")
    (app / "with space.txt").write_text("space\n")
    (app / "new\nline.txt").write_text("newline\n")
    with open(os.path.join(os.fsencode(app), b"latin1-\xe9t\xe9.txt"), "wb") as fh:
        fh.write(b"not utf-8\n")
    # a name over 100 bytes and a path over 255 bytes, deep
    (app / ("L" * 150 + ".bin")).write_bytes(os.urandom(3000))
    deep = app / "deep"
    for level in range(6):
        deep = deep / (f"{level}-" + "d" * 58)
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("deep\n")
    assert len(str((deep / "leaf.txt").relative_to(root))) > 255
    # sizes: empty, exactly one block, larger than the small-file path with a zero run
    (app / "zero-length").write_bytes(b"")
    (app / "one-block").write_bytes(b"x" * 512)
    (app / "zero-run.bin").write_bytes(os.urandom(MiB) + bytes(MiB) + os.urandom(MiB + 7))


def pin_times(root: Path, tops: tuple[str, ...] = TOPS) -> None:
    """Give every path a distinct mtime with a nanosecond part (and a few edge values)."""
    special = {
        "upstream/app/zero-length": 0,
        "upstream/app/one-block": 4_102_444_800_000_000_001,  # 2100-01-01, 1 ns past
        "upstream/app/with space.txt": -1_500_000_000,  # before 1970, half a second
        os.fsdecode(b"upstream/app/latin1-\xe9t\xe9.txt"): -2_250_000_001,
    }
    paths = []
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(os.fsencode(root / top)):
            paths.extend(os.path.join(dirpath, n) for n in dirnames + filenames)
        paths.append(os.fsencode(root / top))
    for i, path in enumerate(sorted(paths)):
        rel = os.fsdecode(os.path.relpath(path, os.fsencode(root)))
        ns = special.get(rel, 1_600_000_000_000_000_000 + i * 86_400_123_456_789)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
