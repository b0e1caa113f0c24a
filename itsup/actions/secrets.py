"""Secrets as code: age keys, `encrypt`/`decrypt` through sops, history and recovery.

`secrets/{name}.txt` (plaintext, gitignored, 0600) <-> `secrets/{name}.enc.txt`
(SOPS dotenv, committed). Every write is atomic (temporary file, fsync,
rename), so a failed sops run never truncates a file. Plaintext only ever
goes to `{name}.txt`; recovery and verification decrypt in memory.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from itsup import sops
from itsup.errors import ConfigError, IntegrityError, ItsupError, NotFoundError, UsageError
from itsup.fsutil import atomic_write
from itsup.layout import Layout

if TYPE_CHECKING:
    from itsup.git import Repo

PLAIN_MODE = 0o600
ENC_MODE = 0o644
ENC_SUFFIX = ".enc.txt"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConflictError(ItsupError):
    """A plaintext file holds edits that an action would overwrite."""


def check_name(name: str) -> str:
    """A secrets file name as the spec uses it: `itsup`, or a project name."""
    name = name.removesuffix(ENC_SUFFIX).removesuffix(".txt")
    if not _NAME.fullmatch(name) or name.endswith(".enc"):
        raise UsageError(f"{name!r} is not a project name (letters, digits, '.', '_', '-')")
    return name


def plain_path(layout: Layout, name: str) -> Path:
    return layout.secrets / f"{name}.txt"


def enc_path(layout: Layout, name: str) -> Path:
    return layout.secrets / f"{name}{ENC_SUFFIX}"


def _rel(layout: Layout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def plaintext_names(layout: Layout) -> list[str]:
    if not layout.secrets.is_dir():
        return []
    return sorted(
        p.name.removesuffix(".txt")
        for p in layout.secrets.glob("*.txt")
        if not p.name.endswith(ENC_SUFFIX) and p.is_file() and _NAME.fullmatch(p.name)
    )


def encrypted_names(layout: Layout) -> list[str]:
    if not layout.secrets.is_dir():
        return []
    return sorted(
        p.name.removesuffix(ENC_SUFFIX)
        for p in layout.secrets.glob(f"*{ENC_SUFFIX}")
        if p.is_file()
    )


def _canonical(data: bytes) -> list[bytes]:
    """Dotenv content as sops keeps it: the non-blank lines (sops drops blank ones)."""
    return [line.rstrip(b"\r") for line in data.splitlines() if line.strip()]


# -- keys -----------------------------------------------------------------------


@dataclass
class KeygenResult:
    key_file: Path
    public_key: str
    sops_config: Path | None  # where the recipient was registered, if a host was found
    already_registered: bool = False
    cannot_read: list[str] = field(default_factory=list)  # .enc.txt files the new key can't open


def keygen(layout: Layout | None, path: Path | None = None) -> KeygenResult:
    """Create an age identity where sops looks (0600, never overwriting) and register it."""
    from itsup.agekeys import pyrage_module

    target = path or sops.key_file()
    identity = pyrage_module().x25519.Identity.generate()
    public = str(identity.to_public())
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = f"# created: {stamp}\n# public key: {public}\n{identity}\n"
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = public_keys_in(target)
        shown = f" (public key {existing[0]})" if existing else ""
        raise ItsupError(
            f"{target}: already holds an age key{shown}; not overwritten",
            hint="losing that key would lose every secret encrypted only for it. "
            "To use it for this host: `itsup secrets add-recipient` with its public key "
            "(`itsup keygen --show`); for a second key, pass --key-file NEW_PATH",
        ) from None
    except OSError as exc:
        raise ItsupError(f"{target}: cannot create the key file: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise ItsupError(f"{target}: cannot write the key file: {exc.strerror}") from None
    result = KeygenResult(target, public, None)
    if layout is not None:
        current = sops.recipients(layout.secrets)
        result.already_registered = public in current
        if not result.already_registered:
            result.sops_config = sops.set_recipients(layout.secrets, [*current, public])
        else:
            result.sops_config = layout.secrets / sops.SOPS_CONFIG
        for name in encrypted_names(layout):
            data = enc_path(layout, name).read_bytes()
            if public not in sops.file_recipients(data):
                result.cannot_read.append(_rel(layout, enc_path(layout, name)))
    return result


def public_keys_in(path: Path) -> list[str]:
    from itsup.agekeys import public_key

    keys = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        line = line.strip()
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                keys.append(public_key(line))
            except ValueError:
                continue
    return keys


def _check_recipient(key: str) -> str:
    from itsup.agekeys import parse_recipient

    key = key.strip()
    if key.upper().startswith("AGE-SECRET-KEY-"):
        raise UsageError(
            "that is an age SECRET key; give its public key (age1...), and keep the secret one private"
        )
    if not key.startswith("age1"):
        raise UsageError(f"{key[:20]!r} is not an age public key (age1...)")
    try:
        parse_recipient(key)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return key


@dataclass
class RecipientsResult:
    sops_config: Path
    recipients: list[str]
    changed: bool
    rekeyed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # files not (yet) encrypted for all recipients


def change_recipients(
    layout: Layout, add: list[str], remove: list[str], rekey: bool = True
) -> RecipientsResult:
    """Add or remove age recipients in secrets/.sops.yaml, then re-encrypt every file for them.

    Re-encryption decrypts each file in memory with a local key and encrypts
    it again; a file that cannot be decrypted here stops the run before any
    file is rewritten, so all files stay readable by the same set of keys.
    """
    add = [_check_recipient(k) for k in add]
    remove = [_check_recipient(k) for k in remove]
    current = sops.recipients(layout.secrets)
    wanted = [k for k in dict.fromkeys([*current, *add]) if k not in remove]
    if not wanted:
        raise UsageError("that would leave no recipient: nobody could decrypt new secrets")
    missing = [k for k in remove if k not in current]
    if missing:
        raise UsageError(f"{missing[0][:20]}… is not a recipient in secrets/.sops.yaml")
    changed = wanted != current
    # Decrypt everything first: rewrite nothing unless every file can be rewritten.
    plain: dict[str, bytes] = {}
    if rekey:
        for name in encrypted_names(layout):
            path = enc_path(layout, name)
            data = path.read_bytes()
            if sorted(sops.file_recipients(data)) != sorted(wanted):
                plain[name] = sops.decrypt(data, _rel(layout, path), layout.secrets)
    config = (
        sops.set_recipients(layout.secrets, wanted)
        if changed
        else layout.secrets / sops.SOPS_CONFIG
    )
    result = RecipientsResult(config, wanted, changed)
    for name, data in plain.items():
        path = enc_path(layout, name)
        atomic_write(path, sops.encrypt(data, f"{name}.txt", layout.secrets), ENC_MODE)
        result.rekeyed.append(_rel(layout, path))
    for name in encrypted_names(layout):
        data = enc_path(layout, name).read_bytes()
        if sorted(sops.file_recipients(data)) != sorted(wanted):
            result.stale.append(_rel(layout, enc_path(layout, name)))
    return result


# -- encrypt / decrypt ------------------------------------------------------------


@dataclass
class FileResult:
    path: str  # relative to the host root
    outcome: str  # "encrypted", "unchanged", "decrypted", "failed", "conflict"
    detail: str = ""


@dataclass
class BatchResult:
    files: list[FileResult] = field(default_factory=list)
    errors: list[ItsupError] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors)


def _names(given: str | None, found: list[str], kind: str, layout: Layout) -> list[str]:
    if given is not None:
        return [check_name(given)]
    if not found:
        raise NotFoundError(
            f"{_rel(layout, layout.secrets)}/: no {kind} files",
            hint="plaintext secrets are secrets/NAME.txt; encrypted ones secrets/NAME.enc.txt",
        )
    return found


def encrypt_one(layout: Layout, name: str) -> FileResult:
    src = plain_path(layout, name)
    dst = enc_path(layout, name)
    try:
        plaintext = src.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"{_rel(layout, src)}: not found",
            hint=f"write the secrets as KEY=VALUE lines in {_rel(layout, src)} first"
            + (f", or `itsup decrypt {name}` to get them from {dst.name}" if dst.exists() else ""),
        ) from None
    except OSError as exc:
        raise ItsupError(f"{_rel(layout, src)}: cannot read: {exc.strerror}") from None
    fresh = sops.encrypt(plaintext, src.name, layout.secrets)
    detail = ""
    if dst.is_file():
        old = dst.read_bytes()
        same_keys = sorted(sops.file_recipients(old)) == sorted(sops.file_recipients(fresh))
        try:
            old_plain = sops.decrypt(old, _rel(layout, dst), layout.secrets)
        except ItsupError as exc:
            old_plain = None
            detail = f"replaced a file that did not decrypt here ({exc.message.split(': ', 1)[-1]})"
        if old_plain is not None and same_keys and _canonical(old_plain) == _canonical(plaintext):
            return FileResult(_rel(layout, dst), "unchanged")
        if old_plain is not None and not same_keys:
            detail = "recipients changed"
    atomic_write(dst, fresh, ENC_MODE)
    return FileResult(_rel(layout, dst), "encrypted", detail)


def encrypt(layout: Layout, name: str | None) -> BatchResult:
    result = BatchResult()
    for each in _names(name, plaintext_names(layout), "plaintext secrets (NAME.txt)", layout):
        try:
            result.files.append(encrypt_one(layout, each))
        except ItsupError as exc:
            if name is not None:
                raise
            result.files.append(FileResult(f"secrets/{each}.txt", "failed", exc.message))
            result.errors.append(exc)
    return result


def write_plaintext(layout: Layout, name: str, plaintext: bytes, force: bool) -> FileResult:
    """Write secrets/NAME.txt (0600, atomic) unless it holds edits not in `plaintext`."""
    dst = plain_path(layout, name)
    rel = _rel(layout, dst)
    if dst.is_file():
        current = dst.read_bytes()
        if _canonical(current) == _canonical(plaintext):
            os.chmod(dst, PLAIN_MODE)
            return FileResult(rel, "unchanged")
        if not force:
            raise ConflictError(
                f"{rel}: differs from {name}{ENC_SUFFIX} (edited since it was last encrypted?); "
                "not overwritten",
                hint=f"keep your edits with `itsup encrypt {name}`, or replace them with "
                f"`itsup decrypt {name} --force`",
            )
    atomic_write(dst, plaintext, PLAIN_MODE)
    return FileResult(rel, "decrypted")


def decrypt_one(layout: Layout, name: str, force: bool = False) -> FileResult:
    src = enc_path(layout, name)
    try:
        data = src.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(
            f"{_rel(layout, src)}: not found",
            hint="`itsup init` fetches secrets/ from git; `itsup secrets history "
            f"{name}` shows whether it was ever committed",
        ) from None
    except OSError as exc:
        raise ItsupError(f"{_rel(layout, src)}: cannot read: {exc.strerror}") from None
    plaintext = sops.decrypt(data, _rel(layout, src), layout.secrets)
    return write_plaintext(layout, name, plaintext, force)


def decrypt(layout: Layout, name: str | None, force: bool = False) -> BatchResult:
    result = BatchResult()
    for each in _names(name, encrypted_names(layout), "encrypted secrets (NAME.enc.txt)", layout):
        try:
            result.files.append(decrypt_one(layout, each, force))
        except ItsupError as exc:
            if name is not None:
                raise
            outcome = "conflict" if isinstance(exc, ConflictError) else "failed"
            result.files.append(FileResult(f"secrets/{each}{ENC_SUFFIX}", outcome, exc.message))
            result.errors.append(exc)
    return result


# -- history and recovery ---------------------------------------------------------


@dataclass
class Revision:
    commit: str
    date: str
    author: str
    subject: str
    status: str = ""  # "decrypts", "damaged", "no key", "deleted", ""


def _secrets_repo(layout: Layout) -> Repo:
    from itsup.git import Repo

    repo = Repo.at(layout.secrets, "secrets/")
    if repo is None:
        raise ConfigError(
            f"{_rel(layout, layout.secrets)}/ is not in a git repository: it has no history",
            hint="`itsup init` clones secrets/ from its remote",
        )
    return repo


def _probe(layout: Layout, data: bytes | None, where: str) -> str:
    if data is None:
        return "deleted"
    try:
        sops.decrypt(data, where, layout.secrets)
    except ConfigError:
        return "no key"
    except ItsupError:
        return "damaged"
    return "decrypts"


def history(layout: Layout, name: str, check: bool = True) -> list[Revision]:
    """Commits that changed secrets/NAME.enc.txt, newest first (with whether each decrypts)."""
    name = check_name(name)
    repo = _secrets_repo(layout)
    path = repo.rel(enc_path(layout, name))
    text = repo.run("log", "--format=%H%x1f%aI%x1f%an%x1f%s", "--", path)
    revisions = []
    for line in text.splitlines():
        commit, date, author, subject = ([*line.split("\x1f"), "", "", ""])[:4]
        revisions.append(Revision(commit, date, author, subject))
    if check:
        for rev in revisions:
            rev.status = _probe(
                layout, _show(repo, rev.commit, path), f"{name}{ENC_SUFFIX}@{rev.commit[:8]}"
            )
    return revisions


def _show(repo: Repo, commit: str, path: str) -> bytes | None:
    from itsup.git import git

    proc = git("show", f"{commit}:{path}", cwd=repo.top, check=False)
    return proc.stdout if proc.returncode == 0 else None


@dataclass
class RecoverResult:
    path: str
    source: str  # "working copy" or a commit id
    revision: Revision | None
    skipped: list[Revision] = field(default_factory=list)  # newer revisions that did not decrypt
    set_aside: str | None = None  # where the damaged working copy was kept
    plaintext: FileResult | None = None
    dry_run: bool = False


def recover(
    layout: Layout, name: str, rev: str | None = None, force: bool = False, dry_run: bool = False
) -> RecoverResult:
    """Restore secrets/NAME.enc.txt from the newest (or given) revision that decrypts, then decrypt it."""
    name = check_name(name)
    dst = enc_path(layout, name)
    rel = _rel(layout, dst)
    current = dst.read_bytes() if dst.is_file() else None
    repo = _secrets_repo(layout)
    path = repo.rel(dst)
    if rev is not None:
        candidates = [_given_revision(repo, rev, path, rel)]
    else:
        candidates = _every_revision(layout, repo, name, path, rel, current)
    found = _first_that_decrypts(layout, rel, candidates, strict=rev is not None)
    revision = found.revision
    result = RecoverResult(
        rel, revision.commit if revision else "working copy", revision, found.skipped
    )
    result.dry_run = dry_run
    if not dry_run:
        _put_back(layout, name, current, found, force, result)
    return result


# A revision to try: None for the working copy; its bytes, None where the file is deleted.
_Candidate = tuple[Revision | None, bytes | None]


def _given_revision(repo: Repo, rev: str, path: str, rel: str) -> _Candidate:
    """The file as `rev` holds it (`--rev`); UsageError or NotFoundError when it cannot."""
    commit = repo.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if not commit:
        raise UsageError(f"{rev!r} is not a commit in {repo.label}")
    data = _show(repo, commit, path)
    if data is None:
        raise NotFoundError(f"{rel}: not in commit {commit[:8]}")
    info = repo.run("log", "-1", "--format=%H%x1f%aI%x1f%an%x1f%s", commit).split("\x1f")
    return Revision(*([*info, "", "", ""])[:4]), data


def _every_revision(
    layout: Layout, repo: Repo, name: str, path: str, rel: str, current: bytes | None
) -> list[_Candidate]:
    """The working copy (when there is one), then every commit that touched the file, newest first.

    NotFoundError when there is neither a working copy nor any history.
    """
    candidates: list[_Candidate] = []
    if current is not None:
        candidates.append((None, current))
    for past in history(layout, name, check=False):
        candidates.append((past, _show(repo, past.commit, path)))
    if not candidates:
        raise NotFoundError(
            f"{rel}: not found, and git has no history of it",
            hint="last resort: recreate the secrets by hand and `itsup encrypt` them",
        )
    return candidates


@dataclass
class _Decrypted:
    revision: Revision | None  # None: the working copy
    data: bytes  # the .enc.txt as that revision holds it
    plaintext: bytes
    skipped: list[Revision]  # newer revisions that did not decrypt, with their status set


def _first_that_decrypts(
    layout: Layout, rel: str, candidates: list[_Candidate], strict: bool
) -> _Decrypted:
    """The first candidate that decrypts, in memory; nothing is written.

    `strict` (a revision named with --rev) lets its decryption error through.
    Otherwise, when none decrypts: the key error when every revision failed
    for want of a key, else IntegrityError.
    """
    skipped: list[Revision] = []
    key_problem: ItsupError | None = None
    for revision, data in candidates:
        where = f"{rel}@{revision.commit[:8]}" if revision else rel
        if data is None:
            if revision is not None:
                revision.status = "deleted"
                skipped.append(revision)
            continue
        try:
            plaintext = sops.decrypt(data, where, layout.secrets)
        except ItsupError as exc:
            if strict:
                raise
            if isinstance(exc, ConfigError) and key_problem is None:
                key_problem = exc
            if revision is not None:
                revision.status = "no key" if isinstance(exc, ConfigError) else "damaged"
                skipped.append(revision)
            continue
        return _Decrypted(revision, data, plaintext, skipped)
    if key_problem is not None and all(r.status == "no key" for r in skipped):
        raise key_problem
    with_working_copy = any(revision is None for revision, _ in candidates)
    raise IntegrityError(
        f"{rel}: no revision decrypts ({len(skipped)} tried"
        + (", the working copy too" if with_working_copy else "")
        + ")",
        hint="revisions the local key cannot open need the key they were encrypted for "
        "(SOPS_AGE_KEY_FILE); otherwise recreate the secrets and `itsup encrypt` them",
    )


def _put_back(
    layout: Layout,
    name: str,
    current: bytes | None,
    found: _Decrypted,
    force: bool,
    result: RecoverResult,
) -> None:
    """Write the recovered .enc.txt and its plaintext, keeping a damaged working copy aside.

    The plaintext check comes first: ConflictError, with nothing written, when
    NAME.txt holds something else and `force` is not given. The working copy
    is replaced only by a revision from git that differs from it, and kept
    beside it as NAME.enc.txt.damaged-<time>. Fills `result.set_aside` and
    `result.plaintext`.
    """
    dst = enc_path(layout, name)
    plain = plain_path(layout, name)
    if (
        not force
        and plain.is_file()
        and _canonical(plain.read_bytes()) != _canonical(found.plaintext)
    ):
        raise ConflictError(
            f"{_rel(layout, plain)}: differs from the recovered secrets; nothing changed",
            hint="move it aside (it may hold edits you want), or pass --force to replace it",
        )
    from_git = found.revision is not None
    if from_git and current is not None and current != found.data:
        aside = dst.with_name(f"{dst.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        atomic_write(aside, current, ENC_MODE)
        result.set_aside = _rel(layout, aside)
    if from_git and current != found.data:
        atomic_write(dst, found.data, ENC_MODE)
    result.plaintext = write_plaintext(layout, name, found.plaintext, force=True)
