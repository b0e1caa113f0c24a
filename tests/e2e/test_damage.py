"""Damaged backups, command by command: restore, verify and drill each detect the
damage, exit 5 and name the generation; restore never changes the destination,
and uses an older generation only when asked to (`--fallback`).

The damages are what storage does to objects over time or what an operator's
slip does: an archive cut short, bytes flipped in its middle, a manifest that
is gone, a manifest whose SHA-256 no longer matches the archive, and a
generation whose objects were deleted while its manifest stayed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ACME,
    HostFactory,
    Store,
    flip_middle,
    generations,
    itsup,
    leftovers,
    read_manifest,
    setup_host,
    tree_state,
)
from reliability import record

from itsup.errors import ExitCode

pytestmark = pytest.mark.faults

DAMAGED = int(ExitCode.DAMAGED)
DAMAGES = ["truncated", "flipped", "no-manifest", "lying-manifest", "objects-deleted"]
TESTS = Path(__file__).resolve().parent.parent  # where helpers.py is

# `itsup restore` run with a spy: before each attempt (plan_restore) and after each
# failed one (run_restore), the digest of the destination's tree is appended to a
# file, so the test sees what the destination looked like *between* attempts.
SPY = r"""
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from helpers import tree_state
import itsup.actions.restore as restore
from itsup.cli.main import main

log, dest = sys.argv[2], sys.argv[3]

def digest(when):
    state = repr(sorted(tree_state(__import__("pathlib").Path(dest)).items()))
    with open(log, "a") as fh:
        fh.write(f"{when} {hashlib.sha256(state.encode()).hexdigest()}\n")

real_plan, real_run = restore.plan_restore, restore.run_restore

def plan(*args, **kw):
    digest("plan:" + ",".join(kw.get("skip") or []))
    return real_plan(*args, **kw)

def run(plan, *args, **kw):
    try:
        return real_run(plan, *args, **kw)
    except BaseException:
        digest("failed:" + plan.manifest.generation)
        raise

restore.plan_restore, restore.run_restore = plan, run
sys.exit(main(sys.argv[4:]))
"""


def digest(state: dict[str, tuple[Any, ...]]) -> str:
    return hashlib.sha256(repr(sorted(state.items())).encode()).hexdigest()


def write_version(root: Path, version: int) -> None:
    """Contents that differ per version (same paths), with fixed bytes per version."""
    rng = random.Random(version)
    (root / ACME).write_text(f'{{"letsencrypt": {{"version": {version}}}}}\n')
    for project in ("app", "blog"):
        (root / f"upstream/{project}/volumes/data/db.bin").write_bytes(rng.randbytes(150_000))


def two_generations(store: Store) -> tuple[str, str, dict[str, tuple[Any, ...]]]:
    """An older and a newer generation; the tree as the older one holds it."""
    root = store.root
    write_version(root, 1)
    itsup(root, "backup")
    old_state = tree_state(root)
    write_version(root, 2)
    itsup(root, "backup")
    newer, older = (g["name"] for g in generations(root))
    return older, newer, old_state


def damage(store: Store, gen: str, how: str) -> None:
    archive = f"{gen}.tar.gz"
    if how == "truncated":
        data = store.read(archive)
        store.write(archive, data[: len(data) // 2])
    elif how == "flipped":
        store.write(archive, flip_middle(store.read(archive)))
    elif how == "no-manifest":
        store.delete(f"{gen}.manifest.json")
    elif how == "lying-manifest":
        manifest = read_manifest(store, gen)
        real = manifest["archive"]["sha256"]
        manifest["archive"]["sha256"] = hashlib.sha256(real.encode()).hexdigest()
        store.write(f"{gen}.manifest.json", json.dumps(manifest, indent=2).encode())
    elif how == "objects-deleted":
        store.delete(archive)
        store.delete(f"{gen}.index.jsonl.gz")
    else:  # pragma: no cover - a typo in the parameters
        raise AssertionError(how)


def disaster(root: Path) -> None:
    """Since the backups, the live tree lost things: a restore has work to do."""
    (root / ACME).write_text("{lost}")
    (root / "upstream/app/docker-compose.yml").unlink()


def spied_restore(root: Path, log: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    return subprocess.run(
        [sys.executable, "-c", SPY, str(TESTS), str(log), str(root), "--root", str(root), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


@pytest.mark.parametrize("how", DAMAGES)
def test_damage_is_detected_by_every_command(
    new_host: HostFactory, how: str, tmp_path: Path
) -> None:
    store = new_host()
    root = store.root
    older, newer, old_state = two_generations(store)
    damage(store, newer, how)
    disaster(root)
    before = tree_state(root)
    # With its manifest gone the newer generation is not complete: nothing picks it by
    # default (documented), so each command is pointed at it by name.
    named = how == "no-manifest"

    # restore: refused whole, the destination as it was, nothing older used instead
    args = ["restore", "all", "--yes"] + (["--from", newer] if named else [])
    res = itsup(root, *args, expect=DAMAGED)
    assert res.err.startswith("itsup: error:"), res.err
    assert newer in res.err, res.err
    assert older not in res.err, "without --fallback no other generation is tried"
    assert tree_state(root) == before, "a damaged generation changed the destination"
    assert leftovers(root) == []
    record("damage", f"{how}: restore", "refused (exit 5, generation named), destination unchanged")

    # verify: detected, named
    args = ["backup", "verify"] + ([newer] if named else [])
    res = itsup(root, *args, expect=DAMAGED)
    assert newer in res.err and "FAILED" in res.err, res.err
    record("damage", f"{how}: backup verify", "detected (exit 5, generation named)")

    # drill: detected, named; the live tree is not its destination
    args = ["backup", "drill", "--no-git"] + (["--generation", newer] if named else [])
    res = itsup(root, *args, expect=DAMAGED)
    assert newer in res.err, res.err
    assert tree_state(root) == before
    record("damage", f"{how}: backup drill", "detected (exit 5, generation named)")

    # --fallback: the damaged one is skipped, said so, and never touched the destination
    spy = tmp_path / f"spy-{store.kind}.log"
    fell = spied_restore(root, spy, "restore", "all", "--yes", "--fallback")
    assert fell.returncode == 0, fell.stderr
    no_traceback(fell.stderr)
    assert newer in fell.stderr, f"the skipped generation must be named:\n{fell.stderr}"
    if not named:
        assert f"skipped {newer}" in fell.stderr and f"restored {older}" in fell.stderr, fell.stderr
    else:  # not complete, so never a candidate; the restore still says it passed it over
        assert "passing over" in fell.stderr, fell.stderr
    snapshots = spy.read_text().split()
    states = snapshots[1::2]
    assert states, "the spy saw no attempt"
    assert set(states) == {digest(before)}, (
        f"the destination changed between attempts:\n{spy.read_text()}"
    )
    if not named:
        assert snapshots[0] == "plan:" and f"plan:{newer}" in snapshots, snapshots
    assert tree_state(root) == old_state, "the fallback did not restore the older generation"
    assert leftovers(root) == []
    record(
        "damage",
        f"{how}: restore --fallback",
        "incomplete one passed over (warned), older one restored exactly"
        if named
        else "damaged one skipped and named, older one restored exactly",
    )


def test_fallback_with_every_generation_damaged_exits_5(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    older, newer, _ = two_generations(store)
    damage(store, newer, "flipped")
    damage(store, older, "objects-deleted")
    disaster(root)
    before = tree_state(root)
    res = itsup(root, "restore", "all", "--yes", "--fallback", expect=DAMAGED)
    assert f"skipped {newer}" in res.err and f"skipped {older}" in res.err, res.err
    assert "no complete generation could be restored" in res.err, res.err
    assert tree_state(root) == before
    assert leftovers(root) == []
    record(
        "damage", "every generation damaged: restore --fallback", "exit 5, each named, unchanged"
    )


def test_fallback_is_never_combined_with_from(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    older, newer, _ = two_generations(store)
    damage(store, newer, "flipped")
    disaster(root)
    before = tree_state(root)
    for name in (newer, older):
        res = itsup(root, "restore", "all", "--yes", "--from", name, "--fallback", expect=2)
        assert "--fallback" in res.err and "--from" in res.err, res.err
        assert tree_state(root) == before
    # The named damaged generation alone: refused, never replaced by the older one.
    res = itsup(root, "restore", "all", "--yes", "--from", newer, expect=DAMAGED)
    assert newer in res.err
    assert tree_state(root) == before
    record("damage", "restore --from NAME --fallback", "usage error (exit 2), nothing touched")


def test_fallback_on_intact_backups_restores_the_newest_quietly(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    two_generations(store)
    newest_state = tree_state(root)
    disaster(root)
    res = itsup(root, "restore", "all", "--yes", "--fallback")
    assert res.err == "", res.err
    assert tree_state(root) == newest_state
    # The dry run says what it would restore; with damage, which one it falls back to.
    [newer, older] = [g["name"] for g in generations(root)]
    damage(store, newer, "objects-deleted")
    res = itsup(root, "restore", "all", "--dry-run", "--fallback")
    assert f"skipped {newer}" in res.err and f"would restore {older}" in res.err, res.err
    assert tree_state(root) == newest_state
    help_text = itsup(root, "restore", "--help").out
    assert "--fallback" in help_text and "--from" in help_text
