"""The member rules restore applies to every archive member and index entry, in-process.

`check_member` (rule by rule, accepted and refused), `check_link_chains` (symlinks
that leave the destination only together) and `PathRules` (the restore's fast path
for a stream of members or index entries: the same rules, plus the order that finds
a path given twice without a record per path). tests/e2e/test_hostile.py publishes hostile archives and runs
`itsup restore` on them.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable

import pytest

from itsup.errors import IntegrityError
from itsup.pipeline.extract import check_link_chains, check_member
from itsup.pipeline.members import PathRules

MTIME = 1_736_910_000


# -- check_member, rule by rule ----------------------------------------------------------------


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    info.mode = 0o640
    info.mtime = MTIME
    return info


ACCEPTED: list[tuple[tarfile.TarInfo, str, str]] = [
    (_info("proxy/traefik/acme.json", size=3), "proxy/traefik/acme.json", "file"),
    (_info("./proxy/x", size=0), "proxy/x", "file"),
    (_info("proxy/dir/", tarfile.DIRTYPE), "proxy/dir", "dir"),
    (_info("proxy//a", size=1), "proxy/a", "file"),
    (_info("proxy/l", tarfile.SYMTYPE, "traefik/acme.json"), "proxy/l", "symlink"),
    (_info("proxy/l", tarfile.SYMTYPE, "../upstream/app"), "proxy/l", "symlink"),
    (_info("proxy/a/b/l", tarfile.SYMTYPE, "../../x"), "proxy/a/b/l", "symlink"),
    (_info("proxy/..hidden", size=1), "proxy/..hidden", "file"),
    (_info("proxy/dots...", size=1), "proxy/dots...", "file"),
    (_info("upstream/ünïcode name", size=1), "upstream/ünïcode name", "file"),
]


@pytest.mark.parametrize(
    ("info", "path", "kind"), ACCEPTED, ids=[a[1] + ":" + a[2] for a in ACCEPTED]
)
def test_check_member_accepts_ordinary_members(info: tarfile.TarInfo, path: str, kind: str) -> None:
    m = check_member(info, set())
    assert (m.path, m.type) == (path, kind)
    assert m.mode == 0o640
    assert m.mtime_ns == MTIME * 1_000_000_000


REFUSED: dict[str, tuple[Callable[[], tarfile.TarInfo], set[str], str]] = {
    "absolute": (lambda: _info("/etc/passwd"), set(), "absolute path"),
    "absolute_dir": (lambda: _info("/", tarfile.DIRTYPE), set(), "absolute path"),
    "empty_name": (lambda: _info(""), set(), "refused"),
    "dot_only": (lambda: _info(".", tarfile.DIRTYPE), set(), "empty or invalid"),
    "dotdot_leading": (lambda: _info("../x"), set(), "'..'"),
    "dotdot_middle": (lambda: _info("proxy/../../x"), set(), "'..'"),
    "dotdot_only": (lambda: _info("..", tarfile.DIRTYPE), set(), "'..'"),
    "dotdot_trailing": (lambda: _info("proxy/..", tarfile.DIRTYPE), set(), "'..'"),
    "through_symlink": (lambda: _info("proxy/l/x"), {"proxy/l"}, "through a symlink"),
    "through_symlink_deep": (lambda: _info("proxy/l/a/b"), {"proxy/l"}, "through a symlink"),
    "through_symlink_dot": (lambda: _info("./proxy/l/x"), {"proxy/l"}, "through a symlink"),
    "symlink_absolute": (
        lambda: _info("proxy/l", tarfile.SYMTYPE, "/etc"),
        set(),
        "absolute path",
    ),
    "symlink_outside": (
        lambda: _info("proxy/l", tarfile.SYMTYPE, "../../etc"),
        set(),
        "outside",
    ),
    "symlink_outside_exactly_parent": (
        lambda: _info("proxy/l", tarfile.SYMTYPE, "../.."),
        set(),
        "outside",
    ),
    "symlink_outside_top": (lambda: _info("l", tarfile.SYMTYPE, ".."), set(), "outside"),
    "symlink_outside_after_down": (
        lambda: _info("proxy/l", tarfile.SYMTYPE, "a/../../../x"),
        set(),
        "outside",
    ),
    "hardlink": (lambda: _info("proxy/h", tarfile.LNKTYPE, "/etc/passwd"), set(), "hard link"),
    "hardlink_inside": (lambda: _info("proxy/h", tarfile.LNKTYPE, "proxy/a"), set(), "hard link"),
    "char_device": (lambda: _info("proxy/c", tarfile.CHRTYPE), set(), "device"),
    "block_device": (lambda: _info("proxy/b", tarfile.BLKTYPE), set(), "device"),
    "fifo": (lambda: _info("proxy/p", tarfile.FIFOTYPE), set(), "FIFO"),
    "negative_size": (lambda: _info("proxy/n", size=-1), set(), "size"),
    "dir_with_size": (lambda: _info("proxy/d", tarfile.DIRTYPE, size=10), set(), "size"),
    "symlink_with_size": (
        lambda: _info("proxy/s", tarfile.SYMTYPE, "x", size=10),
        set(),
        "size",
    ),
    "replaces_a_symlink": (lambda: _info("proxy/l", tarfile.DIRTYPE), {"proxy/l"}, "symlink"),
}


@pytest.mark.parametrize("rule", sorted(REFUSED))
def test_check_member_refuses(rule: str) -> None:
    make, symlinks, fragment = REFUSED[rule]
    info = make()
    with pytest.raises(IntegrityError) as err:
        check_member(info, set(symlinks))
    assert fragment in err.value.message
    assert repr(info.name) in err.value.message  # names the member
    assert err.value.exit_code == 5


def test_check_member_does_not_change_the_symlink_set() -> None:
    links = {"proxy/l"}
    check_member(_info("proxy/other", tarfile.SYMTYPE, "l"), links)
    assert links == {"proxy/l"}


# -- symlink chains and index entries --------------------------------------------------------

CHAINS_INSIDE = {
    "release_layout": {
        "srv/current": "releases/5",
        "srv/logs": "current/logs",
        "srv/releases/5/logs": "../../shared/logs",
    },
    "up_and_down": {"proxy/x/a": "..", "proxy/b": "x/a/traefik"},
    "loop": {"a": "b", "b": "a"},
    "self_loop": {"proxy/me": "me"},
    "dangling": {"proxy/l": "nowhere/../at/all"},
}
CHAINS_OUTSIDE = {
    "via_parent_link": ({"proxy/x/a": "..", "proxy/b": "x/a/../../.."}, "proxy/b"),
    "via_dot_link": ({"l1": ".", "l2": "l1/.."}, "l2"),
    "two_hops": ({"a/b/c": "../..", "a/d": "b/c", "e/f": "../a/d/.."}, "e/f"),
}


@pytest.mark.parametrize("name", sorted(CHAINS_INSIDE))
def test_check_link_chains_accepts_links_that_stay_inside(name: str) -> None:
    check_link_chains(CHAINS_INSIDE[name])
    check_link_chains(dict(reversed(CHAINS_INSIDE[name].items())))  # order does not matter


@pytest.mark.parametrize("name", sorted(CHAINS_OUTSIDE))
def test_check_link_chains_refuses_links_that_leave_together(name: str) -> None:
    links, member = CHAINS_OUTSIDE[name]
    for ordered in (links, dict(reversed(links.items()))):
        with pytest.raises(IntegrityError) as err:
            check_link_chains(ordered)
        assert "outside the destination" in err.value.message
        assert member in err.value.message


def test_check_link_chains_is_bounded_on_pathological_chains() -> None:
    """Links that refer to each other many times over cost bounded work (like ELOOP)."""
    import time

    links = {"l0": "x"}
    for i in range(1, 40):
        links[f"l{i}"] = "/".join([f"l{i - 1}/.."] * 6 + [f"l{i - 1}"])
    started = time.monotonic()
    check_link_chains(links)
    assert time.monotonic() - started < 2


# -- PathRules: the same rules on the restore's fast path, and the order -------------------------


def _check(rules: PathRules, info: tarfile.TarInfo) -> tuple[str, str]:
    return rules.check(info.name, info.type, info.size, info.linkname)


@pytest.mark.parametrize(
    ("info", "path", "kind"), ACCEPTED, ids=[a[1] + ":" + a[2] for a in ACCEPTED]
)
def test_path_rules_accept_what_check_member_accepts(
    info: tarfile.TarInfo, path: str, kind: str
) -> None:
    assert _check(PathRules(), info) == (path, kind)


# Where a link points is the caller's business (only the links written count).
LINK_TARGET_RULES = {r for r in REFUSED if r.startswith("symlink_") and "size" not in r}


@pytest.mark.parametrize("rule", sorted(set(REFUSED) - LINK_TARGET_RULES))
def test_path_rules_refuse_what_check_member_refuses(rule: str) -> None:
    make, symlinks, fragment = REFUSED[rule]
    info = make()
    rules = PathRules()
    rules.symlinks.update(symlinks)
    with pytest.raises(IntegrityError) as err:
        _check(rules, info)
    assert fragment in err.value.message
    assert repr(info.name) in err.value.message


def _run(*members: tuple[str, bytes]) -> None:
    rules = PathRules()
    for name, kind in members:
        rules.check(name, kind, 0, "x" if kind == tarfile.SYMTYPE else "")
    rules.finish()


D, F, L = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE


def test_path_rules_accept_the_order_a_backup_writes() -> None:
    # Depth first, each folder's entries sorted by name; the top level in the
    # configuration's order; the database dumps after the tree.
    _run(
        ("upstream", D),
        ("upstream/a", D),
        ("upstream/a/x", F),
        ("upstream/a.txt", F),
        ("upstream/b", D),
        ("upstream/b/c", D),
        ("upstream/b/c/l", L),
        ("upstream/b/d", F),
        ("proxy", D),
        ("proxy/acme.json", F),
        ("upstream/a/_backup/db.dump", F),
        ("upstream/b/_backup/cache.rdb", F),
    )


TWICE = {
    "file_next_to_itself": [("upstream", D), ("upstream/x", F), ("upstream/x", F)],
    "folder_after_its_files": [
        ("upstream", D),
        ("upstream/d", D),
        ("upstream/d/x", F),
        ("upstream/d", D),
    ],
    "top_level": [("proxy", D), ("proxy", D)],
    "dump": [("upstream/a/_backup/x", F), ("upstream/a/_backup/x", F)],
}


@pytest.mark.parametrize("case", sorted(TWICE))
def test_path_rules_refuse_a_path_given_twice(case: str) -> None:
    with pytest.raises(IntegrityError) as err:
        _run(*TWICE[case])
    assert "appears twice" in err.value.message


OUT_OF_ORDER = {
    # Each could hide a path given twice, which only a record per path would catch.
    "unsorted_siblings": [("upstream", D), ("upstream/b", F), ("upstream/a", F)],
    "back_into_a_folder_left": [
        ("upstream", D),
        ("upstream/a", D),
        ("upstream/b", D),
        ("upstream/a/x", F),
    ],
    "back_into_a_top_level_left": [("upstream", D), ("proxy", D), ("upstream/x", F)],
    "deeper_folder_out_of_order": [
        ("upstream", D),
        ("upstream/b/x", F),
        ("upstream/a/y", F),
    ],
}


@pytest.mark.parametrize("case", sorted(OUT_OF_ORDER))
def test_path_rules_refuse_members_out_of_order(case: str) -> None:
    members = OUT_OF_ORDER[case]
    rules = PathRules()
    for name, kind in members:  # told at the end: a member breaking a rule is named first
        rules.check(name, kind, 0, "")
    with pytest.raises(IntegrityError) as err:
        rules.finish()
    assert "out of the order" in err.value.message
    assert repr(members[-1][0]) in err.value.message
