"""End to end: `itsup backup` then `itsup restore`, as an operator runs them.

Every test drives the real command in a subprocess against the embedded local
target (`<root>/backups/itsup/`) and, where the target matters, the real S3
server the suite starts on loopback. A restored tree is compared with the
original field by field: type, content (SHA-256), mode, owner, mtime to the
nanosecond and symlink target.

The helpers at the top (`Store`, `setup_host`, `tree_state`, ...) are shared
by test_plain_tools.py and test_failures.py.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, make_host, run_itsup, s3_config, s3_secrets, write_config
from s3server import S3Server

from itsup.errors import ExitCode

MiB = 1 << 20
GiB = 1 << 30
TOPS = ("upstream", "proxy")
ACME = "proxy/traefik/acme.json"
NAME_RE = re.compile(r"^backup-\d{4}-\d{2}-\d{2}-\d{6}$")
STAGING_MARK = ".itsup-restore-"


# -- helpers shared with the other end-to-end files ------------------------------------


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


def itsup(root: Path, *args: str | os.PathLike[str], expect: int = 0, **kw: Any) -> Result:
    """Run `itsup --root ROOT ARGS`, check its exit code, and that no traceback leaked."""
    kw.setdefault("timeout", 120)
    res = run_itsup(*args, root=root, **kw)
    assert res.code == expect, f"itsup {' '.join(map(str, args))}: exit {res.code}\n{res.err}"
    assert "Traceback" not in res.err + res.out
    return res


def generations(root: Path) -> list[dict[str, Any]]:
    rows = json.loads(itsup(root, "backup", "list", "--json").out)
    assert isinstance(rows, list)
    return rows


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


# -- fixtures (each end-to-end file declares its own, from these two helpers) ------------


HostFactory = Callable[..., Store]


def unique_prefix(request: pytest.FixtureRequest) -> str:
    """An S3 prefix of this test's own (conftest's cuts names, parameters included, at 60)."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    return f"t/{request.node.originalname[:40]}-{digest}/"


def host_factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> HostFactory:
    """Build host roots for this test on `kind`; keyword arguments go to setup_host."""

    def make(name: str = "host", **kw: Any) -> Store:
        server = request.getfixturevalue("s3_server") if kind == "s3" else None
        return setup_host(tmp_path / name, kind, server, unique_prefix(request), **kw)

    return make


@pytest.fixture(params=["local", "s3"])
def new_host(request: pytest.FixtureRequest, tmp_path: Path) -> HostFactory:
    return host_factory(str(request.param), request, tmp_path)


# -- round trips -----------------------------------------------------------------------


def test_round_trip_into_empty_folder(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    add_awkward_entries(root)
    pin_times(root)
    before = tree_state(root)

    itsup(root, "backup")
    assert tree_state(root) == before, "a backup must not change the host tree"
    [gen] = generations(root)
    assert NAME_RE.match(gen["name"]) and gen["status"] == "complete"
    members = archive_members(store, f"{gen['name']}.tar.gz")
    assert "upstream/app/volumes/data/db.bin" in members  # include_volumes: true

    out = tmp_path / "out"
    itsup(root, "restore", "--to", out)
    assert sorted(os.listdir(out)) == ["proxy", "upstream"]
    assert tree_state(out) == before
    assert stat.S_IMODE(os.stat(out / ACME).st_mode) == 0o600


def test_restore_all_repairs_a_damaged_live_root(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    add_awkward_entries(root)
    pin_times(root)
    before = tree_state(root)
    itsup(root, "backup")

    # The disaster: deletions, overwrites, changed modes, a symlink turned into a file,
    # a file turned into a folder, an empty folder gone.
    (root / ACME).unlink()
    (root / "proxy/traefik/traefik.yml").write_text("broken: [\n")
    (root / "upstream/app/run.sh").chmod(0o600)
    (root / "upstream/app/private").chmod(0o755)
    (root / "proxy/traefik/current.yml").unlink()
    (root / "proxy/traefik/current.yml").write_text("not a link\n")
    (root / "upstream/app/one-block").unlink()
    (root / "upstream/app/one-block").mkdir()
    (root / "upstream/app/empty").rmdir()
    shutil.rmtree(root / "upstream/app/deep")
    os.utime(root / "upstream/blog/docker-compose.yml", ns=(5, 5))
    # Something made after the backup that the backup cannot know about stays.
    (root / "proxy/traefik/added-later.yml").write_text("new\n")

    itsup(root, "restore", "all", "--yes")
    after = tree_state(root)
    added = after.pop("proxy/traefik/added-later.yml")
    assert added[0] == "file"
    assert after == before
    assert leftovers(root) == []


@pytest.mark.parametrize("target", ["all", "app"])
def test_restore_keeps_live_volumes(new_host: HostFactory, target: str) -> None:
    store = new_host(include_volumes=False)
    root = store.root
    itsup(root, "backup")
    [gen] = generations(root)
    members = archive_members(store, f"{gen['name']}.tar.gz")
    assert "upstream/app/docker-compose.yml" in members
    assert not [m for m in members if "/volumes" in m], "volumes were backed up"
    assert read_manifest(store, gen["name"])["include_volumes"] is False

    # The databases kept running after the backup; a restore must not touch them.
    volume = root / "upstream/app/volumes/data/db.bin"
    volume.write_bytes(b"newer data written after the backup")
    (root / "upstream/app/volumes/data/new-table.bin").write_bytes(b"t")
    volumes_before = tree_state(root, ("upstream/app/volumes", "upstream/blog/volumes"))
    (root / "upstream/app/docker-compose.yml").write_text("damaged\n")

    itsup(root, "restore", target, "--yes")
    assert (root / "upstream/app/docker-compose.yml").read_text().startswith("services:")
    assert tree_state(root, ("upstream/app/volumes", "upstream/blog/volumes")) == volumes_before


@pytest.mark.slow
def test_sparse_file_over_8_gib_round_trips(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    big = root / "upstream/app/volumes/data/disk.img"
    size = 8 * GiB + 4321  # past the 8 GiB ustar size limit: needs a pax size record
    with open(big, "wb") as fh:
        fh.write(b"head" * 1024)
        fh.seek(3 * GiB + 12345)
        fh.write(bytes(range(256)) * 4096)
        fh.seek(size - 100)
        fh.write(b"tail" * 25)
    assert os.stat(big).st_size == size
    assert os.stat(big).st_blocks * 512 < 16 * MiB, "the test file should be sparse"

    itsup(root, "backup", timeout=900)
    [gen] = generations(root)
    assert gen["archive_bytes"] < 64 * MiB
    recorded = read_index(store, gen["name"])["upstream/app/volumes/data/disk.img"]

    out = tmp_path / "out"
    itsup(root, "restore", "--to", out, timeout=900)
    copy = out / "upstream/app/volumes/data/disk.img"
    st = os.stat(copy)
    assert st.st_size == size
    assert st.st_blocks * 512 < 64 * MiB, "the restored copy should stay sparse"
    assert st.st_mtime_ns == os.stat(big).st_mtime_ns

    # One pass: the copy equals the original chunk by chunk, and its SHA-256 is the one
    # the backup recorded while reading the original.
    restored = hashlib.sha256()
    offset = 0
    with open(big, "rb", buffering=0) as a, open(copy, "rb", buffering=0) as b:
        while chunk := a.read(8 * MiB):
            same = b.read(8 * MiB) == chunk
            assert same, f"restored copy differs from the original in the 8 MiB at {offset}"
            restored.update(chunk)
            offset += len(chunk)
        assert b.read(1) == b""
    assert offset == size
    assert restored.hexdigest() == recorded["sha256"]


# -- partial restores ------------------------------------------------------------------


def test_restore_single_file_into_live_root(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    acme = root / ACME
    acme.write_text('{"letsencrypt": {"Certificates": [{"domain": "example.com"}]}}\n')
    acme.chmod(0o600)
    good = tree_state(root, (ACME,))
    itsup(root, "backup")
    # Later live changes elsewhere must survive a single-file restore.
    (root / "proxy/traefik/traefik.yml").write_text("changed after the backup\n")

    acme.unlink()
    itsup(root, "restore", "--path", ACME, "--yes")
    assert tree_state(root, (ACME,)) == good
    assert stat.S_IMODE(acme.stat().st_mode) == 0o600

    acme.write_text("{garbage")
    acme.chmod(0o644)
    itsup(root, "restore", "--path", ACME, "--yes")
    assert tree_state(root, (ACME,)) == good
    assert (root / "proxy/traefik/traefik.yml").read_text() == "changed after the backup\n"
    assert leftovers(root) == []


def test_restore_path_to_another_folder(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")

    out = tmp_path / "scratch"
    itsup(root, "restore", "--path", ACME, "--to", out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    assert files == [ACME]
    assert (out / ACME).read_bytes() == (root / ACME).read_bytes()
    assert tree_state(out, (ACME,)) == tree_state(root, (ACME,))

    # A subtree by path, given as an absolute path inside the host root.
    out2 = tmp_path / "scratch2"
    itsup(root, "restore", "--path", root / "proxy/traefik", "--to", out2)
    assert tree_state(out2, ("proxy/traefik",)) == tree_state(root, ("proxy/traefik",))
    assert not (out2 / "proxy/docker-compose.yml").exists()
    assert not (out2 / "upstream").exists()


def test_restore_project_and_proxy(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    before = tree_state(root)
    itsup(root, "backup")
    for rel in (
        "upstream/app/docker-compose.yml",
        "upstream/blog/docker-compose.yml",
        "proxy/docker-compose.yml",
    ):
        (root / rel).write_text("damaged\n")
    (root / ACME).unlink()

    itsup(root, "restore", "app", "--yes")
    assert tree_state(root, ("upstream/app",)) == {
        k: v for k, v in before.items() if k.startswith("upstream/app")
    }
    assert (root / "upstream/blog/docker-compose.yml").read_text() == "damaged\n"
    assert (root / "proxy/docker-compose.yml").read_text() == "damaged\n"
    assert not (root / ACME).exists()

    itsup(root, "restore", "proxy", "--yes")
    assert tree_state(root, ("proxy",)) == {
        k: v for k, v in before.items() if k.startswith("proxy")
    }
    assert (root / "upstream/blog/docker-compose.yml").read_text() == "damaged\n"


def test_dry_run_lists_changes_and_writes_nothing(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    (root / ACME).unlink()
    (root / "proxy/traefik/traefik.yml").write_text("changed\n")
    before = tree_state(root)

    res = itsup(root, "restore", "all", "--dry-run")
    lines = res.out.splitlines()
    assert f"+ {ACME}" in lines
    assert "~ proxy/traefik/traefik.yml" in lines
    assert "~ proxy/docker-compose.yml" not in lines  # unchanged paths are not listed
    assert "1 new, 1 to overwrite" in res.out
    assert tree_state(root) == before
    assert leftovers(root) == []

    fresh = tmp_path / "not-yet"
    res = itsup(root, "restore", "--dry-run", "--to", fresh)
    assert f"+ {ACME}" in res.out.splitlines()
    assert not fresh.exists()


def test_overwrite_without_yes_refused_off_a_terminal(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    (root / ACME).write_text("{damaged")
    (root / "upstream/app/docker-compose.yml").unlink()
    before = tree_state(root)

    for args in (("all",), ("proxy",), ("--path", ACME)):
        res = itsup(root, "restore", *args, expect=ExitCode.USAGE, stdin="y\n")
        assert "--yes" in res.err
        assert tree_state(root) == before
    assert leftovers(root) == []


def _restore_on_a_terminal(root: Path, answer: bytes) -> tuple[int, str]:
    """Run `itsup restore all` with a terminal as stdin and stderr; answer its prompt."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "itsup", "--root", str(root), "restore", "all"],
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env,
        cwd=root,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Overwrite?" not in seen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    seen += os.read(controller, 4096)
                except OSError:  # the other side closed: the command ended
                    break
        os.write(controller, answer + b"\n")
        code = proc.wait(timeout=60)
        with contextlib.suppress(OSError):
            while select.select([controller], [], [], 0.2)[0]:
                chunk = os.read(controller, 4096)
                if not chunk:
                    break
                seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, seen.decode(errors="replace")


def test_restore_asks_on_a_terminal(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    good = tree_state(root)
    itsup(root, "backup")
    (root / ACME).write_text("{damaged")
    damaged = tree_state(root)

    code, screen = _restore_on_a_terminal(root, b"n")
    assert "Overwrite?" in screen and "1 to overwrite" in screen
    assert code != 0
    assert tree_state(root) == damaged

    code, screen = _restore_on_a_terminal(root, b"y")
    assert code == 0, screen
    assert tree_state(root) == good


def test_restore_from_an_older_generation(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    (root / ACME).write_text('{"v": 1}\n')
    itsup(root, "backup")
    (root / ACME).write_text('{"v": 2}\n')
    itsup(root, "backup")
    newest, older = (g["name"] for g in generations(root))

    itsup(root, "restore", "--path", ACME, "--from", older, "--to", tmp_path / "old")
    assert (tmp_path / "old" / ACME).read_text() == '{"v": 1}\n'
    itsup(root, "restore", "--path", ACME, "--to", tmp_path / "default")
    assert (tmp_path / "default" / ACME).read_text() == '{"v": 2}\n'
    itsup(root, "restore", "--path", ACME, "--from", newest, "--to", tmp_path / "named")
    assert (tmp_path / "named" / ACME).read_text() == '{"v": 2}\n'

    res = itsup(root, "restore", "--from", "backup-1999-01-01-000000", expect=ExitCode.FAILURE)
    assert "backup-1999-01-01-000000" in res.err


def test_unknown_project_is_a_usage_error(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    before = tree_state(root)
    res = itsup(root, "restore", "nosuchproject", "--yes", expect=ExitCode.USAGE)
    assert "nosuchproject" in res.err
    assert "app, blog" in res.err  # the hint names what the backup holds
    res = itsup(root, "restore", "--path", "proxy/nothing-here", "--yes", expect=ExitCode.USAGE)
    assert "proxy/nothing-here" in res.err
    assert tree_state(root) == before


# -- listing ---------------------------------------------------------------------------


def test_backup_list_newest_first(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    res = itsup(root, "backup", "list")
    assert "no backups" in res.out
    assert generations(root) == []

    itsup(root, "backup")
    (root / "proxy/traefik/extra.conf.yaml").write_text("x: 1\n")
    itsup(root, "backup")  # within the same second: still a new, distinct generation

    rows = generations(root)
    assert len(rows) == 2
    newest, older = rows
    assert newest["name"] != older["name"]
    assert newest["name"] > older["name"] and newest["time"] > older["time"]
    for row in rows:
        assert NAME_RE.match(row["name"])
        assert row["status"] == "complete"
        assert row["archive_bytes"] > 0 and row["encrypted"] is False
    assert newest["files"] == older["files"] + 1

    names = store.names()
    for row in rows:
        for suffix in (".tar.gz", ".index.jsonl.gz", ".manifest.json"):
            assert row["name"] + suffix in names
    assert store.read("latest.tar.gz") == store.read(f"{newest['name']}.tar.gz")

    table = itsup(root, "backup", "list").out
    assert table.index(newest["name"]) < table.index(older["name"])
    assert table.count("complete") == 2


def test_local_target_keeps_backups_private(tmp_path: Path) -> None:
    # acme.json is 0600 on the host; its copy inside a backup must not be world-readable.
    store = setup_host(tmp_path / "host", "local", None, "")
    itsup(store.root, "backup")
    itsup(store.root, "backup")
    assert stat.S_IMODE(store.base.stat().st_mode) & 0o077 == 0
    names = store.names()
    assert "latest.tar.gz" in names and len(names) == 7
    for name in names:
        mode = stat.S_IMODE((store.base / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others ({mode:o})"
