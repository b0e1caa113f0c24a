"""Processes that die: `itsup backup` and `itsup restore` killed (SIGKILL) or stopped
(SIGINT, SIGTERM) at many points of a run, on the local target and the real S3 server.

The guarantees checked after every kill:

- backup: no generation is offered for restore that did not finish (one whose
  manifest was written before the kill is complete, and must verify and
  restore exactly); the host lock is free (the kernel dropped the dead
  owner's flock); the next `itsup backup` succeeds with no manual cleanup and
  leaves no multipart upload or `.partial-` file behind.
- restore: every path at the destination is either as it was or as restored,
  never missing or half-written; the next restore removes what the killed one
  left and succeeds.
- SIGINT and SIGTERM: exit 130, no traceback, the same guarantees, and a
  restore stopped in the middle of moving files into place puts every path
  back as it was.

Kill points are spread over a normal run's duration (measured first) with a
seeded random offset in each slice; a failure names its point. SIGINT and
SIGTERM are sent once itsup has installed its handlers (seen in
/proc/PID/status): before that, while Python starts and imports, the
default actions apply and nothing has been written yet. A signal that lands
while Python exits after itsup's main() returned also meets the default
action (Python restores it on its way out); the tests accept that only when
the run's work is verifiably complete. A run that hangs after a signal fails
the test with the stack of every thread (faulthandler, SIGABRT).

The restore side is also hit at exact points: a helper process runs the
restore with a signal sent to itself at the Nth rename or link of the swap.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    STAGING_MARK,
    MiB,
    Store,
    dead_pid,
    generations,
    itsup,
    leftovers,
    read_index,
    s3_config,
    setup_host,
    start_itsup,
    tree_state,
    write_config,
)
from reliability import record

from itsup.errors import ExitCode
from itsup.lock import host_lock

pytestmark = pytest.mark.faults

INTERRUPTED = int(ExitCode.INTERRUPTED)
SEED = 20260515
KILL_POINTS = 12  # SIGKILL points per target for a backup, spread over 2%..98% of a run
SIGNAL_POINTS = 2  # SIGINT and SIGTERM points each, per target, for a backup
RESTORE_POINTS = 4  # SIGKILL points per target for a restore
COMPLETE = ("complete", "partial")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


# -- running and stopping itsup -------------------------------------------------------


def start(root: Path, *args: str | Path) -> subprocess.Popen[str]:
    # PYTHONFAULTHANDLER: SIGABRT dumps every thread's stack (see `finish`)
    return start_itsup(root, *args, env={"PYTHONFAULTHANDLER": "1"}, preexec_fn=default_sigint)


def default_sigint() -> None:
    """A shell without job control starts background jobs with SIGINT ignored, and
    Python then leaves it ignored: give the child the default, as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def handlers_installed(pid: int) -> bool:
    """Has itsup installed its SIGTERM handler (so SIGINT/SIGTERM become exit 130)?"""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


def wait_for_handlers(proc: subprocess.Popen[str], timeout: float = 30) -> bool:
    """True once the handlers are in; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if handlers_installed(proc.pid):
            return True
        time.sleep(0.001)
    proc.kill()
    proc.communicate()
    pytest.fail("itsup did not install its signal handlers within 30 s")


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 60) -> str:
    """Wait for the process; a hang fails the test with the stack of every thread."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate()
        pytest.fail(f"{what}: still running after {timeout:.0f} s; its threads:\n{err[-8000:]}")


@dataclass
class Timing:
    total: float  # spawn to exit
    ready: float  # spawn to handlers installed


def timed_run(root: Path, *args: str | Path) -> Timing:
    began = time.monotonic()
    proc = start(root, *args)
    wait_for_handlers(proc)
    ready = time.monotonic() - began
    err = finish(proc, f"itsup {' '.join(map(str, args))}")
    assert proc.returncode == 0, err
    return Timing(time.monotonic() - began, ready)


def calibrate(root: Path, *args: str | Path, runs: int = 2) -> Timing:
    timings = [timed_run(root, *args) for _ in range(runs)]
    return Timing(
        statistics.median(t.total for t in timings), statistics.median(t.ready for t in timings)
    )


def spread(rng: random.Random, n: int, lo: float = 0.02, hi: float = 0.98) -> list[float]:
    """`n` fractions of a run between `lo` and `hi`: one at a random place in each slice."""
    width = (hi - lo) / n
    return [lo + width * (i + rng.random()) for i in range(n)]


@dataclass
class Stopped:
    code: int
    err: str
    before_signal: bool = False  # the run had ended before the signal was sent
    at_exit: bool = False  # it came while Python was exiting, after the run had finished


def stop_at(
    root: Path, args: tuple[str | Path, ...], sig: signal.Signals, delay: float, ready: bool
) -> Stopped:
    """Start `itsup ARGS`, wait `delay` s (from spawn, or from `ready` handlers), send `sig`."""
    proc = start(root, *args)
    if ready:
        wait_for_handlers(proc)
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(sig)
    what = f"{sig.name} after {delay:.3f} s"
    err = finish(proc, what)
    assert "Traceback" not in err, f"{what}:\n{err}"
    if finished or proc.returncode == 0:  # it had exited before the signal reached it
        assert proc.returncode == 0, err
        return Stopped(0, err, before_signal=True)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, err
        return Stopped(proc.returncode, err)
    if proc.returncode == -sig and err == "":
        # The signal came as the process exited, after itsup's main() had returned
        # (Python restores the default actions on its way out): the caller checks
        # that the run's work was indeed all done.
        return Stopped(proc.returncode, err, at_exit=True)
    assert proc.returncode == INTERRUPTED, f"{what}: exit {proc.returncode}\n{err}"
    assert "itsup: " in err and ("interrupted" in err or sig.name in err), err
    return Stopped(proc.returncode, err)


# -- backups --------------------------------------------------------------------------


@dataclass
class Seen:
    """Generations on the target before a stopped run: complete and incomplete ones."""

    complete: set[str]
    incomplete: set[str]


@dataclass
class BackupBench:
    store: Store
    timing: Timing  # of a normal run
    seen: Seen


def make_bench(folder: Path, kind: str, request: pytest.FixtureRequest) -> BackupBench:
    """A host of a few MB; on S3 with 5 MiB parts, so the archive is a multipart upload."""
    server = request.getfixturevalue("s3_server") if kind == "s3" else None
    prefix = f"t/crash-backup-{kind}-{os.getpid()}/"
    store = setup_host(folder / "host", kind, server, prefix)
    if kind == "s3":
        assert server is not None
        options = "    part_size_mb: 5\n  include_volumes: true\n"
        write_config(store.root, s3_config(server, prefix, options))
    rng = random.Random(SEED)
    for i in range(3):
        path = store.root / f"upstream/app/volumes/data/blob-{i}.bin"
        path.write_bytes(rng.randbytes(3 * MiB))
    timing = calibrate(store.root, "backup")
    rows = generations(store.root)
    seen = Seen(
        {r["name"] for r in rows if r["status"] in COMPLETE},
        {r["name"] for r in rows if r["status"] == "incomplete"},
    )
    return BackupBench(store, timing, seen)


@pytest.fixture(scope="module")
def benches(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[[str], BackupBench]:
    """One host per target for all the backup tests of this module (made on first use)."""
    made: dict[str, BackupBench] = {}

    def get(kind: str) -> BackupBench:
        if kind not in made:
            made[kind] = make_bench(tmp_path_factory.mktemp(f"crash-{kind}"), kind, request)
        return made[kind]

    return get


def unfinished_uploads(store: Store) -> list[str]:
    if store.kind == "s3":
        return [str(u["Key"]) for u in store.multipart_uploads()]
    return [n for n in store.names() if ".partial-" in n]


def stored_generations(store: Store) -> set[str]:
    """Generations with a manifest, read straight from the storage."""
    return {n.removesuffix(".manifest.json") for n in store.names() if n.endswith(".manifest.json")}


def assert_restores_exactly(store: Store, name: str) -> None:
    """verify (every file re-hashed) passes, and the index is the tree, path by path."""
    itsup(store.root, "backup", "verify", name, "--read-data-subset", "100")
    index = read_index(store, name)
    tree = tree_state(store.root)
    assert sorted(index) == sorted(tree), f"{name}: the index does not list the tree"
    for path, entry in index.items():
        kind, mode, uid, gid, mtime_ns, *rest = tree[path]
        assert (entry["type"], entry["mode"], entry["uid"], entry["gid"]) == (kind, mode, uid, gid)
        if kind == "file":
            assert (entry["mtime_ns"], entry["size"], entry["sha256"]) == (mtime_ns, *rest), path


def ended_in_log(root: Path, generation: str) -> bool:
    """Did the run that wrote `generation` log its successful end?"""
    log = (root / "logs/backup.log").read_text(errors="replace")
    return any(
        "event=end" in line and f"generation={generation}" in line and " exit=0" in line
        for line in log.splitlines()
    )


def check_backup_after(bench: BackupBench, stopped: Stopped, label: str) -> str:
    """The guarantees after a backup was stopped; returns the outcome in words."""
    store, seen = bench.store, bench.seen
    root = store.root
    rows = generations(root)  # `backup list --json`, as an operator would look
    offered = {r["name"] for r in rows if r["status"] in COMPLETE}
    new = offered - seen.complete
    assert len(new) <= 1, f"{label}: more than one new generation: {new}"
    assert seen.complete <= offered, f"{label}: a generation that was complete is gone"
    assert all(r["status"] in (*COMPLETE, "incomplete") for r in rows), rows
    if stopped.before_signal or stopped.at_exit:
        assert len(new) == 1, f"{label}: the run ended, but no new complete generation"
    if stopped.at_exit:
        assert ended_in_log(root, next(iter(new))), f"{label}: killed before it finished"
    if new:  # its manifest was written before the kill: it must be whole
        assert_restores_exactly(store, next(iter(new)))
    with host_lock(root / ".itsup-backup.lock"):  # LockedError if the dead run held it
        pass
    leftover = unfinished_uploads(store)
    incomplete = {r["name"] for r in rows if r["status"] == "incomplete"}
    new_incomplete = incomplete - seen.incomplete
    seen.incomplete |= incomplete

    itsup(root, "backup")  # no manual cleanup
    assert unfinished_uploads(store) == [], f"{label}: the next run left an unfinished upload"
    after = stored_generations(store)
    assert len(after - seen.complete - new) == 1, f"{label}: the next run made no generation"
    seen.complete |= after

    if stopped.before_signal:
        return "finished before the signal; next run ok"
    if stopped.at_exit:
        return (
            "signal came as Python exited after a finished run: default action (exit "
            f"{stopped.code}), generation complete and verified; next run ok"
        )
    if new:
        return "stopped after its manifest: complete, verified, restores exactly; next run ok"
    if leftover:
        return "unfinished upload, nothing offered; next run discarded it and succeeded"
    if new_incomplete:
        return "archive without manifest: listed incomplete, not offered; next run ok"
    return "nothing left behind, nothing offered; next run ok"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_backup_sigkill_at_many_points(kind: str, benches: Callable[[str], BackupBench]) -> None:
    bench = benches(kind)
    total = bench.timing.total
    rng = random.Random(f"{SEED}-kill-{kind}")
    for fraction in spread(rng, KILL_POINTS):
        delay = fraction * total
        label = f"SIGKILL at {fraction:.0%} ({delay:.3f} s of {total:.3f} s)"
        stopped = stop_at(bench.store.root, ("backup",), signal.SIGKILL, delay, ready=False)
        outcome = check_backup_after(bench, stopped, label)
        record("process", f"backup SIGKILL at 2-98% of a run ({kind})", outcome)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_backup_sigint_sigterm_exit_130(kind: str, benches: Callable[[str], BackupBench]) -> None:
    bench = benches(kind)
    working = bench.timing.total - bench.timing.ready  # from the handlers to the end
    rng = random.Random(f"{SEED}-signals-{kind}")
    for name in ("SIGINT", "SIGTERM"):
        for fraction in spread(rng, SIGNAL_POINTS, 0.05, 0.95):
            label = f"{name} at {fraction:.0%} of the run after start-up"
            delay = fraction * working
            stopped = stop_at(bench.store.root, ("backup",), SIGNALS[name], delay, ready=True)
            outcome = check_backup_after(bench, stopped, label)
            if not (stopped.before_signal or stopped.at_exit):
                outcome = "exit 130; " + outcome
            record("process", f"backup {name} ({kind})", outcome)


# -- restores -------------------------------------------------------------------------


def write_old(root: Path) -> None:
    """The tree as the older generation holds it: many small files, a few type changes."""
    rng = random.Random(1)
    small = root / "upstream/app/volumes/data/small"
    small.mkdir(parents=True)
    for i in range(200):
        (small / f"f{i:03}.txt").write_bytes(rng.randbytes(rng.randrange(100, 4000)))
    (root / "upstream/app/volumes/data/large.bin").write_bytes(rng.randbytes(2 * MiB))
    (root / "upstream/app/settings").write_text("a file, later a folder\n")
    certs = root / "proxy/traefik/certs"
    certs.mkdir()
    (certs / "a.pem").write_text("a\n")
    (certs / "b.pem").write_text("b\n")
    (root / "proxy/traefik/current.yml").write_text("a file, later a symlink\n")
    (root / "upstream/blog/latest").symlink_to("docker-compose.yml")


def write_new(root: Path) -> None:
    """The newer tree: half the small files and acme.json changed, paths added, types changed."""
    rng = random.Random(2)
    small = root / "upstream/app/volumes/data/small"
    for i in range(0, 200, 2):
        (small / f"f{i:03}.txt").write_bytes(rng.randbytes(rng.randrange(100, 4000)))
    for i in range(200, 260):
        (small / f"f{i:03}.txt").write_bytes(rng.randbytes(500))
    (root / "upstream/app/volumes/data/large.bin").write_bytes(rng.randbytes(2 * MiB))
    (root / "proxy/traefik/acme.json").write_text('{"letsencrypt": {"renewed": true}}\n')
    (root / "upstream/app/settings").unlink()
    (root / "upstream/app/settings").mkdir()
    (root / "upstream/app/settings/app.ini").write_text("[app]\n")
    shutil.rmtree(root / "proxy/traefik/certs")
    (root / "proxy/traefik/certs").write_text("a file, once a folder\n")
    (root / "proxy/traefik/current.yml").unlink()
    (root / "proxy/traefik/current.yml").symlink_to("traefik.yml")
    (root / "upstream/blog/latest").unlink()
    (root / "upstream/blog/latest").write_text("a file, once a symlink\n")
    (root / "upstream/new-project/volumes").mkdir(parents=True)
    (root / "upstream/new-project/docker-compose.yml").write_text("services: {}\n")


State = dict[str, tuple[Any, ...]]


@dataclass
class RestoreWorld:
    store: Store
    older: str
    newer: str
    template: Path  # the destination as it was: the older generation, restored
    before: State
    after: State  # the same destination once the newer generation is restored

    def fresh_dest(self, name: str) -> Path:
        """A copy of the destination as it was, in a folder of its own."""
        dest = self.template.parent / name
        n = 1
        while dest.exists():
            n += 1
            dest = self.template.parent / f"{name}-{n}"
        shutil.copytree(self.template, dest, symlinks=True)
        assert tree_state(dest) == self.before
        return dest


def make_world(folder: Path, kind: str, request: pytest.FixtureRequest) -> RestoreWorld:
    server = request.getfixturevalue("s3_server") if kind == "s3" else None
    store = setup_host(folder / "host", kind, server, f"t/crash-restore-{kind}-{os.getpid()}/")
    root = store.root
    write_old(root)
    itsup(root, "backup")
    write_new(root)
    itsup(root, "backup")
    newer, older = (g["name"] for g in generations(root))
    template = folder / "dests" / "template"
    itsup(root, "restore", "all", "--from", older, "--to", template)
    ref = folder / "dests" / "reference"
    shutil.copytree(template, ref, symlinks=True)
    itsup(root, "restore", "all", "--from", newer, "--to", ref, "--yes")
    world = RestoreWorld(store, older, newer, template, tree_state(template), tree_state(ref))
    assert world.before != world.after
    return world


@pytest.fixture(scope="module")
def worlds(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[[str], RestoreWorld]:
    """One host with an older and a newer generation per target, for all restore tests."""
    made: dict[str, RestoreWorld] = {}

    def get(kind: str) -> RestoreWorld:
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"crash-restore-{kind}")
            made[kind] = make_world(folder, kind, request)
        return made[kind]

    return get


def shape(entry: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """What must be old or new: all of a file or link; a folder's type, mode and owner
    (its mtime changes whenever an entry inside it is renamed)."""
    if entry is None or entry[0] != "dir":
        return entry
    return entry[:4]


def assert_each_path_old_or_new(dest: Path, world: RestoreWorld, label: str) -> str:
    now = tree_state(dest)
    mixed = False
    for path in sorted(set(now) | set(world.before) | set(world.after)):
        got = shape(now.get(path))
        old, new = shape(world.before.get(path)), shape(world.after.get(path))
        assert got in (old, new), (
            f"{label}: {path} is neither as it was nor as restored: {got} (old {old}, new {new})"
        )
        mixed = mixed or (old != new and got == new)
    if now == world.before:
        return "as it was"
    if now == world.after:
        return "fully restored"
    return "partly restored, each path old or new" if mixed else "as it was"


def rerun_restore(world: RestoreWorld, dest: Path, label: str) -> None:
    itsup(world.store.root, "restore", "all", "--to", dest, "--yes")
    assert tree_state(dest) == world.after, f"{label}: the next restore did not finish the job"
    assert leftovers(dest) == [], f"{label}: the next restore left staging folders"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_restore_sigkill_at_many_points(kind: str, worlds: Callable[[str], RestoreWorld]) -> None:
    world = worlds(kind)
    root = world.store.root
    args: tuple[str | Path, ...]
    probe = world.fresh_dest("probe")
    timing = calibrate(root, "restore", "all", "--to", probe, "--yes", runs=1)
    rng = random.Random(f"{SEED}-restore-{kind}")
    for i, fraction in enumerate(spread(rng, RESTORE_POINTS)):
        dest = world.fresh_dest(f"kill-{i}")
        delay = fraction * timing.total
        label = f"restore SIGKILL at {fraction:.0%} ({delay:.3f} s)"
        args = ("restore", "all", "--to", dest, "--yes")
        stopped = stop_at(root, args, signal.SIGKILL, delay, ready=False)
        state = assert_each_path_old_or_new(dest, world, label)
        staged = bool(leftovers(dest))
        rerun_restore(world, dest, label)
        if stopped.before_signal:
            outcome = "finished before the kill"
        else:
            outcome = f"destination {state}" + (", staging left" if staged else "")
            outcome += "; next restore cleaned up and succeeded"
        record("process", f"restore SIGKILL at 2-98% of a run ({kind})", outcome)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_restore_sigint_sigterm_exit_130(kind: str, worlds: Callable[[str], RestoreWorld]) -> None:
    world = worlds(kind)
    root = world.store.root
    probe = world.fresh_dest("probe")
    timing = calibrate(root, "restore", "all", "--to", probe, "--yes", runs=1)
    working = timing.total - timing.ready
    rng = random.Random(f"{SEED}-restore-signals-{kind}")
    for name in ("SIGINT", "SIGTERM"):
        for i, fraction in enumerate(spread(rng, 1, 0.05, 0.95)):
            dest = world.fresh_dest(f"{name}-{i}")
            label = f"restore {name} at {fraction:.0%} of the run after start-up"
            args = ("restore", "all", "--to", dest, "--yes")
            stopped = stop_at(root, args, SIGNALS[name], fraction * working, ready=True)
            now = tree_state(dest)
            if not stopped.before_signal:  # rolled back whole, or stopped after the swap
                assert now in (world.before, world.after), f"{label}: half restored"
                assert leftovers(dest) == [], f"{label}: staging folders left behind"
            if stopped.at_exit:
                assert now == world.after, f"{label}: killed before the restore finished"
            rerun_restore(world, dest, label)
            if stopped.before_signal:
                outcome = "finished before the signal"
            elif stopped.at_exit:
                outcome = (
                    "signal came as Python exited after a finished restore: default action "
                    f"(exit {stopped.code}), fully restored"
                )
            else:
                state = "as it was" if now == world.before else "fully restored"
                outcome = f"exit 130, destination {state}, no leftovers; next restore ok"
            record("process", f"restore {name} ({kind})", outcome)


# Runs `itsup restore` with a signal sent to itself at the Nth step of the swap (the
# renames and links that move staged paths into place): a kill at an exact point
# of the only phase that touches the destination.
AT_SWAP_STEP = r"""
import os, signal, sys, types
import itsup.actions.restore as restore
from itsup.cli.main import main

at, how = int(sys.argv[1]), signal.Signals[sys.argv[2]]
count, active = 0, False

def step(fn):
    def wrapper(*args, **kw):
        global count
        if active:
            count += 1
            if count == at:
                os.kill(os.getpid(), how)
        return fn(*args, **kw)
    return wrapper

spy = types.ModuleType("os")
spy.__dict__.update(os.__dict__)
spy.rename, spy.link = step(os.rename), step(os.link)
restore.os = spy
restore.exchange = step(restore.exchange)
real_swap = restore.swap_into_place

def swap(*args, **kw):
    global active
    active = True
    try:
        return real_swap(*args, **kw)
    finally:
        active = False

restore.swap_into_place = swap
try:
    code = main(sys.argv[3:])
finally:
    sys.stderr.write(f"swap-steps={count}\n")
sys.exit(code)
"""


def restore_at_step(world: RestoreWorld, dest: Path, at: int, how: str) -> tuple[int, str]:
    root = world.store.root
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    args = ["--root", str(root), "restore", "all", "--to", str(dest), "--yes"]
    proc = subprocess.run(
        [sys.executable, "-c", AT_SWAP_STEP, str(at), how, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=default_sigint,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stderr


def swap_steps(world: RestoreWorld) -> int:
    code, err = restore_at_step(world, world.fresh_dest("count-steps"), 0, "SIGKILL")
    assert code == 0, err
    steps = int(err.rsplit("swap-steps=", 1)[1].split()[0])
    assert steps > 50, f"the swap should take many steps: {steps}"
    return steps


@pytest.fixture
def local_world(worlds: Callable[[str], RestoreWorld]) -> RestoreWorld:
    return worlds("local")


def test_restore_killed_at_every_kind_of_swap_step(local_world: RestoreWorld) -> None:
    world = local_world
    steps = swap_steps(world)
    rng = random.Random(f"{SEED}-swap")
    chosen = sorted({1, steps, *rng.sample(range(2, steps), 4)})
    for at in chosen:
        dest = world.fresh_dest(f"swap-kill-{at}")
        label = f"SIGKILL at swap step {at} of {steps}"
        code, err = restore_at_step(world, dest, at, "SIGKILL")
        assert code == -signal.SIGKILL, f"{label}: exit {code}\n{err}"
        state = assert_each_path_old_or_new(dest, world, label)
        assert [n for n in leftovers(dest) if not n.endswith(".old")], "staging is kept"
        rerun_restore(world, dest, label)
        record(
            "process",
            "restore SIGKILL inside the swap (exact step)",
            f"destination {state}; next restore cleaned up and succeeded",
        )


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_restore_stopped_inside_the_swap_rolls_back(local_world: RestoreWorld, how: str) -> None:
    world = local_world
    steps = swap_steps(world)
    for at in (1, steps // 2, steps):
        dest = world.fresh_dest(f"swap-{how}-{at}")
        label = f"{how} at swap step {at} of {steps}"
        code, err = restore_at_step(world, dest, at, how)
        assert code == INTERRUPTED, f"{label}: exit {code}\n{err}"
        assert tree_state(dest) == world.before, f"{label}: not rolled back"
        assert leftovers(dest) == [], f"{label}: staging folders left behind"
        rerun_restore(world, dest, label)
        record(
            "process",
            f"restore {how} inside the swap (exact step)",
            "exit 130, every path put back as it was, no leftovers",
        )


def test_next_restore_puts_back_a_path_a_killed_restore_had_set_aside(
    local_world: RestoreWorld,
) -> None:
    """Where a path cannot be replaced in one step (no hard links, no RENAME_EXCHANGE),
    it is set aside before its replacement moves in; a kill between the two leaves
    the old path only in the set-aside folder. The next restore, of anything, must
    put it back before it deletes that folder."""
    world = local_world
    dest = world.fresh_dest("set-aside")
    dead = dead_pid()
    aside = dest / f"{STAGING_MARK}{dead}-0badc0de.old"
    acme = "proxy/traefik/acme.json"
    (aside / "proxy/traefik").mkdir(parents=True)
    os.rename(dest / acme, aside / acme)  # the state the kill left
    (dest / f"{STAGING_MARK}{dead}-0badc0de").mkdir()
    res = itsup(world.store.root, "restore", "blog", "--to", dest, "--yes")
    assert "put back 1 path" in res.err, res.err
    assert tree_state(dest)[acme] == world.before[acme]
    assert leftovers(dest) == []
    record("process", "restore killed between set-aside and move-in", "next restore put it back")
