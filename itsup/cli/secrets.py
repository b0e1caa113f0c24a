"""`itsup keygen`, `itsup encrypt`, `itsup decrypt` and `itsup secrets ...`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from itsup.cli.output import err, out
from itsup.errors import ConfigError, ExitCode
from itsup.layout import Layout


def _layout(ctx: click.Context) -> Layout:
    from itsup.layout import find_root

    return find_root(ctx.obj["root"])


def _batch(result: object, verb: str) -> int:
    from itsup.actions.secrets import BatchResult

    assert isinstance(result, BatchResult)
    for f in result.files:
        line = f"{f.outcome:<10} {f.path}" + (f"  ({f.detail})" if f.detail else "")
        (err if f.outcome in {"failed", "conflict"} else out).print(line, highlight=False)
    if result.errors:
        err.print(
            f"itsup: error: {len(result.errors)} of {len(result.files)} files not {verb}",
        )
        hints = {e.hint for e in result.errors if e.hint}
        for hint in sorted(hints):
            err.print(f"itsup: hint: {hint}")
        return int(max(e.exit_code for e in result.errors))
    return ExitCode.SUCCESS


@click.command()
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the key (default: SOPS_AGE_KEY_FILE, else ~/.config/sops/age/keys.txt).",
)
@click.option("--show", is_flag=True, help="Only print the public key(s) of the existing key file.")
@click.pass_context
def keygen(ctx: click.Context, key_file: Path | None, show: bool) -> int:
    """Create an age key where sops finds it, and add it to secrets/.sops.yaml.

    The key file is written with mode 0600 and never overwritten. Keep a copy
    offline: without it, nothing encrypted for it can be decrypted.
    """
    from itsup import sops
    from itsup.actions.secrets import keygen as make_key
    from itsup.actions.secrets import public_keys_in

    path = key_file or sops.key_file()
    if show:
        keys = public_keys_in(path)
        if not keys:
            err.print(f"itsup: error: {path}: no age key there")
            err.print("itsup: hint: create one with `itsup keygen`")
            return ExitCode.FAILURE
        for key in keys:
            out.print(key, highlight=False)
        return ExitCode.SUCCESS
    try:
        layout: Layout | None = _layout(ctx)
    except ConfigError:
        layout = None  # no host here: make the key, register it later
    result = make_key(layout, key_file)
    out.print(f"created    {result.key_file} (mode 0600)", highlight=False)
    out.print(f"public key {result.public_key}", highlight=False)
    if result.sops_config is not None:
        state = "already listed in" if result.already_registered else "added to"
        out.print(f"recipient  {state} {result.sops_config}", highlight=False)
    else:
        err.print(
            "itsup: note: no host root here; add the key to a host later with "
            f"`itsup secrets add-recipient {result.public_key}`",
        )
    if result.cannot_read:
        err.print(
            f"itsup: note: {len(result.cannot_read)} existing secrets files were encrypted before "
            "this key and stay unreadable with it until someone who can decrypt them runs "
            "`itsup secrets rekey`",
        )
    err.print(
        "itsup: note: back this key up offline (password manager, paper): "
        "without it the encrypted secrets cannot be recovered",
    )
    return ExitCode.SUCCESS


@click.command()
@click.argument("project", required=False)
@click.pass_context
def encrypt(ctx: click.Context, project: str | None) -> int:
    """Encrypt secrets/PROJECT.txt to secrets/PROJECT.enc.txt (all when no PROJECT).

    Runs the real sops with the recipients in secrets/.sops.yaml. A file whose
    content and recipients did not change is left byte-identical (no git churn).
    """
    from itsup.actions.secrets import encrypt as run

    return _batch(run(_layout(ctx), project), "encrypted")


@click.command()
@click.argument("project", required=False)
@click.option("--force", is_flag=True, help="Replace a plaintext file that holds other edits.")
@click.pass_context
def decrypt(ctx: click.Context, project: str | None, force: bool) -> int:
    """Decrypt secrets/PROJECT.enc.txt to secrets/PROJECT.txt, mode 0600 (all when no PROJECT).

    A plaintext file with edits not yet encrypted is never overwritten silently.
    """
    from itsup.actions.secrets import decrypt as run

    return _batch(run(_layout(ctx), project, force), "decrypted")


@click.group()
def secrets() -> None:
    """Secrets history, recovery and recipients (who can decrypt)."""


@secrets.command()
@click.argument("project")
@click.option("--no-check", is_flag=True, help="Do not test whether each revision decrypts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history(ctx: click.Context, project: str, no_check: bool, as_json: bool) -> int:
    """List the commits that changed secrets/PROJECT.enc.txt, newest first."""
    from dataclasses import asdict

    from itsup.actions.secrets import history as run

    revisions = run(_layout(ctx), project, check=not no_check)
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in revisions]))
        return ExitCode.SUCCESS
    if not revisions:
        err.print(f"itsup: no commits changed secrets/{project}.enc.txt")
        return ExitCode.SUCCESS
    table = Table(box=None, pad_edge=False)
    for column in ("commit", "date", "author", "subject", *([] if no_check else ["decrypts"])):
        table.add_column(column)
    for r in revisions:
        row = [r.commit[:10], r.date, r.author, r.subject]
        if not no_check:
            row.append(r.status)
        table.add_row(*row)
    out.print(table)
    return ExitCode.SUCCESS


@secrets.command()
@click.argument("project")
@click.option("--rev", help="Recover this revision (commit, tag, HEAD~2, ...).")
@click.option("--force", is_flag=True, help="Replace a plaintext file that holds other edits.")
@click.option("--dry-run", is_flag=True, help="Say which revision would be used; change nothing.")
@click.pass_context
def recover(ctx: click.Context, project: str, rev: str | None, force: bool, dry_run: bool) -> int:
    """Restore secrets/PROJECT.enc.txt from git history, then decrypt it.

    Takes the newest revision that still decrypts (the working copy first), or
    the one given with --rev. A damaged working copy is kept beside it.
    """
    from itsup.actions.secrets import recover as run

    result = run(_layout(ctx), project, rev, force, dry_run)
    for skipped in result.skipped:
        err.print(
            f"skipped    {skipped.commit[:10]} {skipped.date}  ({skipped.status})",
        )
    if result.revision is None:
        source = "the working copy (it decrypts)"
    else:
        r = result.revision
        source = f"{r.commit[:10]} of {r.date} ({r.subject})"
    verb = "would use" if dry_run else "recovered"
    out.print(f"{verb:<10} {result.path} from {source}", highlight=False)
    if result.set_aside:
        out.print(f"kept       the damaged copy as {result.set_aside}", highlight=False)
    if result.plaintext is not None:
        p = result.plaintext
        out.print(f"{p.outcome:<10} {p.path}", highlight=False)
    if result.revision is not None and not dry_run:
        err.print("itsup: note: commit the recovered file with `itsup snapshot`")
    return ExitCode.SUCCESS


def _recipients_report(result: object) -> None:
    from itsup import sops
    from itsup.actions.secrets import RecipientsResult

    assert isinstance(result, RecipientsResult)
    mine = set(sops.local_public_keys())
    for key in result.recipients:
        out.print(f"recipient  {key}{'  (this machine)' if key in mine else ''}")
    for path in result.rekeyed:
        out.print(f"rekeyed    {path}", highlight=False)
    for path in result.stale:
        err.print(f"stale      {path} (not encrypted for every recipient)")


@secrets.command()
@click.pass_context
def recipients(ctx: click.Context) -> int:
    """List who can decrypt: the recipients in secrets/.sops.yaml, and stale files."""
    from itsup.actions.secrets import change_recipients

    result = change_recipients(_layout(ctx), [], [], rekey=False)
    _recipients_report(result)
    return ExitCode.FAILURE if result.stale else ExitCode.SUCCESS


@secrets.command("add-recipient")
@click.argument("keys", nargs=-1, required=True, metavar="AGE_PUBLIC_KEY...")
@click.option("--no-rekey", is_flag=True, help="Only edit .sops.yaml; re-encrypt later.")
@click.pass_context
def add_recipient(ctx: click.Context, keys: tuple[str, ...], no_rekey: bool) -> int:
    """Let another key decrypt (a second operator, an offline recovery key).

    Adds the keys to secrets/.sops.yaml and re-encrypts every secrets/*.enc.txt
    for the new set (this needs a key that can decrypt them now).
    """
    from itsup.actions.secrets import change_recipients

    _recipients_report(change_recipients(_layout(ctx), list(keys), [], rekey=not no_rekey))
    return ExitCode.SUCCESS


@secrets.command("remove-recipient")
@click.argument("keys", nargs=-1, required=True, metavar="AGE_PUBLIC_KEY...")
@click.pass_context
def remove_recipient(ctx: click.Context, keys: tuple[str, ...]) -> int:
    """Stop encrypting for a key, and re-encrypt every file without it.

    Old revisions in git history stay readable with the removed key: change
    the secret values themselves if that key may be compromised.
    """
    from itsup.actions.secrets import change_recipients

    _recipients_report(change_recipients(_layout(ctx), [], list(keys)))
    err.print(
        "itsup: note: git history still holds copies the removed key can read; "
        "rotate the secret values if that key may be in the wrong hands",
    )
    return ExitCode.SUCCESS


@secrets.command()
@click.pass_context
def rekey(ctx: click.Context) -> int:
    """Re-encrypt every secrets/*.enc.txt whose recipients differ from secrets/.sops.yaml."""
    from itsup.actions.secrets import change_recipients

    _recipients_report(change_recipients(_layout(ctx), [], []))
    return ExitCode.SUCCESS
