"""The file index: every archive member as one JSON line, gzip-compressed.

Restore checks each archive member against its index entry, and operators
read the index with `zcat | jq`, so it must round-trip every name a host can
hold (non-UTF-8 ones included) and stay plain UTF-8 JSON lines in one gzip
stream. A damaged index must be refused as damaged, never half-read.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itsup.errors import IntegrityError
from itsup.manifest import Entry, IndexWriter, entry_line, read_index

BATCH = IndexWriter.BATCH
NAME = "backup-2025-01-15-030000.index.jsonl.gz"
LATIN1 = os.fsdecode(b"upstream/app/latin1-\xe9t\xe9.txt")  # not UTF-8: lone surrogates


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


SAMPLES = [
    Entry("upstream", "dir", 0o755, 1_600_000_000_123_456_789, 0, 0),
    Entry("upstream/app/docker-compose.yml", "file", 0o644, 0, 1000, 1000, 42, sha(1)),
    Entry("upstream/app/run.sh", "file", 0o4755, -1_500_000_000, 0, 0, 0, sha(2), changed=True),
    Entry("upstream/app/current.yml", "symlink", 0o777, 1, 33, 33, link="docker-compose.yml"),
    Entry("upstream/app/shared", "symlink", 0o777, 2, 0, 0, link="../blog/données"),
    Entry(LATIN1, "file", 0o600, 3, 3_000_000_000, 2**32 - 2, 10, sha(3)),
    Entry(LATIN1 + "-link", "symlink", 0o777, 4, 0, 0, link=os.fsdecode(b"\xff\xfe")),
    Entry("upstream/app/données/naïve-文件-🚀.txt", "file", 0o644, 5, 0, 0, 8, sha(4)),
    Entry("upstream/app/new\nline.txt", "file", 0o644, 6, 0, 0, 8, sha(5)),
    Entry('upstream/app/quote"back\\slash\ttab', "file", 0o644, 7, 0, 0, 1, sha(6)),
    Entry("upstream/app/line\u2028separator\x85nel", "file", 0o644, 8, 0, 0, 1, sha(7)),
    Entry("upstream/app/big", "file", 0o644, 9, 0, 0, 2**40 + 3, sha(8)),
    Entry("upstream/app/empty", "file", 0o644, 10, 0, 0, 0, sha(9)),
]


def many(n: int) -> list[Entry]:
    """`n` entries cycling through SAMPLES, each path made unique."""
    out = []
    for i in range(n):
        s = SAMPLES[i % len(SAMPLES)]
        out.append(Entry(f"{s.path}-{i}", s.type, s.mode, s.mtime_ns + i, s.uid, s.gid,
                         s.size, s.sha256, s.link, s.changed))  # fmt: skip
    return out


def index_of(entries: list[Entry]) -> bytes:
    writer = IndexWriter()
    for entry in entries:
        writer.add(entry)
    return writer.finish()


def read_back(data: bytes) -> list[Entry]:
    return list(read_index(io.BytesIO(data), NAME))


@pytest.mark.parametrize("entry", SAMPLES, ids=lambda e: repr(e.path[-20:]))
def test_entry_json_round_trip(entry: Entry) -> None:
    line = entry.to_json()
    assert "\n" not in line
    line.encode("utf-8")  # strict: what jq reads
    assert Entry.from_json(line) == entry


def line_of(entry: Entry) -> str:
    return entry_line(
        entry.path, entry.type, entry.mode, entry.mtime_ns, entry.uid, entry.gid,
        entry.size, entry.sha256, entry.changed,
    )  # fmt: skip


@pytest.mark.parametrize(
    "entry", [e for e in SAMPLES if e.type != "symlink"], ids=lambda e: repr(e.path[-20:])
)
def test_entry_line_is_the_entry_json(entry: Entry) -> None:
    """The backup writes files' and folders' lines with entry_line: the very same text."""
    assert line_of(entry) == entry.to_json()


# Any name a host can hold: surrogate escapes (non-UTF-8 bytes), controls, quotes, DEL.
NAMES = st.text(
    st.characters(exclude_characters="\x00") | st.integers(0xDC80, 0xDCFF).map(chr), max_size=40
)


@given(NAMES, st.booleans(), st.sampled_from(["file", "dir"]))
def test_entry_line_matches_json_dumps_for_any_name(name: str, changed: bool, kind: str) -> None:
    entry = Entry(name, kind, 0o644, 1_700_000_000_123_456_789, 0, 0, 5, sha(1), changed=changed)
    line = line_of(entry)
    assert line == entry.to_json()
    assert Entry.from_json(line) == entry


def test_lines_and_entries_go_into_one_index() -> None:
    entries = many(BATCH + 5)
    writer = IndexWriter()
    writer.add(entries[0])
    writer.add_lines([line_of(e) for e in entries[1:BATCH] if e.type != "symlink"])
    writer.add_lines([])
    for entry in entries[BATCH:]:
        writer.add(entry)
    kept = [entries[0], *(e for e in entries[1:BATCH] if e.type != "symlink"), *entries[BATCH:]]
    assert read_back(writer.finish()) == kept


def test_non_utf8_names_come_back_as_the_same_bytes() -> None:
    (entry,) = read_back(index_of([SAMPLES[5]]))
    assert os.fsencode(entry.path) == b"upstream/app/latin1-\xe9t\xe9.txt"


@pytest.mark.parametrize("count", [0, 1, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 17])
def test_index_round_trip(count: int) -> None:
    entries = many(count)
    assert read_back(index_of(entries)) == entries


def test_index_is_one_gzip_stream_of_utf8_json_lines() -> None:
    entries = many(2 * BATCH + 17)
    data = index_of(entries)
    single = zlib.decompressobj(wbits=31)
    raw = single.decompress(data)
    assert single.eof and single.unused_data == b""
    proc = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == raw
    raw.decode("utf-8")  # strict: even non-UTF-8 names are written as valid UTF-8
    lines = raw.rstrip(b"\n").split(b"\n")  # newline-delimited, as jq reads it
    assert [json.loads(line)["path"] for line in lines] == [e.path for e in entries]


def gz(payload: bytes) -> bytes:
    return gzip.compress(payload, mtime=0)


GOOD = index_of(many(300))


def flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize(
    "data",
    [
        GOOD[: len(GOOD) // 2],
        GOOD[:-4],  # the length is missing
        flip(GOOD, len(GOOD) - 6),  # CRC-32
        flip(GOOD, len(GOOD) - 2),  # length
        GOOD + b"junk",
        b"\x1f\x8b",
        json.dumps({"path": "x"}).encode(),  # not gzip at all
        gz(b"not json\n"),
        gz(b'{"path": "x"}\n'),  # fields missing
        gz(b'{"path": "x", "type": "file", "surprise": 1}\n'),
        gz(b"[1, 2]\n"),
        gz(b'{"path": "\xff"}\n'),  # not UTF-8
    ],
    ids=[
        "half",
        "no-length",
        "crc",
        "length",
        "trailing-junk",
        "magic-only",
        "not-gzip",
        "not-json",
        "missing-fields",
        "unknown-field",
        "not-an-object",
        "not-utf8",
    ],
)
def test_damaged_index_is_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError, match=re.escape(f"{NAME}: the file index is damaged")):
        read_back(data)


def test_bit_rot_anywhere_in_the_index_is_refused() -> None:
    for at in range(10, len(GOOD) - 8, 13):  # past the gzip header, up to the trailer
        with pytest.raises(IntegrityError):
            read_back(flip(GOOD, at))


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_backups_index_is_spooled_then_stored_whole_or_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    """A backup's index never sits in memory: written to a spool file (encrypted as it
    is written when asked), then stored in one put, or streamed when it is large; the
    stored object is the spool's bytes, with the size and SHA-256 the manifest gets."""
    from itsup import lifecycle
    from itsup.agekeys import pyrage_module
    from itsup.index import IndexFile
    from itsup.storage.local import LocalTarget

    pyrage = pyrage_module()
    identity = pyrage.x25519.Identity.generate()
    entries = many(3 * BATCH + 1)
    index = IndexFile([identity.to_public()] if encrypted else [])
    try:
        for entry in entries:
            index.writer.add(entry)
        index.finish()
        assert b"".join(index.chunks(1000)) == b"".join(index.chunks())
        store = lifecycle.GenerationStore(LocalTarget(tmp_path), "")
        whole = store.put_index("whole", index)
        monkeypatch.setattr(lifecycle, "INDEX_PUT_WHOLE", 1000)
        streamed = store.put_index("streamed", index)
    finally:
        index.close()
    for ref in (whole, streamed):
        data = (tmp_path / ref.key).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (ref.size, ref.sha256)
        assert (ref.size, ref.sha256) == (index.size, index.sha256)
        assert data.startswith(b"age-encryption.org/") == encrypted
        plain = pyrage.decrypt(data, [identity]) if encrypted else data
        assert read_back(plain) == entries
