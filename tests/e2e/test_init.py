"""`itsup init`: clone or update projects/ and secrets/ from real git remotes, then check.

Every test runs the real command in a subprocess against bare repositories
standing in for GitHub/Gitea, with real sops and fresh age keys, in a HOME of
its own (`isolated_home`).
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
from helpers import ITSUP, Result, run_itsup


def init_both(root: Path, remotes: Remotes) -> Result:
    """`itsup init` with both URLs, as the README shows it."""
    return run_itsup(
        "init", "--projects-url", remotes.projects, "--secrets-url", remotes.secrets, root=root
    )


SECRET_VALUE = "s3cr3t-value-never-printed"


@dataclass
class Remotes:
    projects: Path
    secrets: Path
    key: Path
    base: Path

    def push(self, remote: Path, changes: dict[str, str], message: str = "change") -> str:
        """Someone else pushes a commit (from a clone of their own); return its id."""
        work = self.base / f"other-{remote.stem}-{time.monotonic_ns()}"
        git("clone", "--quiet", str(remote), str(work))
        for rel, text in changes.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", message, cwd=work)
        git("push", "--quiet", "origin", "HEAD:main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)


def _secrets_files(base: Path, key: Path) -> dict[str, str | bytes]:
    """A secrets/ repository as the spec has it: .sops.yaml and an encrypted itsup.enc.txt."""
    work = base / "secrets-src"
    sops_config(work, new_age_key(key))
    (work / "itsup.txt").write_text(f"BACKUP_DIR={base / 'backups'}\nAPI_TOKEN={SECRET_VALUE}\n")
    encrypted = sops_encrypt_file(work, "itsup.txt", key_file=key)
    return {".sops.yaml": (work / ".sops.yaml").read_text(), "itsup.enc.txt": encrypted}


def _remotes(tmp_path: Path, home: Path, projects: dict[str, str | bytes] | None = None) -> Remotes:
    base = tmp_path / "remotes"
    base.mkdir()
    key = home / ".config" / "sops" / "age" / "keys.txt"
    p = bare_remote(base, "projects")
    s = bare_remote(base, "secrets")
    seed_remote(p, projects if projects is not None else PROJECTS_FILES, base / "seed-projects")
    seed_remote(s, _secrets_files(base, key), base / "seed-secrets")
    return Remotes(p, s, key, base)


@pytest.fixture
def remotes(tmp_path: Path, isolated_home: Path) -> Remotes:
    return _remotes(tmp_path, isolated_home)


def _init_plain(root: Path) -> Result:
    """`itsup init` with no option: update what is there."""
    return run_itsup("init", root=root)


def _clone_both(root: Path, r: Remotes) -> Result:
    root.mkdir(parents=True, exist_ok=True)
    res = init_both(root, r)
    assert res.code == 0, res.out + res.err
    return res


def _head(folder: Path) -> str:
    return git("rev-parse", "HEAD", cwd=folder)


def _ignored(repo: Path, path: str) -> bool:
    proc = subprocess.run(
        ["git", "check-ignore", "-q", path], cwd=repo, capture_output=True, check=False
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- two repositories ------------------------------------------------------------------


def test_clones_both_repositories_and_reports_a_good_layout(
    tmp_path: Path, remotes: Remotes
) -> None:
    root = tmp_path / "host"
    root.mkdir()
    res = init_both(root, remotes)
    assert res.code == 0, res.out + res.err
    for rel, content in PROJECTS_FILES.items():
        assert (root / "projects" / rel).read_text() == content
    enc = (remotes.base / "seed-secrets" / "itsup.enc.txt").read_bytes()
    assert (root / "secrets" / "itsup.enc.txt").read_bytes() == enc
    assert git("remote", "get-url", "origin", cwd=root / "projects") == str(remotes.projects)
    assert "projects/: cloned" in res.out and "secrets/: cloned" in res.out
    assert "projects/itsup.yml: present and valid" in res.out
    assert "project app: docker-compose.yml, ingress.yml" in res.out
    assert "itsup decrypt" in res.out and "itsup restore all" in res.out
    # itsup.yml was checked with the secrets decrypted in memory only: nothing on disk.
    assert not (root / "secrets" / "itsup.txt").exists()
    assert SECRET_VALUE not in res.out + res.err
    assert res.err == ""  # nothing to warn about


def test_rerun_pulls_what_someone_else_pushed(tmp_path: Path, remotes: Remotes) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    old = _head(root / "projects")
    new = remotes.push(remotes.projects, {"traefik.yml": "log:\n  level: DEBUG\n"})
    res = _init_plain(root)
    assert res.code == 0, res.out + res.err
    assert (root / "projects" / "traefik.yml").read_text() == "log:\n  level: DEBUG\n"
    assert _head(root / "projects") == new
    assert f"projects/: updated {old[:7]}..{new[:7]}" in res.out
    assert "secrets/: already up to date" in res.out


def test_local_changes_are_kept_and_the_run_is_partial(tmp_path: Path, remotes: Remotes) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    before = _head(root / "projects")
    (root / "projects" / "traefik.yml").write_text("log:\n  level: WARN  # edited on the host\n")
    remotes.push(remotes.projects, {"app/ingress.yml": "enabled: false\n"})
    new_secrets = remotes.push(remotes.secrets, {"README": "who can decrypt\n"})
    res = _init_plain(root)
    assert res.code == 3, res.out + res.err
    assert "projects/: has local changes, not pulled" in res.err
    assert "traefik.yml" in res.err
    # Nothing lost, nothing half-applied.
    assert (root / "projects" / "traefik.yml").read_text().endswith("# edited on the host\n")
    assert (root / "projects" / "app" / "ingress.yml").read_text() == "enabled: true\n"
    assert _head(root / "projects") == before
    # The other repository was still brought up to date.
    assert _head(root / "secrets") == new_secrets


def test_plaintext_secrets_do_not_count_as_local_changes(tmp_path: Path, remotes: Remotes) -> None:
    # A host set up by hand before itsup init: no secrets/.gitignore yet, plaintext decrypted.
    root = tmp_path / "host"
    git("clone", "--quiet", str(remotes.projects), str(root / "projects"))
    git("clone", "--quiet", str(remotes.secrets), str(root / "secrets"))
    (root / "secrets" / "itsup.txt").write_text(f"API_TOKEN={SECRET_VALUE}\n")
    assert "itsup.txt" in git("status", "--porcelain", cwd=root / "secrets")
    new = remotes.push(remotes.secrets, {"README": "hello\n"})
    res = _init_plain(root)
    assert res.code == 0, res.out + res.err
    assert _head(root / "secrets") == new
    assert (root / "secrets" / "itsup.txt").read_text() == f"API_TOKEN={SECRET_VALUE}\n"
    assert _ignored(root / "secrets", "itsup.txt")
    assert SECRET_VALUE not in res.out + res.err


def test_diverged_branch_is_refused_and_local_commit_kept(tmp_path: Path, remotes: Remotes) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    projects = root / "projects"
    (projects / "traefik.yml").write_text("log:\n  level: ERROR\n")
    git("commit", "--quiet", "-am", "local", cwd=projects)
    local = _head(projects)
    remotes.push(remotes.projects, {"app/ingress.yml": "enabled: false\n"})
    res = _init_plain(root)
    assert res.code == 1, res.out + res.err
    assert "diverged" in res.err and "nothing was changed" in res.err
    assert "Traceback" not in res.err
    assert _head(projects) == local
    assert (projects / "traefik.yml").read_text() == "log:\n  level: ERROR\n"


def test_origin_mismatch_is_refused_with_both_urls_masked(tmp_path: Path, remotes: Remotes) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    head = _head(root / "projects")
    other = "https://deploy:t0ken-xyz@git.example.invalid/ops/other-projects.git"
    res = run_itsup("init", "--projects-url", other, root=root)
    assert res.code == 2, res.out + res.err
    assert str(remotes.projects) in res.err
    assert "https://***@git.example.invalid/ops/other-projects.git" in res.err
    assert "t0ken-xyz" not in res.out + res.err
    assert git("remote", "get-url", "origin", cwd=root / "projects") == str(remotes.projects)
    assert _head(root / "projects") == head


def test_same_url_spelled_differently_is_not_a_mismatch(tmp_path: Path, remotes: Remotes) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    res = run_itsup(
        "init", "--projects-url", f"file://{remotes.projects}/", root=root
    )  # trailing slash, file:// form
    assert res.code == 0, res.out + res.err
    assert "projects/: already up to date" in res.out


def test_non_empty_folder_that_is_not_a_repository_is_left_alone(
    tmp_path: Path, remotes: Remotes
) -> None:
    root = tmp_path / "host"
    (root / "projects").mkdir(parents=True)
    (root / "projects" / "mine.yml").write_text("hand-made: true\n")
    res = init_both(root, remotes)
    assert res.code == 1, res.out + res.err
    assert "projects/" in res.err and "not a git checkout" in res.err
    assert "nothing was changed" in res.err
    assert sorted(p.name for p in (root / "projects").iterdir()) == ["mine.yml"]
    assert (root / "projects" / "mine.yml").read_text() == "hand-made: true\n"
    assert not (root / "secrets").exists()  # refused before anything was cloned


@pytest.mark.parametrize("kind", ["connection refused", "no such repository"])
def test_unreachable_remote_exits_6_with_gits_reason(
    tmp_path: Path, remotes: Remotes, kind: str
) -> None:
    root = tmp_path / "host"
    root.mkdir()
    url = (
        f"http://127.0.0.1:{_closed_port()}/ops/projects.git"
        if kind == "connection refused"
        else str(tmp_path / "nowhere" / "projects.git")
    )
    res = run_itsup("init", "--projects-url", url, "--secrets-url", str(remotes.secrets), root=root)
    assert res.code == 6, res.out + res.err
    assert "itsup: error: projects/: git clone failed:" in res.err
    reason = "Failed to connect" if kind == "connection refused" else "does not exist"
    assert reason in res.err
    assert "itsup: hint: check the URL" in res.err
    assert "Traceback" not in res.err
    assert not (root / "projects").exists() or not any((root / "projects").iterdir())


def test_without_urls_off_a_terminal_says_which_option_to_pass(
    tmp_path: Path, isolated_home: Path
) -> None:
    root = tmp_path / "new-host"
    res = run_itsup("init", env={"ITSUP_ROOT": str(root)})
    assert res.code == 2, res.out + res.err
    assert "not cloned yet" in res.err
    assert "--projects-url URL and --secrets-url URL" in res.err and "--repo-url" in res.err
    assert not root.exists()


def test_repo_url_cannot_be_mixed_with_the_two_url_options(
    tmp_path: Path, remotes: Remotes
) -> None:
    root = tmp_path / "host"
    root.mkdir()
    res = run_itsup(
        "init", "--repo-url", str(remotes.projects), "--secrets-url", str(remotes.secrets),
        root=root,
    )  # fmt: skip
    assert res.code == 2
    assert "--repo-url" in res.err
    assert list(root.iterdir()) == []


# -- secrets/.gitignore -------------------------------------------------------------------


def test_gitignore_keeps_plaintext_out_and_preserves_user_lines(
    tmp_path: Path, isolated_home: Path
) -> None:
    r = _remotes(tmp_path, isolated_home)
    r.push(r.secrets, {".gitignore": "notes/\n*.bak\n"}, "ignore notes")
    root = tmp_path / "host"
    _clone_both(root, r)
    secrets = root / "secrets"
    lines = (secrets / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["notes/", "*.bak"]  # the operator's lines, first and unchanged
    assert "*.txt" in lines and "!*.enc.txt" in lines
    assert _ignored(secrets, "x.txt") and _ignored(secrets, "app.txt")
    assert not _ignored(secrets, "x.enc.txt")
    assert _ignored(secrets, "notes/todo") and _ignored(secrets, "a.bak")
    # A plaintext secret can really not be committed by `git add -A`.
    (secrets / "app.txt").write_text(f"TOKEN={SECRET_VALUE}\n")
    git("add", "-A", cwd=secrets)
    assert "app.txt" not in git("diff", "--cached", "--name-only", cwd=secrets).split()
    git("reset", "--quiet", cwd=secrets)
    # Running again adds nothing twice.
    text = (secrets / ".gitignore").read_text()
    res = _init_plain(root)
    assert res.code == 0, res.out + res.err
    assert (secrets / ".gitignore").read_text() == text


def test_gitignore_written_by_init_does_not_block_later_pulls(
    tmp_path: Path, remotes: Remotes
) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    assert (root / "secrets" / ".gitignore").is_file()  # written, not committed
    # Someone commits a .gitignore of their own upstream: it must still fast-forward.
    new = remotes.push(remotes.secrets, {".gitignore": "*.log\n"}, "ignore logs")
    res = _init_plain(root)
    assert res.code == 0, res.out + res.err
    assert _head(root / "secrets") == new
    lines = (root / "secrets" / ".gitignore").read_text().splitlines()
    assert lines[0] == "*.log" and "*.txt" in lines and "!*.enc.txt" in lines
    assert _ignored(root / "secrets", "x.txt") and not _ignored(root / "secrets", "x.enc.txt")


def test_gitignore_that_unignores_plaintext_is_fixed(tmp_path: Path, isolated_home: Path) -> None:
    r = _remotes(tmp_path, isolated_home)
    # All of itsup's lines present, but a later user line undoes the first one.
    r.push(r.secrets, {".gitignore": "*.txt\n!*.enc.txt\n!*.txt\n"}, "oops")
    root = tmp_path / "host"
    _clone_both(root, r)
    assert _ignored(root / "secrets", "x.txt")
    assert not _ignored(root / "secrets", "x.enc.txt")
    assert "!*.txt" in (root / "secrets" / ".gitignore").read_text().splitlines()


# -- the layout check ------------------------------------------------------------------------


def test_invalid_itsup_yml_exits_4_naming_file_and_line(
    tmp_path: Path, isolated_home: Path
) -> None:
    files = {**PROJECTS_FILES, "itsup.yml": "backup:\n  local:\n    pathh: /srv/backups\n"}
    r = _remotes(tmp_path, isolated_home, files)
    root = tmp_path / "host"
    root.mkdir()
    res = init_both(root, r)
    assert res.code == 4, res.out + res.err
    assert f"{root / 'projects' / 'itsup.yml'}:3: backup.local.pathh: unknown key" in res.err
    assert (root / "projects" / "itsup.yml").is_file()  # cloned all the same
    assert "Traceback" not in res.err


def test_missing_itsup_yml_exits_4(tmp_path: Path, isolated_home: Path) -> None:
    files = {k: v for k, v in PROJECTS_FILES.items() if k != "itsup.yml"}
    r = _remotes(tmp_path, isolated_home, files)
    root = tmp_path / "host"
    root.mkdir()
    res = init_both(root, r)
    assert res.code == 4, res.out + res.err
    assert f"{root / 'projects' / 'itsup.yml'}: not found" in res.err


def test_missing_ingress_is_reported(tmp_path: Path, isolated_home: Path) -> None:
    files = {k: v for k, v in PROJECTS_FILES.items() if k != "blog/ingress.yml"}
    r = _remotes(tmp_path, isolated_home, files)
    root = tmp_path / "host"
    root.mkdir()
    res = init_both(root, r)
    assert res.code == 0, res.out + res.err
    assert "itsup: warning: project blog: ingress.yml missing in projects/blog/" in res.err
    assert "project app: docker-compose.yml, ingress.yml" in res.out
    assert "project app" not in res.err


def test_without_an_age_key_the_secrets_are_a_warning_not_a_crash(
    tmp_path: Path, isolated_home: Path
) -> None:
    files = {**PROJECTS_FILES, "itsup.yml": "backup:\n  local:\n    path: ${BACKUP_DIR}\n"}
    r = _remotes(tmp_path, isolated_home, files)
    r.key.unlink()  # a new host: the key has not been restored yet
    root = tmp_path / "host"
    root.mkdir()
    res = init_both(root, r)
    assert res.code == 0, res.out + res.err
    assert "shared secrets: not loaded: secrets/itsup.enc.txt: no age key found" in res.err
    assert "itsup: warning: age key: none at" in res.err
    assert f"put the age key in {r.key}" in res.out
    assert "Traceback" not in res.err


def test_key_that_is_not_a_recipient_is_reported(tmp_path: Path, remotes: Remotes) -> None:
    new_age_key(remotes.key)  # replace the key with one the secrets were not made for
    root = tmp_path / "host"
    root.mkdir()
    res = init_both(root, remotes)
    assert res.code == 0, res.out + res.err
    assert "age key:" in res.err and "not a recipient" in res.err


# -- one repository for both folders ---------------------------------------------------------


def _single_remote(tmp_path: Path, r: Remotes) -> Path:
    remote = bare_remote(r.base, "host-config")
    files: dict[str, str | bytes] = {f"projects/{k}": v for k, v in PROJECTS_FILES.items()}
    files.update({f"secrets/{k}": v for k, v in _secrets_files(tmp_path / "one", r.key).items()})
    seed_remote(remote, files, r.base / "seed-single")
    return remote


def test_single_repository_into_an_empty_root_then_rerun_pulls(
    tmp_path: Path, remotes: Remotes
) -> None:
    (tmp_path / "one").mkdir()
    remote = _single_remote(tmp_path, remotes)
    root = tmp_path / "new-host"
    res = run_itsup("init", "--repo-url", str(remote), env={"ITSUP_ROOT": str(root)})
    assert res.code == 0, res.out + res.err
    assert git("rev-parse", "--show-toplevel", cwd=root / "projects") == str(root.resolve())
    for rel, content in PROJECTS_FILES.items():
        assert (root / "projects" / rel).read_text() == content
    assert (root / "secrets" / "itsup.enc.txt").is_file()
    assert _ignored(root, "secrets/x.txt") and not _ignored(root, "secrets/x.enc.txt")
    # Later, no option at all: the repository holding projects/ is found and pulled.
    (root / "logs").mkdir()
    (root / "logs" / "backup.log").write_text("state that is not in git\n")
    new = remotes.push(remote, {"projects/traefik.yml": "log:\n  level: DEBUG\n"})
    res = _init_plain(root)
    assert res.code == 0, res.out + res.err
    assert _head(root) == new
    assert (root / "projects" / "traefik.yml").read_text() == "log:\n  level: DEBUG\n"
    assert "projects/ + secrets/: updated" in res.out


def test_single_repository_into_a_root_that_already_holds_state(
    tmp_path: Path, remotes: Remotes
) -> None:
    (tmp_path / "one").mkdir()
    remote = _single_remote(tmp_path, remotes)
    root = tmp_path / "host"
    (root / "logs").mkdir(parents=True)
    (root / "logs" / "backup.log").write_text("old log\n")
    (root / "upstream" / "app").mkdir(parents=True)
    (root / "upstream" / "app" / "data.db").write_bytes(b"\x00state")
    res = run_itsup("init", "--repo-url", str(remote), root=root)
    assert res.code == 0, res.out + res.err
    assert "files already there were kept" in res.out
    assert (root / "logs" / "backup.log").read_text() == "old log\n"
    assert (root / "upstream" / "app" / "data.db").read_bytes() == b"\x00state"
    assert (root / "projects" / "itsup.yml").read_text() == PROJECTS_FILES["itsup.yml"]
    assert git("rev-parse", "--abbrev-ref", "@{upstream}", cwd=root) == "origin/main"
    # The state folders stay untracked: a rerun is not blocked by them.
    res = _init_plain(root)
    assert res.code == 0, res.out + res.err
    assert "already up to date" in res.out


def test_single_repository_never_overwrites_a_local_file(tmp_path: Path, remotes: Remotes) -> None:
    (tmp_path / "one").mkdir()
    remote = _single_remote(tmp_path, remotes)
    root = tmp_path / "host"
    (root / "projects").mkdir(parents=True)
    (root / "projects" / "itsup.yml").write_text("# the host's own copy\n")
    res = run_itsup("init", "--repo-url", str(remote), root=root)
    assert res.code == 1, res.out + res.err
    assert "would be overwritten: projects/itsup.yml" in res.err
    assert "nothing was changed" in res.err
    assert (root / "projects" / "itsup.yml").read_text() == "# the host's own copy\n"
    assert not (root / ".git").exists()  # left as it was found
    assert sorted(p.name for p in root.iterdir()) == ["projects"]


def test_repo_url_refused_when_projects_is_a_repository_of_its_own(
    tmp_path: Path, remotes: Remotes
) -> None:
    root = tmp_path / "host"
    _clone_both(root, remotes)
    res = run_itsup("init", "--repo-url", str(remotes.projects), root=root)
    assert res.code == 2, res.out + res.err
    assert "--projects-url and --secrets-url" in res.err
    assert not (root / ".git").exists()


# -- on a terminal ----------------------------------------------------------------------------


def _on_terminal(root: Path, answers: list[str], timeout: float = 120) -> tuple[int, str, str]:
    """Run `itsup init` with a real terminal as stdin, typing `answers` at the prompts."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*ITSUP, "--root", str(root), "init"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
        text=True,
    )
    os.close(slave)
    try:
        os.write(master, "".join(a + "\n" for a in answers).encode())
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    os.read(master, 4096)  # drain the terminal's echo
                except OSError:
                    break
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


@pytest.mark.skipif(sys.platform != "linux", reason="uses a Linux pseudo-terminal")
def test_asks_for_both_urls_on_a_terminal(tmp_path: Path, remotes: Remotes) -> None:
    root = tmp_path / "host"
    root.mkdir()
    code, out, err = _on_terminal(root, [str(remotes.projects), str(remotes.secrets)])
    assert code == 0, out + err
    assert "Git URL of the projects/ repository" in err
    assert "Git URL of the secrets/ repository" in err
    assert (root / "projects" / "itsup.yml").read_text() == PROJECTS_FILES["itsup.yml"]
    assert git("remote", "get-url", "origin", cwd=root / "secrets") == str(remotes.secrets)


@pytest.mark.skipif(sys.platform != "linux", reason="uses a Linux pseudo-terminal")
def test_empty_secrets_answer_means_one_repository(tmp_path: Path, remotes: Remotes) -> None:
    (tmp_path / "one").mkdir()
    remote = _single_remote(tmp_path, remotes)
    root = tmp_path / "host"
    root.mkdir()
    code, out, err = _on_terminal(root, [str(remote), ""])
    assert code == 0, out + err
    assert git("remote", "get-url", "origin", cwd=root) == str(remote)
    assert (root / "secrets" / "itsup.enc.txt").is_file()


def test_placeholders_nobody_defined_yet_are_a_warning_on_a_new_setup(
    tmp_path: Path, isolated_home: Path
) -> None:
    """A brand-new setup has no secrets yet: itsup.yml's ${VAR}s are a to-do, not an error."""
    files = {**PROJECTS_FILES, "itsup.yml": "backup:\n  local:\n    path: ${BACKUP_DIR}\n"}
    base = tmp_path / "remotes"
    base.mkdir()
    projects = bare_remote(base, "projects")
    seed_remote(projects, files, base / "seed")
    secrets = bare_remote(base, "secrets")  # empty: nothing encrypted yet
    root = tmp_path / "host"
    root.mkdir()
    res = run_itsup("init", "--projects-url", projects, "--secrets-url", secrets, root=root)
    assert res.code == 0, res.out + res.err
    assert "needs BACKUP_DIR, which no secrets file defines yet" in res.err
    assert "itsup encrypt itsup" in res.err
