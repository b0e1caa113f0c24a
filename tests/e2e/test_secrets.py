"""Secrets as code: keygen, encrypt/decrypt through the real sops, history and recovery.

Every test runs with its own HOME (`isolated_home`), fresh age keys from
pyrage, the sops binary shipped with itsup, and real git repositories.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from gitsops import DOTENV, git, new_age_key, sops, sops_encrypt_file
from helpers import run_itsup, write_config

SECRET = "hunter2-do-not-print"
PLAIN = f"DB_PASSWORD={SECRET}\n# the API token\nAPI_TOKEN=tok-{SECRET}\nEMPTY=\n"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


@pytest.fixture
def host(tmp_path: Path, isolated_home: Path) -> Path:
    root = tmp_path / "host"
    write_config(root, "backup:\n  local:\n    path: ${BACKUP_DIR}\n")
    (root / "secrets").mkdir()
    return root


@pytest.fixture
def keyed_host(host: Path, isolated_home: Path) -> Path:
    """A host whose operator ran `itsup keygen` (key where sops looks, recipient registered)."""
    r = run_itsup("keygen", root=host)
    assert r.code == 0, r.err
    return host


def default_key(home: Path) -> Path:
    return home / ".config" / "sops" / "age" / "keys.txt"


# -- keygen -------------------------------------------------------------------------


def test_keygen_writes_key_where_sops_looks_and_registers_it(host: Path, isolated_home: Path):
    r = run_itsup("keygen", root=host)
    assert r.code == 0, r.err
    key = default_key(isolated_home)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    public = next(line.split()[-1] for line in key.read_text().splitlines() if "public key" in line)
    assert public in r.out
    assert public in (host / "secrets" / ".sops.yaml").read_text()
    assert "AGE-SECRET-KEY" not in r.out + r.err  # the secret half is never printed

    # Plain sops, run as an operator would (inside secrets/, no key options), uses it.
    (host / "secrets" / "x.txt").write_text("A=1\n")
    enc = sops_encrypt_file(host / "secrets", "x.txt")
    assert public.encode() in enc
    back = sops("-d", *DOTENV, "/dev/stdin", cwd=host / "secrets", data=enc)
    assert back.returncode == 0 and back.stdout == b"A=1\n"


def test_keygen_refuses_to_overwrite_an_existing_key(host: Path, isolated_home: Path):
    assert run_itsup("keygen", root=host).code == 0
    key = default_key(isolated_home)
    before = key.read_bytes()
    r = run_itsup("keygen", root=host)
    assert r.code == 1
    assert "not overwritten" in r.err and "Traceback" not in r.err
    assert key.read_bytes() == before


def test_keygen_honours_sops_age_key_file(host: Path, tmp_path: Path, monkeypatch):
    custom = tmp_path / "keys" / "ops.txt"
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(custom))
    assert run_itsup("keygen", root=host).code == 0
    assert custom.is_file() and stat.S_IMODE(custom.stat().st_mode) == 0o600
    shown = run_itsup("keygen", "--show", root=host)
    assert shown.code == 0 and shown.out.strip().startswith("age1")
    assert shown.out.strip() in (host / "secrets" / ".sops.yaml").read_text()


def test_second_key_and_offline_recovery_key_are_both_recipients(
    keyed_host: Path, tmp_path: Path, isolated_home: Path
):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    offline = tmp_path / "offline-recovery.txt"
    offline_pub = new_age_key(offline)
    colleague = tmp_path / "colleague.txt"
    colleague_pub = new_age_key(colleague)

    r = run_itsup("secrets", "add-recipient", offline_pub, colleague_pub, root=keyed_host)
    assert r.code == 0, r.err
    assert "rekeyed    secrets/app.enc.txt" in r.out
    config = (secrets / ".sops.yaml").read_text()
    assert offline_pub in config and colleague_pub in config
    # Each new key opens the existing file with plain sops, without the first key.
    for key in (offline, colleague):
        proc = sops("-d", *DOTENV, "app.enc.txt", cwd=secrets, key_file=key)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.decode() == PLAIN
    no_secret(r.out, r.err)

    # Removing the colleague re-encrypts without them.
    r = run_itsup("secrets", "remove-recipient", colleague_pub, root=keyed_host)
    assert r.code == 0, r.err
    assert colleague_pub not in (secrets / ".sops.yaml").read_text()
    assert sops("-d", *DOTENV, "app.enc.txt", cwd=secrets, key_file=colleague).returncode != 0
    assert sops("-d", *DOTENV, "app.enc.txt", cwd=secrets, key_file=offline).returncode == 0


def test_add_recipient_refuses_a_secret_key(keyed_host: Path, tmp_path: Path):
    key = tmp_path / "k.txt"
    new_age_key(key)
    secret_line = next(x for x in key.read_text().splitlines() if x.startswith("AGE-SECRET"))
    r = run_itsup("secrets", "add-recipient", secret_line, root=keyed_host)
    assert r.code == 2
    assert secret_line not in r.out + r.err
    assert "public key" in r.err


# -- encrypt / decrypt ------------------------------------------------------------------


def test_encrypt_decrypt_round_trip_and_modes(keyed_host: Path):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    (secrets / "itsup.txt").write_text("BACKUP_DIR=/nowhere\n")
    r = run_itsup("encrypt", root=keyed_host)
    assert r.code == 0, r.err
    assert "encrypted  secrets/app.enc.txt" in r.out and "secrets/itsup.enc.txt" in r.out
    enc = (secrets / "app.enc.txt").read_bytes()
    assert SECRET.encode() not in enc and b"sops_mac=" in enc
    no_secret(r.out, r.err)

    (secrets / "app.txt").unlink()
    (secrets / "itsup.txt").unlink()
    r = run_itsup("decrypt", "app", root=keyed_host)
    assert r.code == 0, r.err
    assert (secrets / "app.txt").read_text() == PLAIN
    assert stat.S_IMODE((secrets / "app.txt").stat().st_mode) == 0o600
    assert not (secrets / "itsup.txt").exists()  # only the one asked for
    no_secret(r.out, r.err)


def test_encrypting_unchanged_content_leaves_the_file_byte_identical(keyed_host: Path):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", "app", root=keyed_host).code == 0
    first = sha(secrets / "app.enc.txt")
    r = run_itsup("encrypt", "app", root=keyed_host)
    assert r.code == 0 and "unchanged" in r.out
    assert sha(secrets / "app.enc.txt") == first
    # Blank lines sops does not keep are no change either.
    (secrets / "app.txt").write_text("\n" + PLAIN + "\n\n")
    assert run_itsup("encrypt", "app", root=keyed_host).code == 0
    assert sha(secrets / "app.enc.txt") == first
    # A real change is written.
    (secrets / "app.txt").write_text(PLAIN + "NEW=1\n")
    r = run_itsup("encrypt", "app", root=keyed_host)
    assert r.code == 0 and "encrypted" in r.out
    assert sha(secrets / "app.enc.txt") != first


def test_plain_sops_and_itsup_interoperate_both_ways(keyed_host: Path):
    secrets = keyed_host / "secrets"
    # Written by plain `sops -e`, read by `itsup decrypt`.
    (secrets / "ops.txt").write_text(PLAIN)
    (secrets / "ops.enc.txt").write_bytes(sops_encrypt_file(secrets, "ops.txt"))
    (secrets / "ops.txt").unlink()
    r = run_itsup("decrypt", "ops", root=keyed_host)
    assert r.code == 0, r.err
    assert (secrets / "ops.txt").read_text() == PLAIN
    # Written by `itsup encrypt`, read by plain `sops -d`.
    (secrets / "web.txt").write_text(PLAIN)
    assert run_itsup("encrypt", "web", root=keyed_host).code == 0
    proc = sops("-d", *DOTENV, "web.enc.txt", cwd=secrets)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == PLAIN


def test_decrypt_never_overwrites_unencrypted_edits(keyed_host: Path):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    edited = PLAIN + "ADDED_LATER=yes\n"
    (secrets / "app.txt").write_text(edited)
    r = run_itsup("decrypt", "app", root=keyed_host)
    assert r.code == 1
    assert "not overwritten" in r.err and "itsup encrypt app" in r.err
    assert (secrets / "app.txt").read_text() == edited
    r = run_itsup("decrypt", "app", "--force", root=keyed_host)
    assert r.code == 0
    assert (secrets / "app.txt").read_text() == PLAIN


def test_missing_key_is_a_clear_config_error(keyed_host: Path, isolated_home: Path):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    (secrets / "app.txt").unlink()
    default_key(isolated_home).rename(isolated_home / "moved-away.txt")
    r = run_itsup("decrypt", "app", root=keyed_host)
    assert r.code == 4
    assert "secrets/app.enc.txt: no age key found" in r.err
    assert "keys.txt" in r.err and "Traceback" not in r.err
    assert not (secrets / "app.txt").exists()


def test_wrong_key_names_the_recipients(
    keyed_host: Path, tmp_path: Path, monkeypatch, isolated_home: Path
):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    (secrets / "app.txt").unlink()
    default_key(isolated_home).unlink()  # the right key is gone; another one is here
    other = tmp_path / "other.txt"
    new_age_key(other)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(other))
    r = run_itsup("decrypt", "app", root=keyed_host)
    assert r.code == 4
    assert "none of the age keys here can decrypt it" in r.err
    assert "age1" in r.err  # which recipient would
    assert not (secrets / "app.txt").exists()


@pytest.mark.parametrize(
    "damage, words, code",
    [
        (lambda b: b"", "is empty", 5),
        (lambda b: b[: len(b) // 3], "not a SOPS-encrypted file", 5),
        (lambda b: b.replace(b"data:", b"data:AAAA", 1), "damaged", 5),
        (lambda b: b"just text\n", "not a SOPS-encrypted file", 5),
    ],
    ids=["empty", "truncated", "tampered", "not-sops"],
)
def test_damaged_encrypted_files_point_at_git_recovery(keyed_host: Path, damage, words, code):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    enc = secrets / "app.enc.txt"
    enc.write_bytes(damage(enc.read_bytes()))
    kept = PLAIN + "LOCAL=1\n"
    (secrets / "app.txt").write_text(kept)
    r = run_itsup("decrypt", "app", root=keyed_host)
    assert r.code == code, r.err
    assert words in r.err
    assert "itsup secrets recover app" in r.err
    assert "Traceback" not in r.err
    assert (secrets / "app.txt").read_text() == kept  # nothing truncated or replaced


def test_failed_encrypt_leaves_the_old_file_and_never_quotes_the_line(keyed_host: Path):
    secrets = keyed_host / "secrets"
    (secrets / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    before = sha(secrets / "app.enc.txt")
    (secrets / "app.txt").write_text(PLAIN + f"{SECRET}-without-equals\n")
    r = run_itsup("encrypt", "app", root=keyed_host)
    assert r.code == 1
    assert "secrets/app.txt:5: not a KEY=VALUE line" in r.err
    no_secret(r.out, r.err)
    assert sha(secrets / "app.enc.txt") == before
    assert [p.name for p in secrets.iterdir() if ".tmp" in p.name] == []


def test_encrypt_without_recipients_says_what_to_do(host: Path):
    (host / "secrets" / "app.txt").write_text(PLAIN)
    r = run_itsup("encrypt", root=host)
    assert r.code == 4
    assert "no age recipients" in r.err and "itsup keygen" in r.err
    assert not (host / "secrets" / "app.enc.txt").exists()


def test_project_names_cannot_escape_secrets(keyed_host: Path):
    for bad in ("../projects/itsup", "a/b", ".hidden"):
        r = run_itsup("decrypt", bad, root=keyed_host)
        assert r.code == 2, (bad, r.err)
        assert "not a project name" in r.err


# -- config from secrets/itsup.enc.txt, decrypted in memory only -----------------------


def test_fresh_clone_backs_up_and_restores_with_only_the_encrypted_secrets(
    keyed_host: Path, tmp_path: Path
):
    from helpers import make_host

    root = make_host(keyed_host)
    secrets = root / "secrets"
    backups = tmp_path / "backups"
    (secrets / "itsup.txt").write_text(f"BACKUP_DIR={backups}\n")
    assert run_itsup("encrypt", "itsup", root=root).code == 0
    (secrets / "itsup.txt").unlink()

    r = run_itsup("backup", root=root)
    assert r.code == 0, r.err
    assert any(backups.rglob("backup-*.manifest.json"))
    acme = root / "proxy" / "traefik" / "acme.json"
    original = acme.read_bytes()
    acme.unlink()
    r = run_itsup("restore", "--path", "proxy/traefik/acme.json", "--yes", root=root)
    assert r.code == 0, r.err
    assert acme.read_bytes() == original
    assert not (secrets / "itsup.txt").exists()  # plaintext never written


def test_s3_credentials_from_encrypted_shared_secrets(keyed_host: Path, s3_server, s3_prefix):
    from helpers import make_host, s3_config

    root = make_host(keyed_host)
    write_config(root, s3_config(s3_server, s3_prefix))
    secrets = root / "secrets"
    (secrets / "itsup.txt").write_text(
        f"S3_KEY_ID={s3_server.access_key}\nS3_SECRET={s3_server.secret_key}\n"
    )
    assert run_itsup("encrypt", "itsup", root=root).code == 0
    (secrets / "itsup.txt").unlink()
    r = run_itsup("backup", root=root)
    assert r.code == 0, r.err
    assert s3_server.secret_key not in r.out + r.err
    listed = run_itsup("backup", "list", "--json", root=root)
    assert listed.code == 0 and "backup-" in listed.out
    assert not (secrets / "itsup.txt").exists()


def test_encrypted_shared_secrets_without_a_key_is_a_config_error(
    keyed_host: Path, isolated_home: Path
):
    secrets = keyed_host / "secrets"
    (secrets / "itsup.txt").write_text("BACKUP_DIR=/somewhere\n")
    assert run_itsup("encrypt", "itsup", root=keyed_host).code == 0
    (secrets / "itsup.txt").unlink()
    default_key(isolated_home).unlink()
    r = run_itsup("backup", root=keyed_host)
    assert r.code == 4
    assert "secrets/itsup.enc.txt: no age key found" in r.err
    assert "Traceback" not in r.err


# -- history and recovery ----------------------------------------------------------------


@pytest.fixture
def secrets_repo(keyed_host: Path) -> Path:
    """secrets/ as a git work tree with three commits of app.enc.txt."""
    secrets = keyed_host / "secrets"
    git("init", "--quiet", "--initial-branch=main", cwd=secrets)
    for i in range(3):
        (secrets / "app.txt").write_text(PLAIN + f"VERSION={i}\n")
        assert run_itsup("encrypt", "app", root=keyed_host).code == 0
        git("add", "app.enc.txt", ".sops.yaml", cwd=secrets)
        git("commit", "--quiet", "-m", f"Backup: v{i}", cwd=secrets)
    return secrets


def test_history_lists_commits_newest_first_with_decrypt_status(
    keyed_host: Path, secrets_repo: Path
):
    r = run_itsup("secrets", "history", "app", "--json", root=keyed_host)
    assert r.code == 0, r.err
    import json

    revisions = json.loads(r.out)
    assert [x["subject"] for x in revisions] == ["Backup: v2", "Backup: v1", "Backup: v0"]
    assert {x["status"] for x in revisions} == {"decrypts"}
    no_secret(r.out, r.err)


def test_recover_restores_the_newest_revision_that_decrypts(keyed_host: Path, secrets_repo: Path):
    enc = secrets_repo / "app.enc.txt"
    # The newest commit holds a damaged file; the working copy is empty.
    enc.write_bytes(enc.read_bytes().replace(b"data:", b"data:AAAA", 1))
    git("commit", "--quiet", "-am", "Backup: broken", cwd=secrets_repo)
    enc.write_bytes(b"")
    (secrets_repo / "app.txt").unlink()

    r = run_itsup("secrets", "recover", "app", root=keyed_host)
    assert r.code == 0, r.err
    assert "Backup: v2" in r.out
    assert "damaged" in r.err  # the skipped newer revision is named
    assert (secrets_repo / "app.txt").read_text() == PLAIN + "VERSION=2\n"
    assert stat.S_IMODE((secrets_repo / "app.txt").stat().st_mode) == 0o600
    good = git("show", "HEAD~1:app.enc.txt", cwd=secrets_repo)
    assert enc.read_text() == good + "\n" or enc.read_text().strip() == good.strip()
    # The (empty) damaged working copy was kept aside, never silently dropped.
    assert len(list(secrets_repo.glob("app.enc.txt.damaged-*"))) == 1
    no_secret(r.out, r.err)


def test_recover_a_named_revision(keyed_host: Path, secrets_repo: Path):
    (secrets_repo / "app.txt").unlink()
    r = run_itsup("secrets", "recover", "app", "--rev", "HEAD~2", root=keyed_host)
    assert r.code == 0, r.err
    assert (secrets_repo / "app.txt").read_text() == PLAIN + "VERSION=0\n"


def test_recover_with_nothing_good_fails_clearly_and_changes_nothing(
    keyed_host: Path, secrets_repo: Path
):
    enc = secrets_repo / "app.enc.txt"
    log = git("log", "--format=%H", cwd=secrets_repo).split()
    # Rewrite history so that every revision is damaged.
    git("checkout", "--quiet", "--orphan", "bad", cwd=secrets_repo)
    enc.write_bytes(b"garbage\n")
    git("add", "app.enc.txt", cwd=secrets_repo)
    git("commit", "--quiet", "-m", "bad", cwd=secrets_repo)
    assert log  # the good commits exist only on main now
    before = enc.read_bytes()
    (secrets_repo / "app.txt").unlink()
    r = run_itsup("secrets", "recover", "app", root=keyed_host)
    assert r.code == 5
    assert "no revision decrypts" in r.err and "Traceback" not in r.err
    assert enc.read_bytes() == before
    assert not (secrets_repo / "app.txt").exists()


def test_recover_refuses_to_replace_edited_plaintext_and_writes_nothing(
    keyed_host: Path, secrets_repo: Path
):
    enc = secrets_repo / "app.enc.txt"
    enc.write_bytes(b"")  # damaged working copy: recovery would take HEAD
    (secrets_repo / "app.txt").write_text(PLAIN + "EDITED=1\n")
    r = run_itsup("secrets", "recover", "app", root=keyed_host)
    assert r.code == 1, r.err
    assert "secrets/app.txt: differs from the recovered secrets; nothing changed" in r.err
    assert enc.read_bytes() == b""
    assert (secrets_repo / "app.txt").read_text() == PLAIN + "EDITED=1\n"
    assert not list(secrets_repo.glob("app.enc.txt.damaged-*"))
    no_secret(r.out, r.err)

    r = run_itsup("secrets", "recover", "app", "--force", root=keyed_host)
    assert r.code == 0, r.err
    assert (secrets_repo / "app.txt").read_text() == PLAIN + "VERSION=2\n"
    assert len(list(secrets_repo.glob("app.enc.txt.damaged-*"))) == 1


@pytest.mark.parametrize(
    ("rev", "code", "words"),
    [
        ("no-such-ref", 2, "'no-such-ref' is not a commit in secrets/"),
        ("HEAD~2", 1, "secrets/gone.enc.txt: not in commit"),
    ],
)
def test_recover_a_named_revision_that_cannot_be_used(
    keyed_host: Path, secrets_repo: Path, rev: str, code: int, words: str
):
    name = "app" if rev == "no-such-ref" else "gone"
    r = run_itsup("secrets", "recover", name, "--rev", rev, root=keyed_host)
    assert r.code == code, r.err
    assert words in r.err and "Traceback" not in r.err


def test_recover_a_file_never_seen_says_so(keyed_host: Path, secrets_repo: Path):
    r = run_itsup("secrets", "recover", "never", root=keyed_host)
    assert r.code == 1, r.err
    assert "secrets/never.enc.txt: not found, and git has no history of it" in r.err
    assert not (secrets_repo / "never.txt").exists()


def test_recover_outside_git_says_so(keyed_host: Path):
    (keyed_host / "secrets" / "app.txt").write_text(PLAIN)
    assert run_itsup("encrypt", root=keyed_host).code == 0
    r = run_itsup("secrets", "history", "app", root=keyed_host)
    assert r.code == 4
    assert "not in a git repository" in r.err


def test_plaintext_is_written_only_by_decrypt_and_only_to_secrets_txt(
    keyed_host: Path, secrets_repo: Path
):
    def holding_secret() -> list[Path]:
        return [
            p
            for p in keyed_host.rglob("*")
            if p.is_file() and ".git" not in p.parts and SECRET.encode() in p.read_bytes()
        ]

    (secrets_repo / "app.txt").unlink()
    for args in (("secrets", "history", "app"), ("secrets", "recover", "app", "--dry-run")):
        r = run_itsup(*args, root=keyed_host)
        assert r.code == 0, r.err
        no_secret(r.out, r.err)
    assert holding_secret() == []  # both decrypted in memory only
    assert run_itsup("decrypt", "app", root=keyed_host).code == 0
    assert holding_secret() == [secrets_repo / "app.txt"]
    assert os.stat(secrets_repo / "app.txt").st_mode & 0o077 == 0
