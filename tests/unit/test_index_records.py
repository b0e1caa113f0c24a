"""The restore's reading of file index lines (`parse_record`) against `Entry`.

The restore matches the common line with a pattern and falls back on json for
anything else; either way it must read every line exactly as `Entry.from_json`
does, and refuse what is not an index line.
"""

from __future__ import annotations

import pytest

from itsup.errors import IntegrityError
from itsup.manifest import Entry, parse_record

ENTRIES = [
    Entry("upstream/app/data.bin", "file", 0o644, 1_736_910_000_123_456_789, 0, 0, 12, "ab" * 32),
    Entry("upstream/app", "dir", 0o755, 1_736_910_000_000_000_000, 1000, 1000),
    Entry("proxy/current", "symlink", 0o777, -1_500_000_000, 0, 0, link="traefik/v2.yml"),
    Entry("proxy/ünïcode name", "file", 0o600, 5, 0, 0, 3, "cd" * 32),
    Entry('proxy/quote"and\\backslash', "file", 0o600, 5, 0, 0, 3, "ef" * 32),
    Entry("proxy/not-utf8-\udcff", "file", 0o600, 5, 0, 0, 1, "01" * 32),
    Entry("proxy/tab\there", "symlink", 0o777, 5, 0, 0, link="ünï\u2028"),
    Entry("upstream/grew", "file", 0o644, 5, 0, 0, 7, "23" * 32, changed=True),
    Entry("upstream/big-ids", "file", 0o644, 5, 4_000_000_000, 4_000_000_001, 8**12, "45" * 32),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.path for e in ENTRIES])
def test_parse_record_reads_what_entry_reads(entry: Entry) -> None:
    line = entry.to_json().encode("utf-8", "surrogateescape")
    back = Entry.from_json(line.decode("utf-8", "surrogateescape"))
    record = parse_record(line, "index")
    assert record == (
        back.path,
        back.type,
        back.mode,
        back.mtime_ns,
        back.uid,
        back.gid,
        back.size,
        back.link or "",
    )
    assert record[0] == entry.path


def test_parse_record_takes_other_spellings_of_the_same_line() -> None:
    line = b'{"type": "file", "size": 3, "path": "a\\/b", "mode": 420, "mtime_ns": 7, "later": 1}'
    assert parse_record(line, "index") == ("a/b", "file", 420, 7, 0, 0, 3, "")


@pytest.mark.parametrize(
    "line",
    [b"", b"not json", b"[1, 2]", b'{"path": "a"}', b'{"path": "a", "type": "file", "mode": "x"}'],
)
def test_parse_record_refuses_what_is_not_an_index_line(line: bytes) -> None:
    with pytest.raises(IntegrityError, match="the file index is damaged"):
        parse_record(line, "gen/index")
