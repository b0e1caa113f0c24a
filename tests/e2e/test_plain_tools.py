"""The spec's own procedures: a backup restores with nothing but a download and tar.

An unencrypted generation is a standard .tar.gz that `gzip -t`, `tar -tzf` and
`tar -xzf` accept, downloaded with boto3 the way `aws s3 cp` does; an
encrypted one opens with the Debian `age` binary piped into tar. These use
the real binaries; a missing one fails the test.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pyrage
from helpers import (
    ACME,
    HostFactory,
    generations,
    itsup,
    setup_host,
    tree_state,
)

from itsup.errors import ExitCode


def run(cmd: list[str] | str, cwd: Path, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stderr.decode()}"
    return proc


NS = 1_000_000_000


def as_plain_tar_restores(state: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """`state` (tree_state) with the mtimes plain tar restores: the archive's headers hold
    whole seconds (rounded down; exact only before 1970 or past 2242); the exact
    nanoseconds are in the file index, which itsup's own restore applies."""
    seen = {}
    for path, (kind, *rest) in state.items():
        if kind != "special" and 0 <= rest[3] < 8**11 * NS:
            rest[3] = rest[3] // NS * NS
        seen[path] = (kind, *rest)
    return seen


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def test_unencrypted_restores_with_download_and_tar(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    (root / "proxy/traefik/current.yml").symlink_to("traefik.yml")
    (root / "upstream/app/empty").mkdir()
    os.utime(root / ACME, ns=(1_700_000_000_123_456_789,) * 2)
    before = tree_state(root)
    itsup(root, "backup")
    [gen] = generations(root)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    latest = store.fetch("latest.tar.gz", downloads / "latest.tar.gz")
    named = store.fetch(f"{gen['name']}.tar.gz", downloads / "named.tar.gz")
    assert latest.read_bytes() == named.read_bytes()

    run(["gzip", "-t", str(latest)], downloads)
    listing = run(["tar", "-tzf", str(latest)], downloads).stdout.decode().splitlines()
    assert f"{ACME}" in listing and "upstream/app/volumes/data/db.bin" in listing

    # Full system restore, step 5: extract everything in a fresh host root.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run(["tar", "-xzf", str(latest)], fresh)
    assert tree_state(fresh) == as_plain_tar_restores(before)

    # Certificate restore: one member, from an empty folder ...
    empty = tmp_path / "empty"
    empty.mkdir()
    run(["tar", "-xzf", str(latest), ACME], empty)
    assert files_below(empty) == [ACME]
    assert tree_state(empty, (ACME,)) == as_plain_tar_restores(tree_state(root, (ACME,)))
    assert stat.S_IMODE((empty / ACME).stat().st_mode) == 0o600

    # ... and in place from the host root, as the spec's procedure runs it.
    good = (root / ACME).read_bytes()
    (root / ACME).unlink()
    run(["tar", "-xzf", str(latest), ACME], root)
    assert (root / ACME).read_bytes() == good
    assert stat.S_IMODE((root / ACME).stat().st_mode) == 0o600


def _identity(path: Path) -> str:
    """Write a fresh age identity to `path` (0600); return its public recipient."""
    identity = pyrage.x25519.Identity.generate()
    path.write_text(f"# test key\n{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public())


def test_encrypted_restores_with_age_and_tar(new_host: HostFactory, tmp_path: Path) -> None:
    key = tmp_path / "age-key.txt"
    recipient = _identity(key)
    store = new_host()
    root = store.root
    itsup(root, "backup")  # before encryption was turned on
    config = root / "projects/itsup.yml"
    config.write_text(config.read_text() + f"  encryption:\n    recipients:\n      - {recipient}\n")
    (root / ACME).write_text('{"letsencrypt": {"Certificates": ["newer"]}}\n')
    before = tree_state(root)
    itsup(root, "backup")
    gen, plain = generations(root)
    assert gen["encrypted"] is True and gen["status"] == "complete"
    assert plain["encrypted"] is False

    names = store.names()
    assert "latest.tar.gz.age" in names and f"{gen['name']}.tar.gz.age" in names
    assert f"{gen['name']}.index.jsonl.gz.age" in names
    # A stale latest.tar.gz would hand the spec's `aws s3 cp latest.tar.gz` old data.
    assert "latest.tar.gz" not in names
    assert not [n for n in names if n.startswith(gen["name"]) and n.endswith(".gz")]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archive = store.fetch("latest.tar.gz.age", downloads / "backup.tar.gz.age")
    blob = archive.read_bytes()
    assert blob.startswith(b"age-encryption.org/v1\n")
    leaked = b"letsencrypt" in blob or b"acme.json" in blob
    assert not leaked, "plaintext visible in the encrypted archive"

    # The README's procedure: age -d -i KEY backup.tar.gz.age | tar -xz
    out = tmp_path / "plain"
    out.mkdir()
    pipeline = f"set -o pipefail; age -d -i '{key}' '{archive}' | tar -xz"
    run(["bash", "-c", pipeline], out)
    assert tree_state(out) == as_plain_tar_restores(before)
    run(["bash", "-c", f"set -o pipefail; age -d -i '{key}' '{archive}' | gzip -t"], out)

    # itsup's own restore, with the identity from the environment.
    env = {"ITSUP_AGE_IDENTITY": str(key)}
    itsup(root, "restore", "all", "--to", tmp_path / "itsup", env=env)
    assert tree_state(tmp_path / "itsup") == before
    (root / ACME).write_text("{damaged")
    itsup(root, "restore", "--path", ACME, "--yes", env=env)
    assert tree_state(root, (ACME,)) == {ACME: before[ACME]}


def test_encrypted_restore_needs_the_right_identity(tmp_path: Path) -> None:
    key = tmp_path / "age-key.txt"
    recipient = _identity(key)
    other = tmp_path / "other-key.txt"
    _identity(other)
    store = setup_host(
        tmp_path / "host",
        "local",
        None,
        "",
        extra=f"  encryption:\n    recipients: [{recipient}]\n",
    )
    root = store.root
    itsup(root, "backup")
    (root / ACME).write_text("{damaged")
    before = tree_state(root)
    secret = key.read_text().split()[-1]

    for env, expect, words in (
        ({"ITSUP_AGE_IDENTITY": str(other)}, ExitCode.CONFIG, "identit"),
        ({"ITSUP_AGE_IDENTITY": str(tmp_path / "missing.txt")}, ExitCode.CONFIG, "not found"),
    ):
        for args in (("all", "--to", tmp_path / "out"), ("all", "--yes")):
            res = itsup(root, "restore", *args, expect=expect, env=env)
            assert "itsup: error:" in res.err and words in res.err
            leaked = secret in res.err + res.out
            assert not leaked, "the age secret key was printed"
            assert tree_state(root) == before
            assert not (tmp_path / "out").exists()

    # The right key still works after all that.
    itsup(root, "restore", "all", "--yes", env={"ITSUP_AGE_IDENTITY": str(key)})
    assert (root / ACME).read_text().startswith('{"letsencrypt"')
