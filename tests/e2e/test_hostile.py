"""Hostile archives: restore refuses them and writes nothing, anywhere.

Each archive is hand-made with `tarfile` + gzip and published as a proper
generation on the local target (archive object, file index, manifest with
the right SHA-256, exactly as `itsup.actions.backup` writes them), so the
hostile content is the only thing wrong with it. `itsup restore` must exit
5 naming the member, leave the destination exactly as it was and write
nothing outside it.

Symlinks that merely point outside the destination are the one exception:
by default they are restored as links (never followed, never written
through); `--refuse-external-links` refuses them like the rest.

The member rules themselves, case by case, are checked in-process in
tests/unit/test_member_checks.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import Result, make_host, make_manifest, run_itsup, write_config

from itsup import __version__
from itsup.actions.restore import RestoreOptions, plan_restore, run_restore
from itsup.errors import IntegrityError
from itsup.host import open_host
from itsup.manifest import Entry, IndexWriter, Manifest, ObjectRef
from itsup.storage.local import LocalTarget

GENERATION = "backup-2025-01-15-030000"
PREFIX = "itsup/"
MTIME = 1_736_910_000


# -- building archives ----------------------------------------------------------------


@dataclass
class M:
    """One member to put in a hand-made archive."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    size: int | None = None  # header size, when it should differ from len(data)
    index: bool = True  # listed in the file index
    devmajor: int = 0
    devminor: int = 0

    def info(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.kind
        info.mode = self.mode
        info.mtime = MTIME
        info.uid = info.gid = 0
        info.linkname = self.link
        info.size = len(self.data) if self.kind == tarfile.REGTYPE else 0
        info.devmajor, info.devminor = self.devmajor, self.devminor
        return info

    def entry(self) -> Entry:
        kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}
        kind = kinds.get(self.kind, "file")
        size = self.size if self.size is not None else len(self.data)
        return Entry(
            path=self.name.rstrip("/"),
            type=kind,
            mode=self.mode,
            mtime_ns=MTIME * 1_000_000_000,
            uid=0,
            gid=0,
            size=size if kind == "file" else 0,
            sha256=hashlib.sha256(self.data).hexdigest() if kind == "file" else None,
            link=self.link or None,
        )


def d(name: str, mode: int = 0o755) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes = b"content\n", **kw: object) -> M:
    return M(name, tarfile.REGTYPE, data=data, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str) -> M:
    return M(name, tarfile.SYMTYPE, link=target, mode=0o777)


BASE = [d("proxy"), d("proxy/traefik"), f("proxy/traefik/acme.json", b"{}\n", mode=0o600)]


def _patch_size(raw: bytearray, name: str, size: int) -> None:
    """Rewrite the size field of `name`'s header (and its checksum) in a plain tar."""
    pos = 0
    while pos + 512 <= len(raw):
        header = raw[pos : pos + 512]
        if header[:100].rstrip(b"\0").decode() == name:
            raw[pos + 124 : pos + 136] = b"%011o\0" % size
            raw[pos + 148 : pos + 156] = b" " * 8
            raw[pos + 148 : pos + 156] = b"%06o\0 " % sum(raw[pos : pos + 512])
            return
        pos += 512
    raise AssertionError(f"no header for {name}")


def build_tar(members: list[M], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            tf.addfile(m.info(), io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    raw = bytearray(buf.getvalue())
    for m in members:
        if m.size is not None:
            _patch_size(raw, m.name, m.size)
    return bytes(raw)


@dataclass
class Published:
    archive_key: str
    archive: bytes
    manifest: Manifest
    entries: list[Entry] = field(default_factory=list)


def publish(
    target_dir: Path,
    tar_bytes: bytes,
    entries: list[Entry],
    *,
    archive_sha256: str | None = None,
    archive_size: int | None = None,
    generation: str = GENERATION,
) -> Published:
    """Write a complete generation as `itsup backup` does: archive, index, manifest, latest."""
    target = LocalTarget(target_dir)
    archive = gzip.compress(tar_bytes, mtime=0)
    archive_key = f"{PREFIX}{generation}.tar.gz"
    target.put(archive_key, archive)
    writer = IndexWriter()
    for entry in entries:
        writer.add(entry)
    index = writer.finish()
    index_key = f"{PREFIX}{generation}.index.jsonl.gz"
    target.put(index_key, index)
    files = [e for e in entries if e.type == "file"]
    manifest = make_manifest(
        generation=generation,
        host="hostile-test",
        root=str(target_dir),
        started="2025-01-15T03:00:00+00:00",
        finished="2025-01-15T03:00:01+00:00",
        archive=ObjectRef(
            archive_key,
            archive_size if archive_size is not None else len(archive),
            archive_sha256 or hashlib.sha256(archive).hexdigest(),
        ),
        index=ObjectRef(index_key, len(index), hashlib.sha256(index).hexdigest()),
        include_volumes=False,
        files=len(files),
        dirs=sum(1 for e in entries if e.type == "dir"),
        symlinks=sum(1 for e in entries if e.type == "symlink"),
        source_bytes=sum(e.size for e in files),
        tool_version=__version__,
    )
    target.put(f"{PREFIX}{generation}.manifest.json", manifest.to_bytes())
    target.copy(archive_key, f"{PREFIX}latest.tar.gz")
    return Published(archive_key, archive, manifest, entries)


def publish_members(target_dir: Path, members: list[M], **kw: object) -> Published:
    entries = [m.entry() for m in members if m.index]
    return publish(target_dir, build_tar(members), entries, **kw)  # type: ignore[arg-type]


# -- the world around a restore -------------------------------------------------------------


@dataclass
class World:
    tmp: Path
    root: Path  # the host root (its config points at the local target)
    target: Path  # the local target's folder
    dest: Path  # where restores go (--to), pre-filled
    outside: Path  # a folder hostile members aim at

    def restore(self, *args: str, to: Path | None = None) -> Result:
        where = ["--to", str(to or self.dest)]
        scope = [] if "--path" in args else ["all"]
        return run_itsup("restore", *scope, "--yes", *where, *args, root=self.root)


def snapshot(top: Path, skip: Path | None = None) -> dict[str, tuple[object, ...]]:
    """Everything below `top` (not following links): type, mode, size, mtime, content/target.

    `skip` (the backup target), the host's logs/backup.log and its lock file (which a
    restore into the host root holds, as a backup does) are left out.
    """
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirs, files in os.walk(top):
        for name in dirs + files:
            full = Path(dirpath) / name
            if skip is not None and (full == skip or skip in full.parents):
                continue
            if full.name == "backup.log" and full.parent.name == "logs":
                continue
            if full.name == ".itsup-backup.lock":
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                extra: object = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(full.read_bytes()).hexdigest()
            else:
                extra = None
            found[str(full.relative_to(top))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0,
                extra,
            )
    return found


def make_world(tmp_path: Path) -> World:
    """A host whose local target gets hand-made archives, a destination holding data,
    and a folder outside both that nothing may touch."""
    root = make_host(tmp_path / "host", volumes=False)
    target = tmp_path / "target"
    write_config(root, f"backup:\n  local:\n    path: {target}\n")
    dest = tmp_path / "dest" / "deeper"
    (dest / "proxy" / "traefik").mkdir(parents=True)
    (dest / "proxy" / "traefik" / "acme.json").write_text("the operator's certificates\n")
    (dest / "keep.txt").write_text("untouched\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("outside\n")
    return World(tmp_path, root, target, dest, outside)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def assert_refused(world: World, result: Result, member: str, before: dict[str, object]) -> None:
    assert result.code == 5, (result.code, result.out, result.err)
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert member in result.err, result.err
    assert snapshot(world.tmp, skip=world.target) == before, "restore changed files"


# -- the hostile archives --------------------------------------------------------------------


def _cases(outside: Path) -> dict[str, tuple[list[M], str]]:
    """name -> (members, text the refusal must name)."""
    far = "../" * 6  # enough to climb out of staging, dest and its parents
    rel_outside = f"{far}{str(outside).lstrip('/')}"  # relative path that lands in `outside`
    long_dir = "proxy/" + "d" * 120
    return {
        "absolute_path": (
            [*BASE, f(f"{outside}/abs-pwned")],
            f"{outside}/abs-pwned",
        ),
        "absolute_dir": ([*BASE, d(f"{outside}/abs-dir")], f"{outside}/abs-dir"),
        "dotdot_leading": (
            [*BASE, f(f"{rel_outside}/dotdot-pwned")],
            f"{rel_outside}/dotdot-pwned",
        ),
        "dotdot_inside": (
            [*BASE, f(f"proxy/traefik/{far}{str(outside).lstrip('/')}/inner-pwned")],
            "inner-pwned",
        ),
        "dotdot_long_pax_name": (
            [*BASE, d(long_dir), f(f"{long_dir}/{rel_outside}/pax-pwned")],
            "pax-pwned",
        ),
        "symlink_outside_then_file": (
            [*BASE, sym("proxy/escape", rel_outside), f("proxy/escape/pwned")],
            "proxy/escape",
        ),
        "symlink_inside_then_file_through_it": (
            [*BASE, sym("proxy/alias", "traefik"), f("proxy/alias/acme.json", b"evil")],
            "proxy/alias/acme.json",
        ),
        "symlink_to_absolute_path": (
            [*BASE, sym("proxy/etc", "/etc")],
            "proxy/etc",
        ),
        "symlink_to_absolute_then_file": (
            [*BASE, sym("proxy/out", str(outside)), f("proxy/out/canary", b"overwritten")],
            "proxy/out",
        ),
        "symlink_then_dir_through_it": (
            [*BASE, sym("proxy/up", ".."), d("proxy/up/sub", mode=0o777)],
            "proxy/up/sub",
        ),
        "symlink_then_same_name_dir": (
            [*BASE, sym("proxy/x", "traefik"), d("proxy/x", mode=0o777)],
            "proxy/x",
        ),
        "symlink_chain_escapes": (
            # Each link alone stays inside by its text; together they climb out:
            # proxy/x/a -> .. is proxy/, so proxy/b -> x/a/../../.. is above the top.
            [*BASE, d("proxy/x"), sym("proxy/x/a", ".."), sym("proxy/b", "x/a/../../..")],
            "proxy/b",
        ),
        "symlink_chain_escapes_out_of_order": (
            # The same with the links in the other order: restored into `dest`,
            # proxy/b would be dest/../../outside, the `outside` folder itself.
            [
                *BASE,
                d("proxy/x"),
                d("proxy/x/y"),
                sym("proxy/b", "x/y/a/../../../outside"),
                sym("proxy/x/y/a", "../.."),
            ],
            "proxy/b",
        ),
        "symlink_chain_then_dir_chmod": (
            # A folder member named like the link would be chmod-ed through it.
            [
                *BASE,
                d("proxy/x"),
                sym("proxy/x/a", ".."),
                sym("proxy/b", "x/a/../../.."),
                d("proxy/b", mode=0o777),
            ],
            "proxy/b",
        ),
        "hardlink_to_etc_passwd": (
            [*BASE, M("proxy/passwd", tarfile.LNKTYPE, link="/etc/passwd")],
            "proxy/passwd",
        ),
        "hardlink_outside": (
            [*BASE, M("proxy/hl", tarfile.LNKTYPE, link=f"{rel_outside}/canary")],
            "proxy/hl",
        ),
        "hardlink_inside": (
            [*BASE, M("proxy/hl2", tarfile.LNKTYPE, link="proxy/traefik/acme.json")],
            "proxy/hl2",
        ),
        "char_device": (
            [*BASE, M("proxy/null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
            "proxy/null",
        ),
        "block_device": (
            [*BASE, M("proxy/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
            "proxy/sda",
        ),
        "fifo": ([*BASE, M("proxy/fifo", tarfile.FIFOTYPE)], "proxy/fifo"),
        "absurd_size_large": (
            [*BASE, f("proxy/big", b"x" * 100, size=10 * 1024**3)],
            "proxy/big",
        ),
        "absurd_size_small": (
            [*BASE, f("proxy/small", b"x" * 100, size=700_000)],
            "proxy/small",
        ),
        "member_not_in_index": (
            [*BASE, f("proxy/smuggled", b"not listed", index=False)],
            "proxy/smuggled",
        ),
        "duplicate_member": (
            [*BASE, f("proxy/dup", b"one"), f("proxy/dup", b"two")],
            "proxy/dup",
        ),
    }


CASE_NAMES = sorted(_cases(Path("/x")))


# Cases whose only fault is where a symlink points: restored as links by default.
LINK_TARGET_ONLY = {
    "symlink_chain_escapes",
    "symlink_chain_escapes_out_of_order",
    "symlink_to_absolute_path",
}


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_archive_is_refused(world: World, case: str) -> None:
    """The index lists every member as the archive has it: the plan may refuse already.
    With --refuse-external-links every case is refused, links that point out included."""
    members, named = _cases(world.outside)[case]
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    result = world.restore("--refuse-external-links")
    assert_refused(world, result, named, before)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_archive_stream_is_refused(world: World, case: str) -> None:
    """The index leaves the hostile member out, so the refusal must come from checking
    the archive stream itself (in-process, through the restore action)."""
    members, named = _cases(world.outside)[case]
    for m in members:
        if m.name.endswith(named):
            m.index = False
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    plan = plan_restore(open_host(str(world.root)), RestoreOptions("all", to=str(world.dest)))
    with pytest.raises(IntegrityError) as err:
        run_restore(plan)
    assert err.value.exit_code == 5
    assert named in err.value.message
    assert snapshot(world.tmp, skip=world.target) == before


@pytest.mark.parametrize("case", ["dotdot_leading", "symlink_to_absolute_then_file"])
def test_hostile_archive_refused_restoring_into_the_host_root(world: World, case: str) -> None:
    members, named = _cases(world.outside)[case]
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    result = run_itsup("restore", "all", "--yes", root=world.root)
    assert_refused(world, result, named, before)


def test_hostile_archive_refused_for_a_single_path(world: World) -> None:
    """Restoring only acme.json still checks every member of the stream."""
    members, named = _cases(world.outside)["symlink_outside_then_file"]
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    result = world.restore("--path", "proxy/traefik/acme.json")
    assert_refused(world, result, named, before)


def test_dry_run_of_a_hostile_index_lists_nothing_outside(world: World) -> None:
    members, named = _cases(world.outside)["absolute_path"]
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    result = run_itsup("restore", "all", "--dry-run", "--to", str(world.dest), root=world.root)
    assert result.code == 5, (result.out, result.err)
    assert named in result.err
    assert snapshot(world.tmp, skip=world.target) == before


def test_gnu_format_absolute_long_name(world: World) -> None:
    name = f"{world.outside}/" + "g" * 120
    members = [*BASE, f(name)]
    publish(world.target, build_tar(members, tarfile.GNU_FORMAT), [m.entry() for m in members])
    before = snapshot(world.tmp, skip=world.target)
    assert_refused(world, world.restore(), "absolute path", before)


# -- index and archive disagree, manifest lies --------------------------------------------------


def test_index_lists_a_member_the_archive_lacks(world: World) -> None:
    entries = [m.entry() for m in BASE] + [f("proxy/ghost").entry()]
    publish(world.target, build_tar(BASE), entries)
    before = snapshot(world.tmp, skip=world.target)
    assert_refused(world, world.restore(), "proxy/ghost", before)


def test_index_disagrees_on_a_member(world: World) -> None:
    members = [*BASE, f("proxy/size", b"twelve bytes")]
    entries = [m.entry() for m in members]
    entries[-1].size = 5
    publish(world.target, build_tar(members), entries)
    before = snapshot(world.tmp, skip=world.target)
    assert_refused(world, world.restore(), "proxy/size", before)


def test_index_order_differs_from_archive(world: World) -> None:
    members = [*BASE, f("proxy/a"), f("proxy/b")]
    entries = [m.entry() for m in members]
    entries[-1], entries[-2] = entries[-2], entries[-1]
    publish(world.target, build_tar(members), entries)
    before = snapshot(world.tmp, skip=world.target)
    assert_refused(world, world.restore(), "proxy/a", before)


def test_manifest_lies_about_the_sha256(world: World) -> None:
    members = [*BASE, f("proxy/fine.txt", b"an entirely ordinary file\n")]
    pub = publish_members(world.target, members, archive_sha256="0" * 64)
    before = snapshot(world.tmp, skip=world.target)
    result = world.restore()
    assert_refused(world, result, pub.archive_key, before)
    assert "SHA-256" in result.err
    # With the true SHA-256 the very same archive restores: only the lie was wrong.
    publish_members(world.target, members)
    ok = world.restore()
    assert ok.code == 0, ok.err
    assert (world.dest / "proxy" / "fine.txt").read_bytes() == b"an entirely ordinary file\n"
    assert (world.dest / "proxy" / "traefik" / "acme.json").read_bytes() == b"{}\n"
    assert (world.dest / "keep.txt").read_text() == "untouched\n"


def test_manifest_lies_about_the_size(world: World) -> None:
    members = [*BASE, f("proxy/fine.txt")]
    archive = gzip.compress(build_tar(members), mtime=0)
    pub = publish_members(world.target, members, archive_size=len(archive) + 1)
    before = snapshot(world.tmp, skip=world.target)
    assert_refused(world, world.restore(), pub.archive_key, before)


def test_archive_damaged_after_publication(world: World) -> None:
    members = [*BASE, f("proxy/data.bin", os.urandom(50_000))]
    pub = publish_members(world.target, members)
    path = world.target / pub.archive_key
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    before = snapshot(world.tmp, skip=world.target)
    result = world.restore()
    assert result.code == 5, result.err
    assert "Traceback" not in result.err
    assert snapshot(world.tmp, skip=world.target) == before


def test_the_helper_publishes_restorable_generations(world: World) -> None:
    """Control: a harmless hand-made generation restores (so refusals above are real)."""
    members = [
        *BASE,
        d("upstream"),
        d("upstream/app"),
        f("upstream/app/docker-compose.yml", b"services: {}\n"),
        sym("proxy/current", "traefik/acme.json"),
        sym("upstream/app/up", "../../proxy"),
        d("proxy/empty"),
    ]
    publish_members(world.target, members)
    result = world.restore()
    assert result.code == 0, result.err
    assert os.readlink(world.dest / "proxy" / "current") == "traefik/acme.json"
    assert (
        world.dest / "upstream" / "app" / "docker-compose.yml"
    ).read_bytes() == b"services: {}\n"
    assert (world.dest / "proxy" / "empty").is_dir()
    assert stat.S_IMODE((world.dest / "proxy" / "traefik" / "acme.json").stat().st_mode) == 0o600
    listing = run_itsup("backup", "list", "--json", root=world.root)
    assert GENERATION in listing.out and "complete" in listing.out


@pytest.mark.parametrize("case", sorted(set(CASE_NAMES) - LINK_TARGET_ONLY))
@pytest.mark.parametrize("flag", [None, "--allow-external-links"])
def test_by_default_everything_but_external_links_is_refused(
    world: World, case: str, flag: str | None
) -> None:
    """Links that point out are admitted by default (and by the old opt-in flag, now a
    no-op); nothing is ever written through them, and every other rule stands."""
    members, named = _cases(world.outside)[case]
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    result = world.restore(*([flag] if flag else []))
    assert_refused(world, result, named, before)


@pytest.mark.parametrize("case", sorted(LINK_TARGET_ONLY))
@pytest.mark.parametrize("flag", [None, "--allow-external-links"])
def test_external_links_are_restored_as_links_and_named(
    world: World, case: str, flag: str | None
) -> None:
    members, named = _cases(world.outside)[case]
    publish_members(world.target, members)
    before = snapshot(world.outside)
    result = world.restore(*([flag] if flag else []))
    assert result.code == 0, result.err
    assert snapshot(world.outside) == before  # nothing was written through any link
    [link] = [m for m in members if m.name == named]
    assert os.readlink(world.dest / named) == link.link  # the link itself, as it was
    assert "itsup: note: restored 1 symlink pointing outside the tree" in result.err
    assert f"{named} -> {link.link}" in result.err
