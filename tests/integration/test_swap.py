"""The restore's swap engine on its own, on folders built by hand.

`swap_into_place` moves a staged tree into a destination, each path in one
atomic step, and undoes every step when one fails; `remove_leftovers` clears
what a killed swap left and puts back what it had set aside.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from itsup.swap import (
    ASIDE_SUFFIX,
    STAGING_MARK,
    Steps,
    exchange,
    remove_leftovers,
    swap_into_place,
)

Tree = dict[str, Any]  # path -> ("file", content) | ("dir",) | ("link", target)


def build(root: Path, tree: Tree) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for rel, spec in sorted(tree.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec[0] == "file":
            path.write_text(spec[1])
        elif spec[0] == "dir":
            path.mkdir(exist_ok=True)
        else:
            os.symlink(spec[1], path)


def state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path below `root` (staging folders left out): type, content, mode, mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(STAGING_MARK)]
        for name in dirs + [f for f in files if not f.startswith(STAGING_MARK)]:
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                found[rel] = ("file", path.read_text(), st.st_mode & 0o7777)
    return found


def every(rel: str) -> bool:
    return True


class Layout:
    def __init__(self, tmp_path: Path, pid: int | None = None) -> None:
        token = f"{pid or os.getpid()}-0badc0de"
        self.dest = tmp_path / "dest"
        self.staging = self.dest / f"{STAGING_MARK}{token}"
        self.aside = self.dest / f"{STAGING_MARK}{token}{ASIDE_SUFFIX}"

    def swap(self, steps: Steps | None = None, takes: Callable[[str], bool] = every) -> None:
        swap_into_place(self.staging, self.dest, self.aside, takes, steps)


@pytest.fixture
def place(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


OLD: Tree = {
    "proxy/traefik/acme.json": ("file", "old certs"),
    "proxy/traefik/dynamic": ("file", "a file where a folder will be"),
    "upstream/app/data": ("dir",),
    "upstream/app/data/db": ("file", "old db"),
    "upstream/app/data/keep-me": ("file", "not in the backup"),
    "upstream/app/volume": ("dir",),
    "upstream/app/volume/x": ("file", "a folder where a file will be"),
    "upstream/app/current": ("link", "v1"),
}
NEW: Tree = {
    "proxy/traefik/acme.json": ("file", "new certs"),
    "proxy/traefik/dynamic/routes.yml": ("file", "routes"),
    "upstream/app/data/db": ("file", "new db"),
    "upstream/app/volume": ("file", "now a file"),
    "upstream/app/current": ("link", "v2"),
    "upstream/blog/index.html": ("file", "a new project"),
}


def test_each_kind_of_path_goes_into_place(place: Layout) -> None:
    build(place.dest, OLD)
    build(place.staging, NEW)
    place.swap()
    now = state(place.dest)
    assert now["proxy/traefik/acme.json"][:2] == ("file", "new certs")  # file over file
    assert now["proxy/traefik/dynamic"][0] == "dir"  # folder over file
    assert now["proxy/traefik/dynamic/routes.yml"][:2] == ("file", "routes")
    assert now["upstream/app/volume"][:2] == ("file", "now a file")  # file over folder
    assert "upstream/app/volume/x" not in now
    assert now["upstream/app/data/db"][:2] == ("file", "new db")  # folders merged
    assert now["upstream/app/data/keep-me"][:2] == ("file", "not in the backup")
    assert now["upstream/app/current"] == ("link", "v2")  # symlink over symlink
    assert now["upstream/blog/index.html"][:2] == ("file", "a new project")  # new folder
    # what was replaced is kept aside until the caller removes it
    assert (place.aside / "proxy/traefik/acme.json").read_text() == "old certs"


def test_a_file_over_a_file_keeps_the_old_one_as_a_hard_link(place: Layout) -> None:
    build(place.dest, {"a": ("file", "old")})
    build(place.staging, {"a": ("file", "new")})
    inode = os.lstat(place.dest / "a").st_ino
    place.swap()
    assert (place.dest / "a").read_text() == "new"
    assert os.lstat(place.aside / "a").st_ino == inode


def test_merged_folders_take_the_staged_metadata_only_where_asked(place: Layout) -> None:
    build(place.dest, {"top/sub/f": ("file", "old")})
    build(place.staging, {"top/sub/f": ("file", "new")})
    for folder, mode, mtime in (("top", 0o700, 1_000), ("top/sub", 0o750, 2_000)):
        os.chmod(place.staging / folder, mode)
        os.utime(place.staging / folder, ns=(mtime * 10**9, mtime * 10**9))
    os.chmod(place.dest / "top", 0o755)
    place.swap(takes=lambda rel: rel.startswith("top/sub"))
    top, sub = os.stat(place.dest / "top"), os.stat(place.dest / "top/sub")
    assert top.st_mode & 0o7777 == 0o755, "a folder above the scope keeps its own mode"
    assert (sub.st_mode & 0o7777, sub.st_mtime_ns) == (0o750, 2_000 * 10**9)


def test_exchange_swaps_a_file_and_a_folder(tmp_path: Path) -> None:
    build(tmp_path, {"a": ("file", "a file"), "b/inside": ("file", "in a folder")})
    assert exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a/inside").read_text() == "in a folder"
    assert (tmp_path / "b").read_text() == "a file"


class FailAt:
    """Steps whose Nth call fails (raises `error`, or with `kill` ends the process as
    SIGKILL would, with no rollback); counting them measures a whole swap."""

    def __init__(
        self,
        at: int,
        error: BaseException | None = None,
        *,
        two_step: bool = False,
        kill: bool = False,
    ) -> None:
        self.at, self.count = at, 0
        self.error = error or OSError(5, "injected failure")
        self.two_step = two_step  # no hard links, no RENAME_EXCHANGE: set aside, then move in
        self.kill = kill
        self.failed: str | None = None  # the call that failed: rename, link or exchange

    def step(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kw: Any) -> Any:
            self.count += 1
            if self.count == self.at:
                self.failed = name
                if self.kill:
                    os._exit(9)
                raise self.error
            return fn(*args, **kw)

        return wrapper

    def steps(self) -> Steps:
        def no_link(*args: Any, **kw: Any) -> None:
            raise PermissionError(1, "no hard links here")

        link, swap = (no_link, lambda a, b: False) if self.two_step else (os.link, exchange)
        return Steps(
            self.step(os.rename, "rename"), self.step(link, "link"), self.step(swap, "exchange")
        )


def count_steps(tmp_path: Path, two_step: bool = False) -> tuple[int, dict[str, Any]]:
    """How many steps the swap of OLD by NEW takes, and what the destination holds after it."""
    trial = Layout(tmp_path / ("count-two-step" if two_step else "count"))
    build(trial.dest, OLD)
    build(trial.staging, NEW)
    counter = FailAt(0, two_step=two_step)
    trial.swap(counter.steps())
    return counter.count, contents(trial.dest)


def contents(root: Path) -> dict[str, tuple[Any, ...]]:
    """`state` without folders' metadata, which differs between two trees built alike."""
    return {rel: spec[:1] if spec[0] == "dir" else spec for rel, spec in state(root).items()}


@pytest.mark.parametrize("two_step", [False, True], ids=["atomic", "two-step"])
def test_a_failure_at_any_step_rolls_every_change_back(tmp_path: Path, two_step: bool) -> None:
    total, after = count_steps(tmp_path, two_step)
    assert total >= 8
    for at in range(1, total + 1):
        place = Layout(tmp_path / f"at-{at}")
        build(place.dest, OLD)
        build(place.staging, NEW)
        before = state(place.dest)
        failing = FailAt(at, two_step=two_step)
        try:
            place.swap(failing.steps())
        except OSError as exc:
            assert "injected" in str(exc)
            assert state(place.dest) == before, f"step {at} of {total}: not rolled back"
        else:  # a hard link that cannot be made is no error: the swap takes another way
            assert failing.failed == "link", f"step {at} of {total}: failure swallowed"
            assert contents(place.dest) == after


def test_a_signal_during_the_swap_rolls_it_back(place: Layout) -> None:
    build(place.dest, OLD)
    build(place.staging, NEW)
    before = state(place.dest)
    with pytest.raises(KeyboardInterrupt):
        place.swap(FailAt(4, KeyboardInterrupt()).steps())
    assert state(place.dest) == before


def test_a_path_that_cannot_be_replaced_rolls_back_what_came_before(place: Layout) -> None:
    """No injected failure: the set-aside folder cannot be created (a file holds its
    name), so replacing acme.json fails after a.txt and the new folder were moved in."""
    build(place.dest, OLD)
    build(place.staging, {**NEW, "a.txt": ("file", "first"), "new/x": ("file", "second")})
    place.aside.write_text("in the way")
    before = state(place.dest)
    with pytest.raises(OSError):
        place.swap()
    assert state(place.dest) == before
    assert (place.staging / "a.txt").read_text() == "first", "moved back into staging"


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_swap_are_put_back_then_removed(tmp_path: Path) -> None:
    killed = Layout(tmp_path, pid=dead_pid())
    build(killed.dest, {"proxy/traefik/other": ("file", "still there")})
    # killed between setting acme.json aside and moving its replacement in
    build(killed.aside, {"proxy/traefik/acme.json": ("file", "the only copy")})
    # set aside too, but its place was filled since: the destination's copy stays
    build(killed.aside, {"upstream/app/db": ("file", "old db")})
    build(killed.dest, {"upstream/app/db": ("file", "new db")})
    build(killed.staging, {"upstream/app/half": ("file", "staged")})
    remove_leftovers(killed.dest)
    assert contents(killed.dest) == {
        "proxy": ("dir",),
        "proxy/traefik": ("dir",),
        "proxy/traefik/acme.json": ("file", "the only copy", 0o644),
        "proxy/traefik/other": ("file", "still there", 0o644),
        "upstream": ("dir",),
        "upstream/app": ("dir",),
        "upstream/app/db": ("file", "new db", 0o644),
    }
    assert sorted(os.listdir(killed.dest)) == ["proxy", "upstream"], "leftovers not removed"


def test_leftovers_of_a_running_restore_are_left_alone(place: Layout) -> None:
    build(place.aside, {"a": ("file", "set aside by a restore still running")})
    build(place.staging, {"b": ("file", "staged")})
    remove_leftovers(place.dest)
    assert place.aside.is_dir() and place.staging.is_dir()


def test_a_swap_killed_at_any_step_leaves_old_or_new_and_is_repaired(tmp_path: Path) -> None:
    """Killed (no rollback) at each step of a two-step swap, the one not atomic per path:
    every path is old or new; a path set aside and not yet replaced is missing until
    the next restore's remove_leftovers puts it back."""
    total, after = count_steps(tmp_path, two_step=True)
    for at in range(1, total + 1):
        place = Layout(tmp_path / f"kill-{at}", pid=dead_pid())
        build(place.dest, OLD)
        build(place.staging, NEW)
        before = contents(place.dest)
        child = os.fork()
        if child == 0:
            try:
                place.swap(FailAt(at, two_step=True, kill=True).steps())
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        for when in ("killed", "repaired"):
            if when == "repaired":
                remove_leftovers(place.dest)
            now = contents(place.dest)
            half = [r for r, spec in now.items() if spec not in (before.get(r), after.get(r))]
            assert not half, f"{when} at step {at} of {total}: half done: {half}"
        lost = [r for r in before if r in after and r not in now]
        assert not lost, f"step {at} of {total}: still missing after the repair: {lost}"
        assert not [n for n in os.listdir(place.dest) if n.startswith(STAGING_MARK)]
