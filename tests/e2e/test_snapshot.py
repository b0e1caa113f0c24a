"""`itsup snapshot`, `snapshot prune` and `snapshot verify` against real git remotes.

Bare repositories in tmp folders stand in for GitHub/Gitea; secrets are made
with the real sops binary and fresh age keys. Every test runs itsup as an
operator would, in a subprocess, with a HOME of its own.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from helpers import run_itsup

BACKUP_SUBJECT = re.compile(r"^Backup: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
TAG_NAME = re.compile(r"^backup-\d{8}-\d{6}$")
APP_SECRET = "s3cr3t-app-password-4711"
DB_SECRET = "very-secret-db-password-0815"


@dataclass
class Host:
    root: Path
    key_file: Path
    pubkey: str
    projects_remote: Path
    secrets_remote: Path  # the same as projects_remote in the one-repository layout
    tmp: Path

    @property
    def projects(self) -> Path:
        return self.root / "projects"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"


def encrypted(pubkey: str, name: str, text: str, scratch: Path) -> bytes:
    """`sops -e` of a dotenv text, made in a scratch folder (never in the host)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    sops_config(scratch, pubkey)
    (scratch / f"{name}.txt").write_text(text)
    data = sops_encrypt_file(scratch, f"{name}.txt")
    shutil.rmtree(scratch)
    return data


def add_secret(host: Host, name: str, text: str) -> None:
    """What an operator does: plaintext next to it (ignored), then sops -e to .enc.txt."""
    (host.secrets / f"{name}.txt").write_text(text)
    (host.secrets / f"{name}.enc.txt").write_bytes(sops_encrypt_file(host.secrets, f"{name}.txt"))


def head_of(remote: Path, ref: str = "main") -> str:
    return git("--git-dir", str(remote), "rev-parse", ref)


def subject_of(remote: Path, ref: str = "main") -> str:
    return git("--git-dir", str(remote), "log", "-1", "--format=%s", ref)


def files_of(remote: Path, ref: str = "main") -> set[str]:
    return set(git("--git-dir", str(remote), "ls-tree", "-r", "--name-only", ref).splitlines())


def tags_of(remote: Path) -> set[str]:
    return {
        line.split("refs/tags/")[1]
        for line in git(
            "--git-dir", str(remote), "for-each-ref", "--format=%(refname)", "refs/tags"
        ).splitlines()
    }


def local_tags(repo: Path) -> set[str]:
    return set(git("tag", "-l", cwd=repo).split())


def staged(repo: Path) -> list[str]:
    return git("diff", "--cached", "--name-only", cwd=repo).splitlines()


def push_change(remote: Path, work: Path, change) -> None:
    """Someone else changes the remote (plain git in their own clone)."""
    git("clone", "--quiet", str(remote), str(work))
    change(work)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "elsewhere", cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but .git/, with its bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }


def plaintext_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*.txt")
        if not p.name.endswith(".enc.txt")
    )


@pytest.fixture
def age_key(tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch):
    key_file = tmp_path / "keys" / "age.txt"
    pubkey = new_age_key(key_file)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key_file))
    return key_file, pubkey


@pytest.fixture
def host(tmp_path: Path, age_key) -> Host:
    """projects/ and secrets/ as two repositories, cloned from seeded remotes."""
    key_file, pubkey = age_key
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    projects_remote = bare_remote(remotes, "projects")
    seed_remote(projects_remote, PROJECTS_FILES, tmp_path / "seed-projects")
    secrets_remote = bare_remote(remotes, "secrets")
    seed_remote(
        secrets_remote,
        {
            ".sops.yaml": f"creation_rules:\n  - path_regex: \\.txt$\n    age: {pubkey}\n",
            ".gitignore": "*.txt\n!*.enc.txt\n",
            "app.enc.txt": encrypted(pubkey, "app", f"APP_PASSWORD={APP_SECRET}\n", tmp_path / "s"),
            "itsup.enc.txt": encrypted(
                pubkey, "itsup", "BACKUP_DIR=/tmp/itsup-test\n", tmp_path / "s"
            ),
        },
        tmp_path / "seed-secrets",
    )
    root = tmp_path / "root"
    root.mkdir()
    git("clone", "--quiet", str(projects_remote), str(root / "projects"))
    git("clone", "--quiet", str(secrets_remote), str(root / "secrets"))
    (root / "secrets" / "app.txt").write_text(f"APP_PASSWORD={APP_SECRET}\n")  # decrypted copy
    return Host(root, key_file, pubkey, projects_remote, secrets_remote, tmp_path)


@pytest.fixture
def one_repo_host(tmp_path: Path, age_key) -> Host:
    """The host root itself is the repository: projects/ and secrets/ in one."""
    key_file, pubkey = age_key
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    remote = bare_remote(remotes, "host")
    files: dict[str, str | bytes] = {f"projects/{k}": v for k, v in PROJECTS_FILES.items()}
    files[".gitignore"] = "secrets/*.txt\n!secrets/*.enc.txt\nupstream/\n"
    files["secrets/.sops.yaml"] = f"creation_rules:\n  - path_regex: \\.txt$\n    age: {pubkey}\n"
    files["secrets/app.enc.txt"] = encrypted(
        pubkey, "app", f"APP_PASSWORD={APP_SECRET}\n", tmp_path / "s"
    )
    seed_remote(remote, files, tmp_path / "seed")
    root = tmp_path / "root"
    git("clone", "--quiet", str(remote), str(root))
    (root / "secrets" / "app.txt").write_text(f"APP_PASSWORD={APP_SECRET}\n")
    return Host(root, key_file, pubkey, remote, remote, tmp_path)


# -- itsup snapshot ------------------------------------------------------------------


def test_snapshot_commits_projects_and_encrypted_secrets_and_pushes(host: Host) -> None:
    (host.projects / "app" / "ingress.yml").write_text("enabled: false\n")
    (host.projects / "shop").mkdir()
    (host.projects / "shop" / "docker-compose.yml").write_text("services: {}\n")
    (host.projects / "shop" / "ingress.yml").write_text("enabled: true\n")
    add_secret(host, "db", f"DB_PASSWORD={DB_SECRET}\n")  # new .enc.txt (+ ignored plaintext)
    (host.secrets / "app.enc.txt").unlink()  # a project retired
    (host.secrets / "notes.md").write_text("not a secrets file: never staged\n")
    before = datetime.now().astimezone()

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    for remote in (host.projects_remote, host.secrets_remote):
        subject = subject_of(remote)
        assert BACKUP_SUBJECT.match(subject), subject
        when = datetime.fromisoformat(subject.removeprefix("Backup: "))
        assert before - timedelta(seconds=2) <= when <= datetime.now().astimezone()
    assert {"shop/docker-compose.yml", "shop/ingress.yml"} <= files_of(host.projects_remote)
    assert (
        git("--git-dir", str(host.projects_remote), "show", "main:app/ingress.yml")
        == "enabled: false"
    )
    secret_files = files_of(host.secrets_remote)
    assert "db.enc.txt" in secret_files
    assert "app.enc.txt" not in secret_files  # the deletion was committed too
    assert not {"db.txt", "app.txt", "notes.md"} & secret_files
    # the untracked file is left alone, not staged
    assert "?? notes.md" in git("status", "--porcelain", cwd=host.secrets)
    assert DB_SECRET not in r.out + r.err and APP_SECRET not in r.out + r.err


@pytest.mark.parametrize("how", ["forced-into-index", "committed-earlier"])
def test_plaintext_secret_is_refused_and_nothing_committed(host: Host, how: str) -> None:
    git("add", "-f", "app.txt", cwd=host.secrets)
    if how == "committed-earlier":  # committed by hand (not yet pushed)
        git("commit", "--quiet", "-m", "oops", cwd=host.secrets)
    (host.projects / "traefik.yml").write_text("log:\n  level: DEBUG\n")
    heads = [
        git("rev-parse", "HEAD", cwd=host.projects),
        git("rev-parse", "HEAD", cwd=host.secrets),
    ]
    remote_heads = [head_of(host.projects_remote), head_of(host.secrets_remote)]
    index_before = staged(host.secrets)

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 1, (r.out, r.err)
    assert "secrets/app.txt" in r.err
    assert "rm --cached" in r.err
    assert APP_SECRET not in r.out + r.err
    assert "Traceback" not in r.err
    # nothing committed anywhere, nothing pushed, and the index is as it was
    assert [
        git("rev-parse", "HEAD", cwd=host.projects),
        git("rev-parse", "HEAD", cwd=host.secrets),
    ] == heads
    assert [head_of(host.projects_remote), head_of(host.secrets_remote)] == remote_heads
    assert staged(host.projects) == []
    assert staged(host.secrets) == index_before

    # the fix the message gives works: untrack it, snapshot again
    git("rm", "--quiet", "--cached", "app.txt", cwd=host.secrets)
    r = run_itsup("snapshot", root=host.root)
    assert r.code == 0, r.err
    assert "app.txt" not in files_of(host.secrets_remote)
    assert (host.secrets / "app.txt").is_file()  # the plaintext stays on disk
    assert git("show", "main:traefik.yml", "--", cwd=host.projects) == "log:\n  level: DEBUG"


def test_plaintext_renamed_to_enc_txt_is_refused(host: Host) -> None:
    (host.secrets / "evil.enc.txt").write_text(f"DB_PASSWORD={DB_SECRET}\n")
    remote_head = head_of(host.secrets_remote)

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 1, (r.out, r.err)
    assert "secrets/evil.enc.txt" in r.err
    assert "not SOPS-encrypted" in r.err
    assert DB_SECRET not in r.out + r.err
    assert head_of(host.secrets_remote) == remote_head
    assert staged(host.secrets) == []
    assert "evil.enc.txt" not in git("ls-files", cwd=host.secrets)


def test_age_secret_key_in_projects_is_refused(host: Host) -> None:
    key_text = host.key_file.read_text()
    (host.projects / "app" / "age.key").write_text(key_text)
    (host.projects / "app" / "ingress.yml").write_text("enabled: false\n")
    remote_head = head_of(host.projects_remote)

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 1, (r.out, r.err)
    assert "projects/app/age.key" in r.err
    assert "age secret key" in r.err
    secret_line = next(line for line in key_text.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    assert secret_line not in r.out + r.err
    assert head_of(host.projects_remote) == remote_head
    assert staged(host.projects) == []


def test_nothing_to_commit_says_so_and_still_pushes_waiting_commits(host: Host) -> None:
    remote_heads = [head_of(host.projects_remote), head_of(host.secrets_remote)]
    r = run_itsup("snapshot", root=host.root)
    assert r.code == 0, r.err
    assert r.out.count("nothing to commit") == 2
    assert [head_of(host.projects_remote), head_of(host.secrets_remote)] == remote_heads

    # a commit made by hand and never pushed: snapshot has nothing to commit, but pushes it
    (host.projects / "traefik.yml").write_text("log:\n  level: WARN\n")
    git("commit", "--quiet", "-am", "by hand", cwd=host.projects)
    r = run_itsup("snapshot", root=host.root)
    assert r.code == 0, r.err
    assert "nothing to commit" in r.out
    assert head_of(host.projects_remote) == git("rev-parse", "HEAD", cwd=host.projects)
    assert subject_of(host.projects_remote) == "by hand"


def test_tag_is_made_and_pushed_even_with_nothing_to_commit(host: Host) -> None:
    r = run_itsup("snapshot", "--tag", root=host.root)

    assert r.code == 0, r.err
    names = local_tags(host.projects)
    assert len(names) == 1
    name = names.pop()
    assert TAG_NAME.match(name), name
    assert name in r.out
    stamp = datetime.strptime(name, "backup-%Y%m%d-%H%M%S")
    assert abs(datetime.now() - stamp) < timedelta(minutes=2)  # local time, like `date`
    for repo, remote in (
        (host.projects, host.projects_remote),
        (host.secrets, host.secrets_remote),
    ):
        assert local_tags(repo) == {name}
        assert tags_of(remote) == {name}
        assert git("cat-file", "-t", f"refs/tags/{name}", cwd=repo) == "tag"  # annotated
        assert git("rev-parse", f"{name}^{{commit}}", cwd=repo) == git(
            "rev-parse", "HEAD", cwd=repo
        )


def test_message_is_added_to_the_commit_subject(host: Host) -> None:
    (host.projects / "traefik.yml").write_text("log:\n  level: ERROR\n")
    r = run_itsup("snapshot", "-m", "before traefik upgrade", root=host.root)
    assert r.code == 0, r.err
    subject = subject_of(host.projects_remote)
    assert subject.startswith("Backup: ") and subject.endswith(" - before traefik upgrade")


def test_one_repository_for_projects_and_secrets(one_repo_host: Host) -> None:
    host = one_repo_host
    (host.projects / "blog" / "ingress.yml").write_text("enabled: false\n")
    add_secret(host, "db", f"DB_PASSWORD={DB_SECRET}\n")
    (host.root / "upstream" / "blog").mkdir(parents=True)
    (host.root / "upstream" / "blog" / "docker-compose.yml").write_text("generated\n")
    (host.root / "proxy").mkdir()
    (host.root / "proxy" / "docker-compose.yml").write_text("not config as code\n")
    before = head_of(host.projects_remote)

    r = run_itsup("snapshot", "--tag", root=host.root)

    assert r.code == 0, r.err
    # one commit holding both halves, one tag
    assert (
        git("--git-dir", str(host.projects_remote), "rev-list", "--count", f"{before}..main") == "1"
    )
    assert BACKUP_SUBJECT.match(subject_of(host.projects_remote))
    files = files_of(host.projects_remote)
    assert "secrets/db.enc.txt" in files
    assert not {"secrets/db.txt", "secrets/app.txt", "proxy/docker-compose.yml"} & files
    assert not any(f.startswith("upstream/") for f in files)
    assert len(tags_of(host.projects_remote)) == 1

    # the safety checks hold in this layout too
    git("add", "-f", "secrets/app.txt", cwd=host.root)
    r = run_itsup("snapshot", root=host.root)
    assert r.code == 1
    assert "secrets/app.txt" in r.err
    assert staged(host.root) == ["secrets/app.txt"]  # as the operator left it
    git("rm", "--quiet", "--cached", "secrets/app.txt", cwd=host.root)

    r = run_itsup("snapshot", "verify", root=host.root)
    assert r.code == 0, (r.out, r.err)


def test_unreachable_remote_keeps_the_commit_and_exits_6(host: Host) -> None:
    git("remote", "set-url", "origin", str(host.tmp / "gone" / "projects.git"), cwd=host.projects)
    (host.projects / "traefik.yml").write_text("log:\n  level: DEBUG\n")

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 6, (r.out, r.err)
    assert "Traceback" not in r.err
    assert "kept locally" in r.err
    assert BACKUP_SUBJECT.match(git("log", "-1", "--format=%s", cwd=host.projects))
    assert git("status", "--porcelain", cwd=host.projects) == ""

    # back online: the next run has nothing to commit and pushes the waiting commit
    git("remote", "set-url", "origin", str(host.projects_remote), cwd=host.projects)
    r = run_itsup("snapshot", root=host.root)
    assert r.code == 0, r.err
    assert head_of(host.projects_remote) == git("rev-parse", "HEAD", cwd=host.projects)


def test_push_rejected_when_the_remote_moved_on(host: Host) -> None:
    push_change(
        host.projects_remote,
        host.tmp / "elsewhere",
        lambda w: (w / "blog" / "ingress.yml").write_text("enabled: false\n"),
    )
    (host.projects / "traefik.yml").write_text("log:\n  level: DEBUG\n")

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 1, (r.out, r.err)
    assert "pull --rebase" in r.err
    assert "kept locally" in r.err
    assert BACKUP_SUBJECT.match(git("log", "-1", "--format=%s", cwd=host.projects))
    assert subject_of(host.projects_remote) == "elsewhere"


def test_no_remote_commits_locally_and_exits_3(host: Host) -> None:
    git("remote", "remove", "origin", cwd=host.secrets)
    add_secret(host, "db", f"DB_PASSWORD={DB_SECRET}\n")

    r = run_itsup("snapshot", root=host.root)

    assert r.code == 3, (r.out, r.err)
    assert "no remote" in r.err
    assert git("ls-files", "db.enc.txt", cwd=host.secrets) == "db.enc.txt"
    assert BACKUP_SUBJECT.match(git("log", "-1", "--format=%s", cwd=host.secrets))


def test_missing_repository_is_a_config_error(host: Host) -> None:
    shutil.rmtree(host.secrets / ".git")
    r = run_itsup("snapshot", root=host.root)
    assert r.code == 4
    assert "itsup init" in r.err


# -- itsup snapshot prune --------------------------------------------------------


def make_tag(repo: Path, name: str, *, push: bool = True, keep_local: bool = True) -> None:
    git("tag", name, cwd=repo)
    if push:
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=repo)
    if not keep_local:
        git("tag", "-d", name, cwd=repo)


def days_ago(n: int) -> str:
    return (datetime.now() - timedelta(days=n)).strftime("backup-%Y%m%d-%H%M%S")


def test_prune_keep_last_locally_and_on_the_remote(host: Host) -> None:
    old = ["backup-20240101-000000", "backup-20240201-000000"]
    make_tag(host.projects, old[0], keep_local=False)  # only on the remote
    make_tag(host.projects, old[1], push=False)  # only here
    recent = days_ago(1)
    make_tag(host.projects, "backup-20240301-000000")
    make_tag(host.projects, recent)
    make_tag(host.projects, "backup-manual")  # no time in the name: never touched
    make_tag(host.projects, "release-1.0")  # not a backup tag
    secrets_tags = {"backup-20230101-000000", days_ago(2)}
    for name in secrets_tags:
        make_tag(host.secrets, name)
    all_local = local_tags(host.projects)
    all_remote = tags_of(host.projects_remote)

    r = run_itsup("snapshot", "prune", "--keep-last", "2", "--dry-run", root=host.root)
    assert r.code == 0, r.err
    assert all(name in r.out for name in old)
    assert "nothing deleted" in r.out
    assert local_tags(host.projects) == all_local
    assert tags_of(host.projects_remote) == all_remote

    r = run_itsup("snapshot", "prune", "--keep-last", "2", root=host.root)
    assert r.code == 0, r.err
    kept = {"backup-20240301-000000", recent, "backup-manual", "release-1.0"}
    assert local_tags(host.projects) == kept
    assert tags_of(host.projects_remote) == kept
    assert "backup-manual" in r.err  # said it ignored it
    # per repository: secrets had only two, so both stay
    assert tags_of(host.secrets_remote) == secrets_tags
    assert local_tags(host.secrets) == secrets_tags


def test_prune_older_than_and_both_options(host: Host) -> None:
    tags = [days_ago(100), days_ago(50), days_ago(1)]  # oldest first
    for name in tags:
        make_tag(host.projects, name)

    # both: only tags beyond the newest 3 AND older than 30 days: none
    r = run_itsup("snapshot", "prune", "--keep-last", "3", "--older-than", "30d", root=host.root)
    assert r.code == 0, r.err
    assert tags_of(host.projects_remote) == set(tags)

    # beyond the newest 1 and older than 60 days: only the 100-day-old one
    r = run_itsup("snapshot", "prune", "--keep-last", "1", "--older-than", "60d", root=host.root)
    assert r.code == 0, r.err
    assert tags_of(host.projects_remote) == set(tags[1:])
    assert local_tags(host.projects) == set(tags[1:])

    r = run_itsup("snapshot", "prune", "--older-than", "4w", root=host.root)
    assert r.code == 0, r.err
    assert tags_of(host.projects_remote) == {tags[2]}
    assert local_tags(host.projects) == {tags[2]}


def test_prune_needs_an_option(host: Host) -> None:
    r = run_itsup("snapshot", "prune", root=host.root)
    assert r.code == 2
    r = run_itsup("snapshot", "prune", "--older-than", "soon", root=host.root)
    assert r.code == 2
    assert "not a duration" in r.err


# -- itsup snapshot verify -------------------------------------------------------


def test_verify_passes_on_good_remotes_and_writes_no_plaintext(host: Host) -> None:
    secrets_before = tree_bytes(host.secrets)
    scratch = host.tmp / "scratch-tmp"
    scratch.mkdir()
    work = host.tmp / "verify-work"

    r = run_itsup(
        "snapshot", "verify", "--workdir", work, root=host.root, env={"TMPDIR": str(scratch)}
    )

    assert r.code == 0, (r.out, r.err)
    for item in (
        "projects remote",
        "secrets remote",
        "projects/itsup.yml",
        "projects/app",
        "projects/blog",
        "secrets/app.enc.txt",
        "secrets/itsup.enc.txt",
    ):
        assert item in r.out
    assert "FAIL" not in r.out
    assert APP_SECRET not in r.out + r.err
    assert (work / "projects" / "itsup.yml").is_file()
    assert (work / "secrets" / "app.enc.txt").is_file()
    assert plaintext_files(work) == []
    assert tree_bytes(host.secrets) == secrets_before

    r = run_itsup("snapshot", "verify", "--json", root=host.root, env={"TMPDIR": str(scratch)})
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["ok"] is True and report["failed"] == 0
    statuses = {c["item"]: c["status"] for c in report["checks"]}
    assert statuses["secrets/app.enc.txt"] == "ok"
    assert statuses["projects pushed"] == "ok"
    assert list(scratch.iterdir()) == []  # the temporary clone is gone


def test_verify_warns_about_work_not_pushed(host: Host) -> None:
    (host.projects / "traefik.yml").write_text("log:\n  level: DEBUG\n")
    git("commit", "--quiet", "-am", "not pushed", cwd=host.projects)
    add_secret(host, "db", f"DB_PASSWORD={DB_SECRET}\n")

    r = run_itsup("snapshot", "verify", "--json", root=host.root)

    assert r.code == 0, r.err  # the remotes are fine; this host is ahead of them
    statuses = {c["item"]: c for c in json.loads(r.out)["checks"]}
    assert statuses["projects pushed"]["status"] == "warn"
    assert "itsup snapshot" in statuses["projects pushed"]["detail"]
    assert statuses["secrets uncommitted"]["status"] == "warn"


def _corrupt(path: Path) -> None:
    text = path.read_text()
    # change one character inside the first encrypted value: authentication must fail
    start = text.index("ENC[AES256_GCM,data:") + len("ENC[AES256_GCM,data:")
    flipped = "A" if text[start] != "A" else "B"
    path.write_text(text[:start] + flipped + text[start + 1 :])


def _commit_plaintext(work: Path) -> None:
    (work / "app.txt").write_text(f"APP_PASSWORD={APP_SECRET}\n")
    git("add", "-f", "app.txt", cwd=work)


DAMAGE = {
    "missing-ingress": (
        "projects",
        lambda w: (w / "blog" / "ingress.yml").unlink(),
        "projects/blog",
        "missing ingress.yml",
    ),
    "corrupted-enc": (
        "secrets",
        lambda w: _corrupt(w / "app.enc.txt"),
        "secrets/app.enc.txt",
        "damaged",
    ),
    "truncated-enc": (
        "secrets",
        lambda w: (w / "app.enc.txt").write_bytes((w / "app.enc.txt").read_bytes()[:40]),
        "secrets/app.enc.txt",
        "not a SOPS-encrypted file",
    ),
    "plaintext-committed": (
        "secrets",
        _commit_plaintext,
        "secrets/app.txt",
        "plaintext secret is committed",
    ),
    "invalid-itsup-yml": (
        "projects",
        lambda w: (w / "itsup.yml").write_text("backup:\n  nonsense_key: 1\n"),
        "projects/itsup.yml",
        "nonsense_key",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_fails_naming_the_damaged_item(host: Host, damage: str) -> None:
    which, change, item, detail = DAMAGE[damage]
    remote = host.projects_remote if which == "projects" else host.secrets_remote
    push_change(remote, host.tmp / "elsewhere", change)
    secrets_before = tree_bytes(host.secrets)
    work = host.tmp / "verify-work"

    r = run_itsup("snapshot", "verify", "--workdir", work, root=host.root)

    assert r.code == 5, (r.out, r.err)
    assert "Traceback" not in r.err
    assert item in r.err  # the summary line names it
    r_json = run_itsup("snapshot", "verify", "--json", root=host.root)
    assert r_json.code == 5
    checks = {c["item"]: c for c in json.loads(r_json.out)["checks"]}
    assert checks[item]["status"] == "fail", checks
    assert detail in checks[item]["detail"]
    failed = [name for name, c in checks.items() if c["status"] == "fail"]
    assert failed == [item]  # the rest of the remote is reported fine
    assert APP_SECRET not in r.out + r.err + r_json.out + r_json.err
    assert plaintext_files(work) == []  # a committed plaintext is never checked out
    assert tree_bytes(host.secrets) == secrets_before


def test_verify_without_a_host_root_given_urls(host: Host) -> None:
    r = run_itsup(
        "snapshot", "verify", "--json",
        "--projects-url", host.projects_remote, "--secrets-url", host.secrets_remote,
    )  # fmt: skip
    assert r.code == 0, (r.out, r.err)
    items = {c["item"] for c in json.loads(r.out)["checks"]}
    assert "secrets/app.enc.txt" in items
    assert "projects pushed" not in items  # no local repositories to compare with


def test_verify_without_the_age_key_fails(host: Host) -> None:
    other = host.tmp / "other-key.txt"
    new_age_key(other)
    r = run_itsup(
        "snapshot", "verify", "--json", root=host.root, env={"SOPS_AGE_KEY_FILE": str(other)}
    )
    assert r.code == 5
    checks = {c["item"]: c for c in json.loads(r.out)["checks"]}
    assert checks["secrets/app.enc.txt"]["status"] == "fail"
    assert "none of the age keys" in checks["secrets/app.enc.txt"]["detail"]


def test_verify_unreachable_remote_exits_6(host: Host) -> None:
    r = run_itsup("snapshot", "verify", "--secrets-url", host.tmp / "nowhere.git", root=host.root)
    assert r.code == 6, (r.out, r.err)
    assert "Traceback" not in r.err
    assert "secrets remote" in r.out
