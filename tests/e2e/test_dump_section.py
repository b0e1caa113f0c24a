"""A generation's database dumps start a section of their own in the archive.

From `dumps_offset` (in the manifest) to its end, the archive object is a
.tar.gz (or .tar) holding only the dumps: `tail -c +N | tar -xz` takes them out
with plain tools, and `itsup restore --databases-only` reads that section alone,
checking each dump against the SHA-256 the manifest records, never the file
tree before it. An SQLite database stands in for the engine (no container).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import itsup, s3_config, s3_secrets, write_config
from s3server import S3Server

DUMP = "upstream/legacy/_backup/data_app.db.sqlite"


def sqlite_host(tmp_path: Path, extra: str = "") -> tuple[Path, Path, Path]:
    """A host whose project `legacy` has an SQLite database and some files; the store."""
    root, store = tmp_path / "host", tmp_path / "store"
    write_config(root, f"backup:\n  local:\n    path: {store}\n    prefix: ''\n{extra}")
    project = root / "upstream" / "legacy"
    (project / "data").mkdir(parents=True)
    (project / "docker-compose.yml").write_text("services: {}\n")
    for i in range(40):  # a tree ahead of the dumps, larger than a gzip block
        (project / f"file{i:02d}.log").write_bytes(b"GET /health 200 %d\n" % i * 2000)
    (root / "projects" / "legacy").mkdir(parents=True)
    (root / "projects" / "legacy" / "backup.yml").write_text("adapter: sqlite\npath: data/app.db\n")
    live = project / "data" / "app.db"
    with sqlite3.connect(live) as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [(f"row {i}",) for i in range(500)])
    return root, live, store


def rows(live: Path) -> list[tuple[str]]:
    with sqlite3.connect(live) as db:
        return db.execute("SELECT v FROM t ORDER BY rowid").fetchall()


def backed_up(root: Path, store: Path) -> tuple[dict, Path]:
    itsup(root, "backup")
    manifest = json.loads(next(store.glob("backup-*.manifest.json")).read_text())
    return manifest, store / manifest["archive"]["key"]


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("compression", ["true", "false"])
def test_plain_tools_take_the_dumps_out_of_their_section(tmp_path: Path, compression: str) -> None:
    root, _, store = sqlite_host(tmp_path, f"  compression: {compression}\n")
    manifest, archive = backed_up(root, store)
    offset = manifest["dumps_offset"]
    assert isinstance(offset, int) and 0 < offset < archive.stat().st_size
    [record] = manifest["dumps"]
    out = tmp_path / "out"
    out.mkdir()
    flags = "-xzf" if compression == "true" else "-xf"
    subprocess.run(
        f"tail -c +{offset + 1} {archive} | tar {flags} -", shell=True, cwd=out, check=True
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [DUMP]
    assert hashlib.sha256((out / DUMP).read_bytes()).hexdigest() == record["sha256"]
    # The whole archive is still one archive to plain tar: the tree, then the dumps.
    listed = subprocess.run(
        ["tar", flags.replace("x", "t"), str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "upstream/legacy/file00.log" in listed and listed[-1] == DUMP


def test_databases_only_reads_the_dump_section_alone(tmp_path: Path) -> None:
    """A byte flipped in the file tree before the section: the full restore refuses the
    generation, the databases-only restore never reads that part and loads the dump."""
    root, live, store = sqlite_host(tmp_path)
    before = rows(live)
    manifest, archive = backed_up(root, store)
    flip(archive, manifest["dumps_offset"] // 2)
    with sqlite3.connect(live) as db:
        db.execute("DELETE FROM t")
    res = itsup(root, "restore", "legacy", "--yes", expect=5)
    assert "does not match" in res.err or "damaged" in res.err
    assert rows(live) == []  # nothing was loaded
    itsup(root, "restore", "legacy", "--databases-only", "--yes")
    assert rows(live) == before
    assert not (root / ".itsup" / "dumps").exists()  # no plaintext copy left


def test_a_damaged_dump_section_loads_nothing(tmp_path: Path) -> None:
    root, live, store = sqlite_host(tmp_path)
    manifest, archive = backed_up(root, store)
    flip(archive, (manifest["dumps_offset"] + archive.stat().st_size) // 2)
    with sqlite3.connect(live) as db:
        db.execute("DELETE FROM t WHERE rowid > 10")
    res = itsup(root, "restore", "legacy", "--databases-only", "--yes", expect=5)
    assert manifest["generation"] in res.err
    assert "Traceback" not in res.err
    assert len(rows(live)) == 10  # left as it was
    assert not (root / ".itsup" / "dumps").exists()


def test_encrypted_archives_have_no_section_and_still_restore_their_dumps(
    tmp_path: Path,
) -> None:
    """age's chunks cannot be entered in the middle: no offset; the restore reads it whole."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(f"{identity}\n")
    extra = f"  encryption:\n    recipients: [{identity.to_public()}]\n    identity_file: {key}\n"
    root, live, store = sqlite_host(tmp_path, extra)
    before = rows(live)
    manifest, _ = backed_up(root, store)
    assert manifest["dumps_offset"] is None and manifest["dumps"]
    with sqlite3.connect(live) as db:
        db.execute("DELETE FROM t")
    itsup(root, "restore", "legacy", "--databases-only", "--yes")
    assert rows(live) == before


def test_databases_only_on_s3_fetches_the_section_with_a_ranged_read(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    """On S3: the archive object rewritten with a byte flipped in its tree (the
    manifest unchanged) fails the full restore; --databases-only, whose ranged
    GETs start at dumps_offset, loads the dump."""
    root, live, _ = sqlite_host(tmp_path)
    write_config(root, s3_config(s3_server, s3_prefix))
    s3_secrets(root, s3_server)
    before = rows(live)
    itsup(root, "backup")
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix=s3_prefix)["Contents"]
    [manifest_key] = [o["Key"] for o in listed if o["Key"].endswith(".manifest.json")]
    body = client.get_object(Bucket=s3_server.bucket, Key=manifest_key)["Body"].read()
    manifest = json.loads(body)
    key = manifest["archive"]["key"]
    data = bytearray(client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read())
    data[manifest["dumps_offset"] // 2] ^= 0xFF
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=bytes(data))
    with sqlite3.connect(live) as db:
        db.execute("DELETE FROM t")
    itsup(root, "restore", "legacy", "--yes", expect=5)
    assert rows(live) == []
    itsup(root, "restore", "legacy", "--databases-only", "--yes")
    assert rows(live) == before
