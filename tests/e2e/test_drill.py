"""`itsup backup drill`, end to end: restore in full into a scratch root, check
everything against the file index and the git remotes, measure RTO and RPO.

The live host tree must come out of every drill byte for byte as it went in;
the scratch root lives in a TMPDIR of the test's own, so that its removal
(or its keeping, with --keep) can be seen.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from gitsops import (
    PROJECTS_FILES,
    bare_remote,
    git,
    new_age_key,
    seed_remote,
    sops_config,
    sops_encrypt_file,
)
from helpers import (
    ACME,
    HostFactory,
    Store,
    generations,
    itsup,
    make_host,
    read_index,
    read_manifest,
    retar_with_new_content,
    setup_host,
    tree_state,
)

from itsup.errors import ExitCode

ALL = ("upstream", "proxy", "projects", "secrets")
APP_SECRET = "drill-app-password-4711"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """The TMPDIR drills run with: empty before, and empty after unless --keep."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


def drill(root: Path, scratch: Path, *args: str, expect: int = 0, **kw: Any) -> Any:
    env = {"TMPDIR": str(scratch), **kw.pop("env", {})}
    return itsup(root, "backup", "drill", *args, expect=expect, env=env, **kw)


def reports(root: Path) -> list[Path]:
    """The drill reports in logs/, oldest first."""
    return sorted((root / "logs").glob("drill-*.json"), key=lambda p: p.stat().st_mtime_ns)


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def statuses(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["item"]: c for c in report["checks"]}


def live_tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """The host tree a drill must not touch: everything but git's own bookkeeping.

    Checking the remotes runs `git status` in projects/ and secrets/ (as `snapshot
    verify` does), which may refresh .git/index; the work trees stay as they were.
    """
    return {k: v for k, v in tree_state(root, ALL).items() if ".git" not in k.split("/")}


def state(root: Path) -> dict[str, Any]:
    data = json.loads((root / ".itsup" / "state.json").read_text())
    assert isinstance(data, dict)
    return data


def newest(root: Path) -> str:
    name = generations(root)[0]["name"]
    assert isinstance(name, str)
    return name


# -- a drill that passes ----------------------------------------------------------------


def test_drill_passes_and_leaves_the_host_alone(new_host: HostFactory, scratch: Path) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    gen = newest(root)
    files = [e for e in read_index(store, gen).values() if e["type"] == "file"]
    before = tree_state(root, ALL)

    res = drill(root, scratch)
    # Off a terminal (cron), one line; the table comes with -v or on a terminal.
    [line] = res.out.splitlines()
    assert line.startswith(f"drill of {gen} passed: ") and "RTO " in line and "RPO " in line
    assert tree_state(root, ALL) == before, "the drill changed the live host tree"
    assert list(scratch.iterdir()) == [], "the scratch root was left behind"

    [path] = reports(root)
    assert line.endswith(f"(report: {path.relative_to(root)})")
    report = load(path)
    assert report["ok"] is True and report["exit_code"] == 0 and report["error"] is None
    assert report["generation"] == gen
    assert report["generation_started"] == read_manifest(store, gen)["started"]
    assert report["files_checked"] == len(files)
    assert report["bytes_checked"] == sum(e["size"] for e in files)
    assert isinstance(report["rto_seconds"], float) and 0 < report["rto_seconds"] < 60
    assert isinstance(report["rpo_seconds"], float) and 0 <= report["rpo_seconds"] < 300
    assert report["targets"] == {"rto_seconds": None, "rpo_seconds": None}
    assert report["workdir"] is None
    checks = statuses(report)
    for item in ("restore", "restored tree", "RTO", "RPO"):
        assert checks[item]["status"] == "ok", checks[item]
    assert checks["git"]["status"] == "skipped"  # this host keeps no git repositories
    assert "no git remotes" in checks["git"]["detail"]

    record = state(root)["last"]["drill"]
    assert record["result"] == "success" and record["exit_code"] == 0
    assert record["generation"] == gen and record["files"] == len(files)
    assert record["details"]["report"] == str(path)
    assert record["details"]["rto_seconds"] > 0 and record["details"]["rpo_seconds"] >= 0

    # --keep leaves the restored root (identical to the live tree), --report puts
    # the report elsewhere, --no-git skips the remotes.
    elsewhere = scratch.parent / "reports" / "drill.json"
    res = itsup(
        root,
        *("-v", "backup", "drill", "--keep", "--no-git", "--report", str(elsewhere)),
        env={"TMPDIR": str(scratch)},
    )
    assert "PASSED" in res.out and gen in res.out and f"report: {elsewhere}" in res.out
    report = load(elsewhere)
    kept = Path(report["workdir"])
    assert f"restored tree kept in {kept}" in res.out
    assert kept.parent == scratch and kept.is_dir()
    assert tree_state(kept) == tree_state(root)
    assert statuses(report)["git"]["detail"] == "not asked for (--no-git)"
    assert len(reports(root)) == 1
    assert tree_state(root, ALL) == before


def test_drill_report_without_logs_folder(tmp_path: Path, scratch: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "", include_volumes=False)
    root = store.root
    shutil.rmtree(root / "logs")
    itsup(root, "backup")
    drill(root, scratch, "--no-git")
    [path] = sorted((root / ".itsup").glob("drill-*.json"))
    assert load(path)["ok"] is True
    assert not (root / "logs").exists()


# -- drills that fail ---------------------------------------------------------------------


def flip_middle(store: Store, name: str) -> None:
    data = bytearray(store.read(name))
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    store.write(name, bytes(data))


def test_drill_fails_on_a_damaged_newest_generation(tmp_path: Path, scratch: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    itsup(root, "backup")
    (root / ACME).write_text('{"letsencrypt": {"Certificates": ["newer"]}}\n')
    itsup(root, "backup")
    gen = newest(root)
    flip_middle(store, f"{gen}.tar.gz")
    before = tree_state(root, ALL)

    res = drill(root, scratch, expect=ExitCode.DAMAGED)
    assert res.err.startswith(f"itsup: error: drill of {gen} FAILED: the restore failed")
    assert "FAILED" in res.out
    assert tree_state(root, ALL) == before
    assert list(scratch.iterdir()) == []
    report = load(reports(root)[0])
    assert report["ok"] is False and report["exit_code"] == ExitCode.DAMAGED
    assert report["generation"] == gen  # never quietly an older one
    checks = statuses(report)
    assert checks["restore"]["status"] == "fail"
    assert checks["RTO"]["status"] == "skipped" and report["rto_seconds"] is None
    record = state(root)["last"]["drill"]
    assert record["result"] == "failure" and record["exit_code"] == ExitCode.DAMAGED
    assert gen in record["message"]


def test_drill_checks_content_the_restore_does_not(tmp_path: Path, scratch: Path) -> None:
    """An archive rewritten with other content, its manifest made to match: restore's own
    checks (archive SHA-256, member list) pass; the drill's walk of the tree does not."""
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    itsup(root, "backup")
    gen = newest(root)
    changed = "proxy/traefik/traefik.yml"
    retar_with_new_content(store, gen, changed)

    res = drill(root, scratch, "--no-git", expect=ExitCode.DAMAGED)
    assert f"drill of {gen} FAILED" in res.err and changed in res.err
    checks = statuses(load(reports(root)[0]))
    assert checks["restore"]["status"] == "ok"
    assert checks["restored tree"]["status"] == "fail"
    assert checks[changed]["detail"] == "its content does not match the SHA-256 in the file index"


def test_drill_missing_the_rpo_target_exits_1(tmp_path: Path, scratch: Path) -> None:
    store = setup_host(
        tmp_path / "host",
        "local",
        None,
        "",
        include_volumes=False,
        extra="  monitoring:\n    rpo: 1s\n    rto: 1h\n",
    )
    root = store.root
    itsup(root, "backup")
    time.sleep(2.1)

    res = drill(root, scratch, "--no-git", expect=ExitCode.FAILURE)
    assert "passed every check but MISSED its target: RPO" in res.err
    assert "over the target of 1 s" in res.err
    report = load(reports(root)[0])
    assert report["ok"] is False and report["exit_code"] == 1
    assert report["targets"] == {"rto_seconds": 3600, "rpo_seconds": 1}
    assert report["rpo_seconds"] >= 2
    checks = statuses(report)
    assert checks["RPO"]["status"] == "fail"
    assert checks["RTO"]["status"] == "ok" and "within the target" in checks["RTO"]["detail"]
    assert checks["restored tree"]["status"] == "ok"
    record = state(root)["last"]["drill"]
    assert record["result"] == "failure" and record["exit_code"] == 1
    assert record["details"]["rpo_target"] == 1


# -- with git remotes ---------------------------------------------------------------------


def encrypted(pubkey: str, name: str, text: str, scratch: Path) -> bytes:
    """`sops -e` of a dotenv text, made in a folder of its own (never in the host)."""
    sops_config(scratch, pubkey)
    (scratch / f"{name}.txt").write_text(text)
    data = sops_encrypt_file(scratch, f"{name}.txt")
    shutil.rmtree(scratch)
    return data


def corrupt(path: Path) -> None:
    """Change one character of the first encrypted value: authentication must fail."""
    text = path.read_text()
    start = text.index("ENC[AES256_GCM,data:") + len("ENC[AES256_GCM,data:")
    flipped = "A" if text[start] != "A" else "B"
    path.write_text(text[:start] + flipped + text[start + 1 :])


@pytest.fixture
def git_host(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host whose projects/ and secrets/ are clones of (bare) git remotes."""
    key_file = tmp_path / "keys" / "age.txt"
    pubkey = new_age_key(key_file)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key_file))
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    projects = bare_remote(remotes, "projects")
    seed_remote(
        projects,
        {**PROJECTS_FILES, "itsup.yml": "backup:\n  include_volumes: true\n"},
        tmp_path / "seed-projects",
    )
    secrets = bare_remote(remotes, "secrets")
    seed_remote(
        secrets,
        {
            ".sops.yaml": f"creation_rules:\n  - path_regex: \\.txt$\n    age: {pubkey}\n",
            ".gitignore": "*.txt\n!*.enc.txt\n",
            "app.enc.txt": encrypted(
                pubkey, "app", f"APP_PASSWORD={APP_SECRET}\n", tmp_path / "sops-scratch"
            ),
        },
        tmp_path / "seed-secrets",
    )
    root = tmp_path / "host"
    root.mkdir()
    git("clone", "--quiet", str(projects), str(root / "projects"))
    git("clone", "--quiet", str(secrets), str(root / "secrets"))
    make_host(root)  # upstream/ and proxy/ (its projects/ files are the committed ones)
    return root


def test_drill_verifies_the_git_remotes(git_host: Path, tmp_path: Path, scratch: Path) -> None:
    root = git_host
    itsup(root, "backup")
    before = live_tree(root)

    res = drill(root, scratch)
    report = load(reports(root)[0])
    checks = statuses(report)
    for item in (
        "git: projects remote",
        "git: secrets remote",
        "git: projects/itsup.yml",
        "git: projects/app",
        "git: projects/blog",
        "git: secrets/app.enc.txt",
        "git: committed secrets",
    ):
        assert checks[item]["status"] == "ok", (item, checks.get(item))
    assert "decrypts" in checks["git: secrets/app.enc.txt"]["detail"]
    assert report["ok"] is True
    assert list(scratch.iterdir()) == []

    # Someone pushes a damaged secrets file: the drill fails, naming it.
    work = tmp_path / "elsewhere"
    git("clone", "--quiet", str(tmp_path / "remotes" / "secrets.git"), str(work))
    corrupt(work / "app.enc.txt")
    git("commit", "--quiet", "-am", "oops", cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)

    res = drill(root, scratch, expect=ExitCode.DAMAGED)
    assert "git verification" in res.err and "secrets/app.enc.txt" in res.err
    report = load(reports(root)[-1])
    checks = statuses(report)
    assert report["ok"] is False and report["exit_code"] == ExitCode.DAMAGED
    assert checks["git: secrets/app.enc.txt"]["status"] == "fail"
    assert checks["restored tree"]["status"] == "ok"  # the state backup itself is fine
    assert APP_SECRET not in res.out + res.err + json.dumps(report)
    assert live_tree(root) == before
    assert list(scratch.iterdir()) == []


def test_drill_generation_option(tmp_path: Path, scratch: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "", include_volumes=False)
    root = store.root
    itsup(root, "backup")
    first = newest(root)
    itsup(root, "backup")
    assert newest(root) != first
    drill(root, scratch, "--no-git", "--generation", first)
    assert load(reports(root)[0])["generation"] == first
    res = drill(root, scratch, "--generation", "backup-2001-01-01-000000", expect=1)
    assert "no generation backup-2001-01-01-000000" in res.err
