"""Move a staged tree into place, each path in one atomic step, or not at all.

The restore's last phase, and the only one that touches the destination
(docs/design.md, "The restore pipeline", step 4). It knows paths, not
archives: a staging folder holding the new tree, the destination, and a
set-aside folder beside them for what is replaced. Every step is written
to a journal before it is taken and undone in reverse on any error or
signal, so a swap stopped at any instant leaves every path either as it
was or as staged. What a killed swap left is cleared by `remove_leftovers`.

Staging and set-aside folders are named `.itsup-restore-PID-TOKEN` and
`.itsup-restore-PID-TOKEN.old`, so the next restore knows whether their
owner still runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat as st_mod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The restore's logger: these records are part of what a restore reports.
log = logging.getLogger("itsup.restore")
STAGING_MARK = ".itsup-restore-"
ASIDE_SUFFIX = ".old"

# renameat2(2)'s RENAME_EXCHANGE swaps two paths in one step; None where libc lacks it.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap `a` and `b` (both must exist); False where that is not supported."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


@dataclass(frozen=True)
class Steps:
    """The calls by which a swap changes the destination: each call is one step.

    Replaceable, so a test can stop or fail a swap at an exact step.
    """

    rename: Callable[..., None] = os.rename
    link: Callable[..., None] = os.link
    exchange: Callable[[Path, Path], bool] = exchange


def swap_into_place(
    staging: Path,
    dest: Path,
    aside: Path,
    takes_metadata: Callable[[str], bool],
    steps: Steps | None = None,
) -> None:
    """Move the paths staged in `staging` into `dest`; undo every step on failure.

    Each path changes in one atomic step, so a process killed at any point
    leaves every path either as it was or as restored, never missing or half
    written: a missing path is moved in whole; a file over a file is renamed
    over it (the old one kept as a hard link in `aside` for the rollback); a
    folder over a file, or the reverse, is swapped with
    renameat2(RENAME_EXCHANGE). Folders on both sides are merged, and take
    the staged folder's mode, owner and mtime where `takes_metadata(path)`
    says so (folders above what is restored keep theirs). Only where neither
    hard links nor RENAME_EXCHANGE work is the old path first moved to
    `aside`, then the new one moved in; a swap killed between the two leaves
    the old path in `aside`, and `remove_leftovers` puts it back.
    """
    swap = _Swap(staging, dest, aside, takes_metadata, steps or Steps())
    try:
        for top in sorted(os.listdir(staging)):
            swap.visit(top)
    except BaseException:
        swap.roll_back()
        raise
    for step, rel, _ in swap.journal:
        if step != "in":
            log.debug("replaced %s", rel)


class _Swap:
    """One swap's state: the journal of its steps and the folders it merged."""

    def __init__(
        self,
        staging: Path,
        dest: Path,
        aside: Path,
        takes_metadata: Callable[[str], bool],
        steps: Steps,
    ) -> None:
        self.staging, self.dest, self.aside = staging, dest, aside
        self.takes_metadata = takes_metadata
        self.steps = steps
        # (step, relative path, inode of the old path), undone in reverse. Each step
        # is written down *before* it is taken, so a signal landing between a rename
        # and its entry cannot leave a change the rollback does not know about;
        # undoing a step that was not taken is harmless (a missing path, or a rename
        # between two links of one file, which does nothing).
        self.journal: list[tuple[str, str, int]] = []
        self.merged: list[tuple[str, os.stat_result]] = []  # with their metadata before

    def visit(self, rel: str) -> None:
        src, dst = self.staging / rel, self.dest / rel
        src_is_dir = src.is_dir() and not src.is_symlink()
        if not os.path.lexists(dst):
            self.move_in(rel)
            return
        dst_is_dir = dst.is_dir() and not dst.is_symlink()
        if src_is_dir and dst_is_dir:
            self.merge(rel)
            return
        if not src_is_dir and not dst_is_dir and self.replace(rel):
            return
        if self.exchange(rel):
            return
        self.set_aside(rel)
        self.move_in(rel)

    def merge(self, rel: str) -> None:
        src, dst = self.staging / rel, self.dest / rel
        self.merged.append((rel, os.lstat(dst)))
        st = os.lstat(src)  # before moving children out changes its mtime
        for child in sorted(os.listdir(src)):
            self.visit(f"{rel}/{child}")
        if self.takes_metadata(rel):
            os.chmod(dst, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                with contextlib.suppress(PermissionError):
                    os.chown(dst, st.st_uid, st.st_gid)
            os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))

    def move_in(self, rel: str) -> None:
        self.journal.append(("in", rel, 0))
        self.steps.rename(self.staging / rel, self.dest / rel)

    def set_aside(self, rel: str) -> None:
        (self.aside / rel).parent.mkdir(parents=True, exist_ok=True)
        self.journal.append(("aside", rel, 0))
        self.steps.rename(self.dest / rel, self.aside / rel)

    def replace(self, rel: str) -> bool:
        (self.aside / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.steps.link(self.dest / rel, self.aside / rel, follow_symlinks=False)
        except OSError:  # no hard links here (or not allowed): the two-step way
            return False
        self.journal.append(("over", rel, 0))
        self.steps.rename(self.staging / rel, self.dest / rel)
        return True

    def exchange(self, rel: str) -> bool:
        old = os.lstat(self.dest / rel).st_ino
        self.journal.append(("exchanged", rel, old))
        if self.steps.exchange(self.staging / rel, self.dest / rel):
            return True
        self.journal.pop()
        return False

    def roll_back(self) -> None:
        """Undo every step in reverse, then give merged folders their metadata back."""
        for step, rel, old in reversed(self.journal):
            with contextlib.suppress(OSError):
                self.undo(step, rel, old)
        for rel, st in reversed(self.merged):  # last: undoing the steps changed their mtimes
            with contextlib.suppress(OSError):
                if os.geteuid() == 0:
                    os.chown(self.dest / rel, st.st_uid, st.st_gid)
                os.chmod(self.dest / rel, st.st_mode & 0o7777)
                os.utime(self.dest / rel, ns=(st.st_atime_ns, st.st_mtime_ns))

    def undo(self, step: str, rel: str, old: int) -> None:
        staged, there = self.staging / rel, self.dest / rel
        if step == "in":
            if not os.path.lexists(staged):
                self.steps.rename(there, staged)
        elif step in ("aside", "over"):
            self.steps.rename(self.aside / rel, there)
        elif os.lstat(there).st_ino != old:  # exchanged: swap back if it was done
            self.steps.exchange(staged, there)


def remove_leftovers(dest: Path) -> None:
    """Clear what restores that were killed left in `dest` (their process is gone).

    A killed restore leaves its staging folder and its set-aside folder. A path
    set aside whose place at the destination is empty (the restore died between
    moving it out and moving its replacement in) is put back first; then both
    folders are deleted. Folders whose owner still runs are left alone.
    """
    if not dest.is_dir():
        return
    for path in sorted(dest.iterdir(), key=lambda p: not p.name.endswith(ASIDE_SUFFIX)):
        if not path.name.startswith(STAGING_MARK):
            continue
        pid = path.name[len(STAGING_MARK) :].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        if path.name.endswith(ASIDE_SUFFIX) and path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                back = _put_back(path, dest, "")
                if back:
                    log.warning(
                        "put back %d path(s) set aside by a restore that was stopped: %s",
                        len(back),
                        ", ".join(back[:5]) + (" ..." if len(back) > 5 else ""),
                    )
        log.info("removing %s, left by a restore that was stopped", path)
        shutil.rmtree(path, ignore_errors=True)


def _put_back(aside: Path, dest: Path, rel: str) -> list[str]:
    """Move paths in `aside` back to `dest` where `dest` has nothing in their place."""
    back: list[str] = []
    with os.scandir(aside / rel if rel else aside) as entries:
        found = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)
    for name, is_dir in found:
        sub = f"{rel}/{name}" if rel else name
        there = dest / sub
        try:
            st = os.lstat(there)
        except FileNotFoundError:
            os.rename(aside / sub, there)  # `dest/rel` is a real folder: checked below
            back.append(sub)
            continue
        if is_dir and st_mod.S_ISDIR(st.st_mode):
            back += _put_back(aside, dest, sub)
    return back


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
