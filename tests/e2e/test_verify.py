"""`itsup backup verify`, end to end, against the local target and the real S3 server.

Generations are made with the real `itsup backup`, then damaged where they are
stored the way storage fails (flipped bytes, cut objects, lost objects) or
forged the way only a checker reading everything would notice (an index
that lies, a manifest with the wrong SHA-256, an archive rewritten with new
content and a manifest made to match it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import socket
import subprocess
from pathlib import Path
from typing import Any

from helpers import (
    ACME,
    ITSUP,
    HostFactory,
    Store,
    flip_middle,
    generations,
    itsup,
    read_index,
    read_manifest,
    retar_with_new_content,
    setup_host,
    tree_state,
    write_config,
)

from itsup.errors import ExitCode

# -- helpers -------------------------------------------------------------------------------


def verify_json(root: Path, *args: str, expect: int = 0, **kw: Any) -> dict[str, Any]:
    res = itsup(root, "backup", "verify", "--json", *args, expect=expect, **kw)
    data = json.loads(res.out)
    assert isinstance(data, dict)
    return data


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["generation"]: g for g in report["generations"]}


def state(root: Path) -> dict[str, Any]:
    data = json.loads((root / ".itsup" / "state.json").read_text())
    assert isinstance(data, dict)
    return data


def objects(store: Store) -> dict[str, str]:
    """Every stored object's SHA-256: verify must leave them all as they were."""
    return {n: hashlib.sha256(store.read(n)).hexdigest() for n in store.names()}


def set_manifest(store: Store, name: str, change: Any) -> None:
    manifest = read_manifest(store, name)
    change(manifest)
    store.write(f"{name}.manifest.json", json.dumps(manifest, indent=2).encode())


def replace_index(store: Store, name: str, lines: list[bytes]) -> None:
    """Store a new file index and make the manifest vouch for it (a consistent lie)."""
    data = gzip.compress(b"".join(lines))
    store.write(f"{name}.index.jsonl.gz", data)

    def vouch(m: dict[str, Any]) -> None:
        m["index"]["size"] = len(data)
        m["index"]["sha256"] = hashlib.sha256(data).hexdigest()

    set_manifest(store, name, vouch)


def index_lines(store: Store, name: str) -> list[bytes]:
    return gzip.decompress(store.read(f"{name}.index.jsonl.gz")).splitlines(keepends=True)


def damage(store: Store, name: str, how: str) -> None:
    archive = f"{name}.tar.gz"
    if how == "flip":
        store.write(archive, flip_middle(store.read(archive)))
    elif how == "truncate":
        data = store.read(archive)
        store.write(archive, data[: len(data) // 2])
    elif how == "no-archive":
        store.delete(archive)
    elif how == "no-manifest":
        store.delete(f"{name}.manifest.json")
    elif how == "wrong-sha":
        set_manifest(store, name, lambda m: m["archive"].update(sha256="0" * 64))
    elif how == "index-lies":
        lines = [
            line for line in index_lines(store, name) if b'"proxy/traefik/acme.json"' not in line
        ]
        replace_index(store, name, lines)
    else:
        raise AssertionError(how)


def backups(root: Path, count: int) -> list[str]:
    """`count` generations, each with other content; their names, oldest first."""
    for i in range(count):
        (root / ACME).write_text(f'{{"letsencrypt": {{"generation": {i}}}}}\n')
        itsup(root, "backup")
    names = [g["name"] for g in generations(root)]
    assert len(names) == count
    return names[::-1]


# -- good generations ---------------------------------------------------------------------


def test_verify_passes_and_changes_nothing(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    older, newest = backups(root, 2)
    stored_before = objects(store)
    tree_before = tree_state(root)
    index = read_index(store, newest)
    files = [p for p, e in index.items() if e["type"] == "file"]

    res = itsup(root, "backup", "verify")
    assert newest in res.out and "ok" in res.out and older not in res.out
    assert "FAILED" not in res.out

    report = verify_json(root)
    assert report["ok"] is True and report["checked"] == 1
    [row] = report["generations"]
    manifest = read_manifest(store, newest)
    assert row["generation"] == newest and row["result"] == "ok" and row["reason"] is None
    assert row["objects_checked"] == 3
    assert row["bytes_read"] >= manifest["archive"]["size"] + manifest["index"]["size"]
    assert row["files"] == len(files) and row["files_hashed"] == 0
    assert row["members"] == len(index)

    full = rows(verify_json(root, newest, "--read-data-subset", "100"))[newest]
    assert full["result"] == "ok" and full["files_hashed"] == len(files)
    tenth = rows(verify_json(root, "--read-data-subset", "10%"))[newest]
    assert tenth["files_hashed"] == math.ceil(len(files) / 10) and tenth["result"] == "ok"

    every = verify_json(root, "--all", "--read-data-subset", "50")
    assert [g["generation"] for g in every["generations"]] == [newest, older]
    assert all(g["result"] == "ok" for g in every["generations"])

    assert objects(store) == stored_before, "verify changed the backup storage"
    assert tree_state(root) == tree_before, "verify changed the host tree"
    record = state(root)["last"]["verify"]
    assert record["result"] == "success" and record["exit_code"] == 0
    assert record["details"]["generations"] == 2 and record["details"]["failed"] == 0
    assert record["bytes"] > 0 and record["target"]


def test_verify_encrypted_generation(tmp_path: Path) -> None:
    import pyrage

    key = tmp_path / "age-key.txt"
    identity = pyrage.x25519.Identity.generate()
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    other = tmp_path / "other-key.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    store = setup_host(
        tmp_path / "host",
        "local",
        None,
        "",
        extra=f"  encryption:\n    recipients: [{identity.to_public()}]\n",
    )
    root = store.root
    itsup(root, "backup")
    [gen] = [g["name"] for g in generations(root)]
    env = {"ITSUP_AGE_IDENTITY": str(key)}

    report = verify_json(root, "--read-data-subset", "100", env=env)
    [row] = report["generations"]
    assert row["result"] == "ok" and row["encrypted"] is True and row["files_hashed"] > 0

    # The wrong key is a configuration problem (exit 4), not damage; no key is printed.
    res = itsup(root, "backup", "verify", env={"ITSUP_AGE_IDENTITY": str(other)}, expect=4)
    assert "identit" in res.err
    assert str(identity) not in res.out + res.err

    name = f"{gen}.tar.gz.age"
    store.write(name, flip_middle(store.read(name)))
    res = itsup(root, "backup", "verify", env=env, expect=ExitCode.DAMAGED)
    assert gen in res.err and "SHA-256 does not match" in res.err


# -- damage of every kind ------------------------------------------------------------------

DAMAGES = ["flip", "truncate", "no-archive", "index-lies", "wrong-sha"]
REASONS = {
    "flip": "SHA-256 does not match the manifest",
    "truncate": "the manifest records",
    "no-archive": "is missing",
    "index-lies": "proxy/traefik/acme.json",
    "wrong-sha": "SHA-256 does not match the manifest",
}


def test_verify_catches_damage(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    kinds = [*DAMAGES, "good", "no-manifest"]  # newest last: a good one, then an unfinished one
    names = dict(zip(kinds, backups(root, len(kinds)), strict=True))
    for how in (*DAMAGES, "no-manifest"):
        damage(store, names[how], how)

    # The default is the newest complete generation: the good one.
    report = verify_json(root)
    assert [g["generation"] for g in report["generations"]] == [names["good"]]
    assert report["ok"] is True

    report = verify_json(root, "--all", expect=ExitCode.DAMAGED)
    found = rows(report)
    assert len(found) == len(kinds) and report["failed"] == len(DAMAGES)
    assert found[names["good"]]["result"] == "ok"
    assert found[names["no-manifest"]]["result"] == "incomplete"
    assert "no manifest" in found[names["no-manifest"]]["reason"]
    for how in DAMAGES:
        row = found[names[how]]
        assert row["result"] == "failed", (how, row)
        assert REASONS[how] in row["reason"], (how, row["reasons"])
    flipped = found[names["flip"]]["reasons"]
    assert len(flipped) == 2 and ".tar.gz: " in flipped[1], flipped  # and it does not decode
    assert "does not match the file index" in found[names["index-lies"]]["reason"]

    # The table and the one-line error name every failed generation.
    res = itsup(root, "backup", "verify", "--all", expect=ExitCode.DAMAGED)
    assert "FAILED" in res.out and "incomplete" in res.out
    assert res.err.startswith("itsup: error: backup verify: 5 of 7 generation(s) FAILED")

    # Each one named on its own (the unfinished one too) fails with its reason.
    for how in (*DAMAGES, "no-manifest"):
        res = itsup(root, "backup", "verify", names[how], expect=ExitCode.DAMAGED)
        assert names[how] in res.err, (how, res.err)
        assert (REASONS.get(how) or "no manifest") in res.err, (how, res.err)

    record = state(root)["last"]["verify"]
    assert record["result"] == "failure" and record["exit_code"] == ExitCode.DAMAGED
    assert names["no-manifest"] in record["message"]


def test_read_data_subset_catches_rewritten_content(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    [name] = backups(root, 1)
    changed = "upstream/blog/docker-compose.yml"
    retar_with_new_content(store, name, changed)

    # Objects, SHA-256 and member list all agree: a plain verify cannot tell.
    assert verify_json(root)["ok"] is True
    report = verify_json(root, "--read-data-subset", "100", expect=ExitCode.DAMAGED)
    [row] = report["generations"]
    assert row["result"] == "failed"
    assert row["reason"] == f"{changed}: its content does not match the SHA-256 in the file index"
    res = itsup(root, "backup", "verify", "--read-data-subset", "100", expect=ExitCode.DAMAGED)
    assert name in res.err and changed in res.err
    record = state(root)["last"]["verify"]
    assert record["result"] == "failure" and record["exit_code"] == ExitCode.DAMAGED


def test_verify_incomplete_generation(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    older, newest = backups(root, 2)
    damage(store, newest, "no-manifest")

    assert [g["generation"] for g in verify_json(root)["generations"]] == [older]
    report = verify_json(root, "--all")  # incomplete is reported, and is no failure
    assert rows(report)[newest]["result"] == "incomplete"
    assert rows(report)[older]["result"] == "ok"
    assert report["ok"] is True and report["incomplete"] == 1
    res = itsup(root, "backup", "verify", newest, expect=ExitCode.DAMAGED)
    assert newest in res.err and "no manifest" in res.err
    itsup(root, "backup", "verify", "backup-2001-01-01-000000", expect=ExitCode.FAILURE)


def test_verify_usage_errors(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    for bad in ("0", "150", "abc", "-5%"):
        res = itsup(root, "backup", "verify", "--read-data-subset", bad, expect=ExitCode.USAGE)
        assert "read-data-subset" in res.err
    res = itsup(root, "backup", "verify", "--all", "backup-2026", expect=ExitCode.USAGE)
    assert "--all" in res.err
    assert not (root / ".itsup" / "state.json").exists()  # nothing ran


def test_unreachable_storage_exits_6(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "host"
    setup_host(root, "local", None, "")
    write_config(
        root,
        "backup:\n  s3:\n    bucket: b\n    prefix: p/\n    region: us-east-1\n"
        f"    endpoint: http://127.0.0.1:{port}\n"
        "    access_key_id: AKIAEXAMPLE\n    secret_access_key: do-not-print-this-1234\n",
    )
    commands = [["backup", "verify", "--all"], ["backup", "drill"]]
    # Each retries with backoff before giving up: run them side by side.
    procs = [
        subprocess.Popen(
            [*ITSUP, "--root", str(root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for args in commands
    ]
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.STORAGE, (args, err)
        assert err.startswith("itsup: error:") and f"127.0.0.1:{port}" in err
        assert "Traceback" not in out + err
        assert "do-not-print-this-1234" not in out + err
    last = state(root)["last"]
    assert last["verify"]["exit_code"] == ExitCode.STORAGE
    assert last["drill"]["exit_code"] == ExitCode.STORAGE
