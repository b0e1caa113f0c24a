"""The restore's tar scanner reads what GNU tar and Python's tarfile write.

`members.TarScanner` parses headers itself (fast, from large buffers); here it
must give, member for member, what tarfile reads from archives GNU tar wrote in
each of its formats (long names, ustar prefixes, pax records, long link
targets) and from itsup's own archives, and refuse damage as tarfile would.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from itsup.pipeline.members import TarScanner

LONG = "d" * 60 + "/" + "e" * 70 + "/" + "f" * 80  # over 100 bytes: needs more than ustar's name


def _tree(root: Path) -> None:
    (root / "top" / LONG).mkdir(parents=True)
    (root / "top" / LONG / "file.txt").write_bytes(b"long\n" * 300)
    (root / "top/small").write_bytes(b"x")
    (root / "top/empty").write_bytes(b"")
    (root / "top/ünï côdé").write_bytes(os.urandom(3000))
    (root / "top/link").symlink_to("small")
    (root / "top/longlink").symlink_to("../" + "t" * 150)
    (root / "top/block").write_bytes(os.urandom(512))


def _scan(data: bytes) -> list[tuple[str, str, int, str, bytes]]:
    scan = TarScanner(io.BufferedReader(io.BytesIO(data), 1024))  # reads across pieces
    out = []
    while (header := scan.next_header()) is not None:
        name, flag, size, link = header
        body = scan.take(size) if flag in (b"0", b"\0") else b""
        out.append((name.rstrip("/"), flag.decode(), size, link, body))
    return out


def _tarfile(data: bytes) -> list[tuple[str, str, int, str, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            body = tar.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            flag = info.type.decode()
            out.append((info.name, flag, info.size, info.linkname, body))
    return out


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar", "oldgnu"])
def test_scanner_reads_gnu_tar_archives_as_tarfile_does(tmp_path: Path, fmt: str) -> None:
    _tree(tmp_path)
    if fmt in ("ustar",):  # no long names there: ustar has no way to write them
        (tmp_path / "top" / LONG / "file.txt").unlink()
        (tmp_path / "top/longlink").unlink()
    data = subprocess.run(
        ["tar", f"--format={fmt}", "-cf", "-", "top"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
    ).stdout
    scanned = _scan(data)
    assert scanned == _tarfile(data)
    assert any(name.endswith("file.txt") for name, *_ in scanned) == (fmt != "ustar")


def test_scanner_refuses_a_damaged_header_and_a_cut_archive(tmp_path: Path) -> None:
    _tree(tmp_path)
    data = subprocess.run(
        ["tar", "--format=posix", "-cf", "-", "top"], cwd=tmp_path, capture_output=True, check=True
    ).stdout
    flipped = bytearray(data)
    flipped[5] ^= 0x01  # inside the first header's name
    with pytest.raises(tarfile.HeaderError, match="checksum"):
        _scan(bytes(flipped))
    with pytest.raises(tarfile.ReadError, match=r"truncated|end"):
        _scan(data[: len(data) // 2 + 100])
