"""Real git remotes, real sops and fresh age keys for the config-as-code tests.

Every test that uses these runs with its own HOME (see the `isolated_home`
fixture in conftest), so no test reads or writes the operator's git config,
sops keys or ~/.config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyrage

SOPS = str(Path(sys.executable).parent / "sops")
DOTENV = ["--input-type", "dotenv", "--output-type", "dotenv"]


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def new_age_key(path: Path) -> str:
    """Write a fresh age identity to `path` (0600) and return its public key."""
    identity = pyrage.x25519.Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public())


def sops_config(secrets_dir: Path, *recipients: str) -> None:
    """A .sops.yaml as an operator would write it by hand."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (secrets_dir / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: \\.txt$\n    age: {','.join(recipients)}\n"
    )


def sops(*args: str, cwd: Path, key_file: Path | None = None, data: bytes | None = None):
    """Run the plain sops binary (not through itsup)."""
    env = {**os.environ, "SOPS_DISABLE_VERSION_CHECK": "true"}
    if key_file is not None:
        # Only this key: sops also reads ~/.config/sops/age/keys.txt, so point
        # the config home at a folder without one.
        env["SOPS_AGE_KEY_FILE"] = str(key_file)
        env["XDG_CONFIG_HOME"] = str(key_file.parent / "no-such-config-home")
    return subprocess.run(
        [SOPS, *args], cwd=cwd, env=env, capture_output=True, input=data, check=False
    )


def sops_encrypt_file(secrets_dir: Path, name: str, key_file: Path | None = None) -> bytes:
    """`sops -e` a dotenv file in secrets/ the way the spec's operators do by hand."""
    proc = sops("-e", *DOTENV, name, cwd=secrets_dir, key_file=key_file)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def bare_remote(base: Path, name: str) -> Path:
    """An empty bare repository standing in for GitHub/Gitea."""
    path = base / f"{name}.git"
    git("init", "--bare", "--initial-branch=main", str(path))
    return path


def seed_remote(remote: Path, files: dict[str, str | bytes], work: Path) -> str:
    """Push a first commit holding `files` to `remote`; return the commit id."""
    git("clone", "--quiet", str(remote), str(work))
    for rel, content in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "seed", cwd=work)
    git("push", "--quiet", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


PROJECTS_FILES: dict[str, str | bytes] = {
    "itsup.yml": "backup:\n  local:\n    path: ${BACKUP_DIR:-/tmp/itsup-unused}\n",
    "traefik.yml": "log:\n  level: INFO\n",
    "app/docker-compose.yml": "services:\n  web:\n    image: nginx\n",
    "app/ingress.yml": "enabled: true\n",
    "blog/docker-compose.yml": "services:\n  blog:\n    image: ghost\n",
    "blog/ingress.yml": "enabled: true\n",
}
