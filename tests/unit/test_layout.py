"""The project check `itsup init` and `itsup snapshot verify` share (layout.project_checks).

Table-driven: each case builds a projects/ tree from a list of paths (a
trailing "/" makes a folder, anything else a file) and states which project
folders are found and what each lacks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from itsup.layout import PROJECT_FILES, Layout, project_checks

COMPOSE, INGRESS = PROJECT_FILES

CASES = [
    pytest.param(["blog/" + COMPOSE, "blog/" + INGRESS], {"blog": ()}, id="both-present"),
    pytest.param(["blog/" + INGRESS], {"blog": (COMPOSE,)}, id="missing-compose"),
    pytest.param(["blog/" + COMPOSE], {"blog": (INGRESS,)}, id="missing-ingress"),
    pytest.param(["blog/"], {"blog": (COMPOSE, INGRESS)}, id="missing-both"),
    pytest.param(
        ["itsup.yml", "traefik.yml", "notes.md", "blog/" + COMPOSE, "blog/" + INGRESS],
        {"blog": ()},
        id="non-folder-entries-are-not-projects",
    ),
    pytest.param(
        [".git/", ".github/" + COMPOSE, ".hidden/", "blog/" + COMPOSE, "blog/" + INGRESS],
        {"blog": ()},
        id="hidden-folders-skipped",
    ),
    pytest.param(
        ["blog/" + COMPOSE + "/", "blog/" + INGRESS],
        {"blog": (COMPOSE,)},
        id="a-folder-named-like-a-file-is-missing",
    ),
    pytest.param(
        ["zeta/", "alpha/" + COMPOSE, "alpha/" + INGRESS, "mid/" + INGRESS],
        {"alpha": (), "mid": (COMPOSE,), "zeta": (COMPOSE, INGRESS)},
        id="sorted-by-name",
    ),
    pytest.param([], {}, id="no-project-folders"),
    pytest.param(None, {}, id="no-projects-folder"),
]


def _build(root: Path, entries: list[str] | None) -> Layout:
    layout = Layout(root)
    if entries is None:
        return layout
    layout.projects.mkdir()
    for entry in entries:
        path = layout.projects / entry
        if entry.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x\n")
    return layout


@pytest.mark.parametrize(("entries", "expected"), CASES)
def test_project_checks(
    tmp_path: Path, entries: list[str] | None, expected: dict[str, tuple[str, ...]]
) -> None:
    layout = _build(tmp_path, entries)
    checks = project_checks(layout)
    assert [c.name for c in checks] == list(expected)  # sorted by name, in order
    assert {c.name: c.missing for c in checks} == expected
    for c in checks:
        assert c.folder == layout.projects / c.name


def test_a_link_to_a_folder_is_a_project(tmp_path: Path) -> None:
    layout = _build(tmp_path, ["elsewhere/"])
    real = tmp_path / "real-blog"
    real.mkdir()
    (real / COMPOSE).write_text("x\n")
    (layout.projects / "blog").symlink_to(real, target_is_directory=True)
    assert [(c.name, c.missing) for c in project_checks(layout)] == [
        ("blog", (INGRESS,)),
        ("elsewhere", (COMPOSE, INGRESS)),
    ]


def test_reports_without_printing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project_checks(_build(tmp_path, ["blog/"]))
    assert capsys.readouterr() == ("", "")
