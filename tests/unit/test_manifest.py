"""The manifest's format version and the fields reserved for what comes next
(docs/design.md, "Manifest"): today's readers must accept later additions and
refuse a newer major version with a clear message, never as damage half read."""

from __future__ import annotations

import json

import pytest
from helpers import make_manifest

from itsup.errors import IntegrityError
from itsup.manifest import FORMAT, Entry, Manifest, NewerFormat


def test_round_trip_keeps_the_reserved_fields() -> None:
    dumps = [{"project": "blog", "service": "db", "adapter": "postgres", "size": 5}]
    m = make_manifest(parent="backup-2025-12-31-000000", dumps=dumps)
    back = Manifest.from_bytes(m.to_bytes(), "m")
    assert back == m
    assert back.parent == "backup-2025-12-31-000000" and back.dumps == dumps
    raw = json.loads(m.to_bytes())
    assert raw["format"] == FORMAT == "itsup-backup/1"


def test_a_full_backup_has_no_parent_and_no_dumps() -> None:
    raw = json.loads(make_manifest().to_bytes())
    assert raw["parent"] is None and raw["dumps"] == []


def test_keys_a_later_itsup_adds_are_ignored() -> None:
    raw = json.loads(make_manifest().to_bytes())
    raw["chunking"] = {"algorithm": "fastcdc"}
    back = Manifest.from_bytes(json.dumps(raw).encode(), "m")
    assert back == make_manifest()


@pytest.mark.parametrize("fmt", ["itsup-backup/2", "itsup-backup/10"])
def test_a_newer_major_version_is_refused_with_upgrade_advice(fmt: str) -> None:
    raw = json.loads(make_manifest().to_bytes())
    raw["format"] = fmt
    with pytest.raises(NewerFormat) as info:
        Manifest.from_bytes(json.dumps(raw).encode(), "m.json")
    assert fmt in info.value.message and "newer than this itsup reads" in info.value.message
    assert info.value.hint and "upgrade itsup" in info.value.hint


@pytest.mark.parametrize("fmt", [None, "restic/1", "itsup-backup/x", "itsup-backup"])
def test_something_else_is_not_a_manifest(fmt: object) -> None:
    raw = json.loads(make_manifest().to_bytes())
    raw["format"] = fmt
    with pytest.raises(IntegrityError, match="unknown manifest format"):
        Manifest.from_bytes(json.dumps(raw).encode(), "m.json")


def test_index_entries_ignore_keys_a_later_itsup_adds() -> None:
    line = json.dumps(
        {
            "path": "a",
            "type": "file",
            "mode": 420,
            "mtime_ns": 1,
            "uid": 0,
            "gid": 0,
            "size": 3,
            "sha256": "ab",
            "chunks": ["x"],
        }
    )
    assert Entry.from_json(line) == Entry("a", "file", 420, 1, 0, 0, 3, "ab")
