"""The fast tar header encoder and reader against Python's tarfile and GNU tar.

Archives must restore with plain `tar -x` when itsup is gone, so every header
encode_header writes is read back by tarfile and by the real GNU tar, listed
and extracted, for the values that need more than a plain ustar header: long
and non-ASCII names, long symlink targets, sizes of 8 GiB and more, large
ids, pre-1970 mtimes and mtimes past the 11-digit field. A sub-second mtime
is stored as its whole seconds (the exact nanoseconds are the file index's),
so the header stays one block. TarReader, which restore uses, must read
what tarfile and GNU tar write exactly as tarfile does, and refuse damage with
a tarfile.TarError, never crash with anything else.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itsup.pipeline.tarformat import BLOCK, TarReader, encode_header
from itsup.pipeline.tarformat import _pax_record as pax_record

GNU_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
NS = 1_000_000_000
OCTAL11 = 8**11  # 8 GiB: the first size (and mtime) an 11-digit octal field cannot hold
OCTAL7 = 8**7  # 2097152: the first uid/gid a 7-digit octal field cannot hold


@dataclass
class M:
    """One archive member as encode_header is given it."""

    name: str
    kind: bytes = tarfile.REGTYPE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 1_700_000_000 * NS
    data: bytes = b""
    link: str = ""

    @property
    def raw_name(self) -> bytes:
        return os.fsencode(self.name)


def build(members: Sequence[M], *, end: bool = True) -> bytes:
    """An archive as TarWriter lays it out: header(s), data, padding; two zero blocks."""
    out = []
    for m in members:
        out.append(
            encode_header(m.name, m.kind, m.mode, m.uid, m.gid, len(m.data), m.mtime_ns, m.link)
        )
        out.append(m.data + bytes(-len(m.data) % BLOCK))
    if end:
        out.append(bytes(2 * BLOCK))
    return b"".join(out)


DEEP = "top/deep/" + "/".join(f"{i}-" + "d" * 60 for i in range(5)) + "/leaf.txt"
MEMBERS = [
    M("top", tarfile.DIRTYPE, 0o755, mtime_ns=1_600_000_000_500_000_000),
    M("top/short.txt", data=b"hello\n", uid=1000, gid=1000),
    M("top/" + "a" * 95, data=b"99 bytes"),  # name fields hold 100 bytes: 99, 100, 101
    M("top/" + "b" * 96, data=b"100 bytes"),
    M("top/" + "c" * 97, data=b"101 bytes"),
    M("top/données", tarfile.DIRTYPE, 0o750),
    M("top/données/naïve-文件-🚀.txt", data="unicode ✓\n".encode()),
    M("top/" + "é" * 120, data=b"a multi-byte character straddles byte 99"),
    M(DEEP, data=b"deep\n"),
    M("top/long-link", tarfile.SYMTYPE, 0o777, link="x/" * 60 + "target"),
    M("top/uni-link", tarfile.SYMTYPE, 0o777, link="données/naïve-文件-🚀.txt"),
    M("top/ids-octal-max", uid=OCTAL7 - 1, gid=OCTAL7 - 1),
    M("top/ids-large", uid=OCTAL7, gid=3_000_000_000),
    M("top/epoch", mtime_ns=0),
    M("top/nanos", mtime_ns=1_700_000_000_123_456_789, data=b"n"),
    M("top/one-ns", mtime_ns=1),
    M("top/before-1970-half", mtime_ns=-1_500_000_000),
    M("top/before-1970", mtime_ns=-365 * 86_400 * NS),
    M("top/mtime-octal-max", mtime_ns=(OCTAL11 - 1) * NS),
    M("top/mtime-past-octal", mtime_ns=OCTAL11 * NS + 7),
    M("top/setuid", mode=0o4755, data=b"#!/bin/sh\n"),
    M("top/setgid", mode=0o2750),
    M("top/sticky", tarfile.DIRTYPE, 0o1777),
    M("top/one-block", data=b"x" * BLOCK),
    M("top/block-plus-one", data=os.urandom(BLOCK + 1)),
    M("top/latin1-\udce9t\udce9.txt", data=b"not utf-8\n", mtime_ns=1_700_000_000_000_000_001),
    M("top/latin1-link", tarfile.SYMTYPE, 0o777, link="latin1-\udce9t\udce9.txt"),
]


def exact_mtime_ns(info: tarfile.TarInfo) -> int:
    """The nanosecond mtime a member carries (pax records hold what a float cannot)."""
    text = info.pax_headers.get("mtime")
    return int(Decimal(text) * NS) if text else int(info.mtime) * NS


def stored_mtime_ns(mtime_ns: int) -> int:
    """The mtime the archive carries for `mtime_ns`: whole seconds (rounded down) where
    ustar holds them, the exact value (a pax record) before 1970 or past 8**11 s."""
    seconds = mtime_ns // NS
    return seconds * NS if 0 <= seconds < OCTAL11 else mtime_ns


def tarfile_members(archive: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tf:
        return [
            (info, tf.extractfile(info).read() if info.isreg() else b"")  # type: ignore[union-attr]
            for info in tf
        ]


def reader_members(archive: bytes, chunk: int = 7919) -> list[tuple[tarfile.TarInfo, bytes]]:
    reader = TarReader(io.BytesIO(archive))
    out = []
    for info in reader:
        parts = []
        while part := reader.read(chunk):
            parts.append(part)
        out.append((info, b"".join(parts)))
    return out


def gnu_tar(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["tar", *map(str, args)], capture_output=True, text=True, env=GNU_ENV, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc


# -- encode_header, read back by tarfile ------------------------------------------------


def test_encoded_headers_read_back_by_tarfile() -> None:
    got = tarfile_members(build(MEMBERS))
    assert len(got) == len(MEMBERS)
    for m, (info, data) in zip(MEMBERS, got, strict=True):
        assert (info.name, info.type, info.mode, info.uid, info.gid) == (
            m.name,
            m.kind,
            m.mode,
            m.uid,
            m.gid,
        )
        assert (info.size, info.linkname, exact_mtime_ns(info), data) == (
            len(m.data),
            m.link,
            stored_mtime_ns(m.mtime_ns),
            m.data,
        )


def test_plain_values_need_no_pax_header() -> None:
    """Names under 100 ASCII bytes, mtimes from 1970 to 8**11 s, small ids: one ustar block."""
    assert len(encode_header("top/" + "a" * 95, tarfile.REGTYPE, 0o644, 1, 1, 5, 10 * NS)) == BLOCK
    assert len(encode_header("f", tarfile.REGTYPE, 0o644, 0, 0, 0, 1_700_000_000 * NS + 1)) == BLOCK
    assert len(encode_header("f", tarfile.REGTYPE, 0o644, 0, 0, 0, OCTAL11 * NS - 1)) == BLOCK
    assert len(encode_header("f", tarfile.REGTYPE, 0o644, OCTAL7 - 1, 0, 0, 0)) == BLOCK
    assert len(encode_header("f", tarfile.REGTYPE, 0o644, 0, 0, OCTAL11 - 1, 0)) == BLOCK
    assert len(encode_header("f", tarfile.REGTYPE, 0o644, 0, 0, OCTAL11, 0)) > BLOCK


@pytest.mark.parametrize(
    ("mtime_ns", "pax"),
    [
        (1_700_000_000_123_456_789, None),  # whole seconds in ustar; the index has the rest
        (-1, "-0.000000001"),
        (-1_500_000_000, "-1.5"),
        (-NS, "-1"),
        (OCTAL11 * NS, "8589934592"),
        (OCTAL11 * NS + 7, "8589934592.000000007"),
    ],
)
def test_mtime_pax_record_only_where_ustar_cannot_hold_it(mtime_ns: int, pax: str | None) -> None:
    header = encode_header("f", tarfile.REGTYPE, 0o644, 0, 0, 0, mtime_ns)
    ((info, _),) = tarfile_members(header + bytes(2 * BLOCK))
    assert info.pax_headers.get("mtime") == pax
    assert exact_mtime_ns(info) == stored_mtime_ns(mtime_ns)
    if pax is None:
        assert len(header) == BLOCK and info.mtime == mtime_ns // NS


@pytest.mark.parametrize("name_len", [1, 98, 99, 100, 101, 254, 255, 256, 1000])
@pytest.mark.parametrize("char", ["a", "é", "文", "🚀"])
def test_name_lengths_read_back_by_tarfile(name_len: int, char: str) -> None:
    # Around the 100-byte field and pax record length-digit boundaries, in 1- to 4-byte chars.
    width = len(char.encode())
    name = char * (name_len // width) + "a" * (name_len % width)
    assert len(name.encode()) == name_len
    ((info, data),) = tarfile_members(build([M(name, data=b"x")]))
    assert (info.name, data) == (name, b"x")
    ((info, data),) = reader_members(build([M(name, data=b"x")]))
    assert (info.name, data) == (name, b"x")


# -- encode_header, read by GNU tar -----------------------------------------------------


def gnu_quote(name: str) -> str:
    """How `tar -tv` prints a name in a UTF-8 locale (escape quoting)."""
    out = []
    for ch in name.replace("\\", "\\\\"):
        code = ord(ch)
        out.append("\\%03o" % (code - 0xDC00) if 0xDC80 <= code <= 0xDCFF else ch)
    return "".join(out)


def gnu_time(mtime_ns: int) -> str:
    seconds, nanos = divmod(mtime_ns, NS)
    when = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=seconds)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return when.strftime("%Y-%m-%d %H:%M:%S") + fraction


LISTING = re.compile(
    r"^(?P<perm>\S{10}) (?P<uid>\d+)/(?P<gid>\d+) +(?P<size>\d+) "
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?) +(?P<name>.*)$"
)
_IFMT = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
}


def test_gnu_tar_lists_encoded_headers(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(build(MEMBERS))
    lines = gnu_tar("-tv", "--full-time", "--numeric-owner", "-f", archive).stdout.splitlines()
    assert len(lines) == len(MEMBERS)
    for m, line in zip(MEMBERS, lines, strict=True):
        got = LISTING.match(line)
        assert got, line
        name = gnu_quote(m.name) + (f" -> {gnu_quote(m.link)}" if m.link else "")
        assert got["name"] == name
        assert got["perm"] == stat.filemode(_IFMT[m.kind] | m.mode)
        assert (int(got["uid"]), int(got["gid"]), int(got["size"])) == (m.uid, m.gid, len(m.data))
        if not (m.mtime_ns < 0 and m.mtime_ns % NS):  # GNU tar 1.34 mis-prints those
            assert got["time"] == gnu_time(stored_mtime_ns(m.mtime_ns)), m.name


def test_gnu_tar_extracts_encoded_headers(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(build(MEMBERS))
    dest = tmp_path / "out"
    dest.mkdir()
    # Warnings silenced: pre-1970 mtimes ("implausibly old") and tarfile's hdrcharset
    # record for non-UTF-8 names, which GNU tar 1.34 does not know (the bytes are right).
    gnu_tar(
        "-x",
        "--numeric-owner",
        "--same-owner",
        "--same-permissions",
        "--warning=no-timestamp",
        "--warning=no-unknown-keyword",
        "-f",
        archive,
        "-C",
        dest,
    )
    for m in MEMBERS:
        path = os.fsencode(dest) + b"/" + m.raw_name
        st = os.lstat(path)
        assert (stat.S_IFMT(st.st_mode), st.st_uid, st.st_gid) == (_IFMT[m.kind], m.uid, m.gid)
        assert st.st_mtime_ns == stored_mtime_ns(m.mtime_ns), m.name
        if m.kind == tarfile.SYMTYPE:
            assert os.readlink(path) == os.fsencode(m.link)
            continue
        assert stat.S_IMODE(st.st_mode) == m.mode, m.name
        if m.kind == tarfile.REGTYPE:
            with open(path, "rb") as fh:
                assert fh.read() == m.data


def test_sizes_around_8_gib(tmp_path: Path) -> None:
    """Headers only: the members' data is a hole in a sparse file, never written."""
    sizes = [OCTAL11 - 1, OCTAL11, OCTAL11 + 1]
    archive = tmp_path / "big.tar"
    with open(archive, "wb") as fh:
        for i, size in enumerate(sizes):
            header = encode_header(f"big-{i}", tarfile.REGTYPE, 0o600, 0, 0, size, 0)
            fh.write(header)
            info = next(iter(TarReader(io.BytesIO(header))))
            assert info.size == size
            assert ("size" in info.pax_headers) == (size >= OCTAL11)
            fh.seek(size + -size % BLOCK, os.SEEK_CUR)
        fh.write(bytes(2 * BLOCK))
    assert os.stat(archive).st_blocks * 512 < 1 << 20, "the test archive should be sparse"
    with tarfile.open(archive) as tf:
        assert [(i.name, i.size) for i in tf] == [(f"big-{i}", s) for i, s in enumerate(sizes)]
    listed = gnu_tar("-tv", "--full-time", "--numeric-owner", "-f", archive).stdout
    assert [int(got["size"]) for got in map(LISTING.match, listed.splitlines()) if got] == sizes


# -- TarReader reads what others write ---------------------------------------------------


def summary(info: tarfile.TarInfo, data: bytes) -> tuple[Any, ...]:
    name = info.name.rstrip("/") if info.isdir() else info.name  # GNU tar writes "dir/"
    kind = tarfile.REGTYPE if info.type == tarfile.AREGTYPE else info.type
    return (name, kind, info.size, info.mode, info.mtime, info.linkname, info.uid, info.gid, data)


def assert_reads_like_tarfile(archive: bytes) -> None:
    expected = [summary(i, d) for i, d in tarfile_members(archive)]
    assert expected, "the archive is empty"
    assert [summary(i, d) for i, d in reader_members(archive)] == expected
    assert [summary(i, d) for i, d in reader_members(archive, chunk=1 << 20)] == expected


def python_tarball(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:

        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode, info.mtime = kind, len(data), 0o640, 1_700_000_000
            for key, value in kw.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data))

        add("t", tarfile.DIRTYPE, mode=0o755)
        add("t/small", data=b"small\n")
        add("t/" + "long-name-" * 20, data=os.urandom(3000))  # GNU: an 'L' record
        add("t/link", tarfile.SYMTYPE, linkname="x/" * 80 + "target")  # GNU: a 'K' record
        add("t/hard", tarfile.LNKTYPE, linkname="t/small")
        add("t/données-🚀", data="✓".encode())
        add("t/old", mtime=-1)  # GNU: base-256
        add("t/older", mtime=-365 * 86_400)
        add("t/ids", uid=3_000_000_000, gid=OCTAL7)  # GNU: base-256
        add("t/empty")
        add("t/one-block", data=b"y" * BLOCK)
        if fmt == tarfile.PAX_FORMAT:
            add("t/fraction", mtime=1_700_000_000.25)
            add("t/before-1970-fraction", mtime=-1.5)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["gnu", "pax"])
def test_reader_reads_python_tarfile_archives(fmt: int) -> None:
    assert_reads_like_tarfile(python_tarball(fmt))


def test_reader_reads_gnu_base_256_sizes() -> None:
    info = tarfile.TarInfo("huge")
    info.size = OCTAL11 + 5
    header = info.tobuf(tarfile.GNU_FORMAT)
    assert header[124] == 0x80, "expected a base-256 size field"
    assert next(iter(TarReader(io.BytesIO(header)))).size == OCTAL11 + 5


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tree")
    top = base / "tree"
    (top / "sub" / "empty").mkdir(parents=True)
    (top / "sub" / "données").mkdir()
    (top / "sub" / "données" / "naïve-文件-🚀.txt").write_text("unicode\n")
    (top / "small.txt").write_text("hello\n")
    (top / "zero").write_bytes(b"")
    (top / "one-block").write_bytes(b"z" * BLOCK)
    (top / "random.bin").write_bytes(os.urandom(100_000))
    (top / ("L" * 150)).write_bytes(b"long name")
    deep = top / "/".join("d" * 60 for _ in range(5))
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep\n")
    (top / "link").symlink_to("small.txt")
    (top / "long-link").symlink_to("x/" * 70 + "target")
    os.link(top / "small.txt", top / "hard")
    with open(os.fsencode(top) + b"/latin1-\xe9t\xe9", "wb") as fh:
        fh.write(b"not utf-8\n")
    (top / "script.sh").write_text("#!/bin/sh\n")
    (top / "script.sh").chmod(0o4755)
    os.chown(top / "small.txt", 1000, 3_000_000_000)
    (top / "old").write_text("old\n")
    os.utime(top / "old", ns=(-1_500_000_000, -1_500_000_000))
    os.utime(top / "random.bin", ns=(1, 1_700_000_000_123_456_789))
    return top


@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_reader_reads_gnu_tar_archives(fmt: str, small_tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    gnu_tar(
        f"--format={fmt}",
        "--warning=no-timestamp",
        "-cf",
        archive,
        "-C",
        small_tree.parent,
        small_tree.name,
    )
    assert_reads_like_tarfile(archive.read_bytes())


# -- TarReader refuses damage -----------------------------------------------------------

SIMPLE = [
    M("a", data=os.urandom(1000)),  # header at 0, data 512..1512, padding to 1536
    M("b" * 120, data=b"b"),  # 'x' header at 1536, records at 2048, header 2560, data 3072
    M("c"),  # header at 3584, end-of-archive at 4096
]


def refused(archive: bytes) -> tarfile.TarError:
    with pytest.raises(tarfile.TarError) as failure:
        reader_members(archive)
    return failure.value


def with_checksum(block: bytes | bytearray) -> bytes:
    head = bytearray(block[:BLOCK])
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head) + bytes(block[BLOCK:])


def test_reader_accepts_the_simple_archive() -> None:
    got = reader_members(build(SIMPLE))
    assert [(i.name, d) for i, d in got] == [(m.name, m.data) for m in SIMPLE]


@pytest.mark.parametrize("at", [0, 100, 1536 + 1, 2560 + 3, 3584 + 156])
def test_reader_refuses_a_bad_checksum(at: int) -> None:
    archive = bytearray(build(SIMPLE))
    archive[at] ^= 0x20
    assert "checksum" in str(refused(bytes(archive)))


@pytest.mark.parametrize(
    "cut",
    [100, 512 + 300, 1536 - 1, 1536 + 200, 2048 + 10, 2560 + 511, 3072, 3584 + 1],
    ids=[
        "header",
        "data",
        "padding",
        "pax",
        "pax-records",
        "header-after-pax",
        "data-after-pax",
        "last",
    ],
)
def test_reader_refuses_a_truncated_archive(cut: int) -> None:
    assert "truncated" in str(refused(build(SIMPLE)[:cut]))


def test_reader_refuses_a_missing_end_marker() -> None:
    assert "end-of-archive" in str(refused(build(SIMPLE, end=False)))


def with_pax(records: bytes) -> bytes:
    """A member 'f' preceded by an extended header holding exactly `records`."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    head = info.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % BLOCK)
    return head + build([M("f", data=b"data")])


def test_reader_applies_a_well_formed_pax_header() -> None:
    archive = with_pax(pax_record("path", "renamed") + pax_record("mtime", "-1.25"))
    ((info, data),) = reader_members(archive)
    assert (info.name, info.mtime, data) == ("renamed", -1.25, b"data")
    assert summary(info, data) == summary(*tarfile_members(archive)[0])


@pytest.mark.parametrize(
    "records",
    [
        b"99 path=x\n",  # length runs past the header
        b"8 abcde\n",  # no '='
        b"x path=a\n",  # length not a number
        b"0 path=a\n",
        b"-5 path=a\n",
        b"12345678",  # no space at all
        pax_record("mtime", "yesterday"),
        pax_record("size", "12k"),
        pax_record("uid", "root"),
        pax_record("size", "-5"),
        pax_record("mtime", "nan"),
        pax_record("mtime", "inf"),
    ],
)
def test_reader_refuses_a_damaged_pax_record(records: bytes) -> None:
    assert "pax" in str(refused(with_pax(records)))


def sparse_file(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "holes"
    with open(path, "wb") as fh:
        fh.truncate(4 << 20)
        fh.seek(1 << 20)
        fh.write(b"data")
    return path


@pytest.mark.parametrize(
    "how",
    [
        ["--format=gnu"],
        ["--format=posix", "--sparse-version=0.0"],
        ["--format=posix", "--sparse-version=0.1"],
        ["--format=posix", "--sparse-version=1.0"],
    ],
    ids=["gnu", "pax-0.0", "pax-0.1", "pax-1.0"],
)
def test_reader_refuses_gnu_sparse_members(how: list[str], tmp_path: Path) -> None:
    sparse_file(tmp_path / "t")
    archive = tmp_path / "a.tar"
    gnu_tar(*how, "--sparse", "-cf", archive, "-C", tmp_path, "t")
    assert "sparse" in str(refused(archive.read_bytes()))


# -- fuzzing: only tarfile.TarError ever escapes ------------------------------------------


def survive(archive: bytes) -> None:
    with contextlib.suppress(tarfile.TarError):
        reader_members(archive, chunk=4093)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4 * BLOCK))
def test_fuzz_random_bytes(data: bytes) -> None:
    survive(data)


_KINDS = [b"0", b"\0", b"1", b"2", b"5", b"x", b"g", b"L", b"K", b"S", b"7", b"V"]


@st.composite
def number_field(draw: st.DrawFn, width: int) -> bytes:
    kind = draw(st.sampled_from(["small"] * 6 + ["octal", "base256", "negative", "raw"]))
    if kind in ("small", "octal"):
        value = draw(st.integers(0, 3 * BLOCK if kind == "small" else 8 ** (width - 1) - 1))
        return b"%0*o\0" % (width - 1, value)
    if kind in ("base256", "negative"):
        limit = 1 << (8 * width - 2)
        value = draw(st.integers(0, limit - 1) if kind == "base256" else st.integers(-limit, -1))
        return ((1 << (8 * width - 1)) | (value % (1 << (8 * width - 1)))).to_bytes(width, "big")
    return draw(st.binary(min_size=width, max_size=width))


_PAX_KEYS = ["path", "linkpath", "size", "uid", "gid", "mtime", "GNU.sparse.major", "hdrcharset"]


@st.composite
def pax_payload(draw: st.DrawFn) -> bytes:
    records = []
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(_PAX_KEYS) | st.text(max_size=8))
        value = draw(
            st.sampled_from(["-1", "1e999", "nan", "0x10", "1_0", "-1.5", ""])
            | st.integers(-(10**20), 10**20).map(str)
            | st.text(max_size=30)
        )
        record = pax_record(key, value)
        if draw(st.booleans()):  # damage it
            at = draw(st.integers(0, len(record) - 1))
            record = record[:at] + draw(st.binary(max_size=3)) + record[at + 1 :]
        records.append(record)
    return b"".join(records)


@st.composite
def header_block(draw: st.DrawFn) -> bytes:
    block = bytearray(draw(st.binary(min_size=BLOCK, max_size=BLOCK)))
    if draw(st.booleans()):
        block[257:265] = draw(st.sampled_from([b"ustar\x0000", b"ustar  \0"]))
    for start, width in ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12)):
        block[start : start + width] = draw(number_field(width))
    block[156:157] = draw(st.sampled_from(_KINDS))
    payload = draw(st.one_of(pax_payload(), st.binary(max_size=2 * BLOCK)))
    if draw(st.booleans()):
        size = len(payload) if draw(st.booleans()) else draw(st.integers(0, 4 * BLOCK))
        block[124:136] = b"%011o\0" % size
    if draw(st.booleans()):
        payload += bytes(-len(payload) % BLOCK)
    return with_checksum(block) + payload


@FUZZ
@given(st.lists(header_block(), min_size=1, max_size=4), st.booleans())
def test_fuzz_headers_with_valid_checksums(blocks: list[bytes], end: bool) -> None:
    survive(b"".join(blocks) + (bytes(2 * BLOCK) if end else b""))


_VALID = build(SIMPLE + MEMBERS[:12])


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(_VALID)),
    st.booleans(),
)
def test_fuzz_damaged_valid_archive(
    edits: list[tuple[int, int]], cut: int, fix_checksums: bool
) -> None:
    archive = bytearray(_VALID)
    for at, value in edits:
        archive[at] = value
    if fix_checksums:  # damage that a header checksum does not catch
        for start in range(0, len(archive), BLOCK):
            if archive[start + 257 : start + 262] == b"ustar":
                archive[start : start + BLOCK] = with_checksum(archive[start : start + BLOCK])
    survive(bytes(archive[:cut]))
