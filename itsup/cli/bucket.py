"""`itsup backup setup-bucket`, `doctor` and `iam-policy`: an S3 target's bucket."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from itsup.cli.common import TARGET, open_host
from itsup.cli.output import out
from itsup.errors import ExitCode

if TYPE_CHECKING:
    from itsup.actions.bucket import Finding, Step


def _show_step(step: Step) -> None:
    out.print(f"{step.item}: {step.state}" + (f" ({step.detail})" if step.detail else ""))


@click.command("setup-bucket")
@TARGET
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option(
    "--create",
    is_flag=True,
    help="Create the bucket when it does not exist, with Object Lock enabled (on most "
    "providers Object Lock can be enabled only when a bucket is created).",
)
@click.pass_context
def setup_bucket(ctx: click.Context, target_choice: str | None, dry_run: bool, create: bool) -> int:
    """Harden the target's bucket as itsup.yml asks, idempotently, one line per setting.

    \b
    Versioning on; default encryption (sse: AES256, or aws:kms with kms_key_id);
    the public access block; the lifecycle of itsup's prefix (lifecycle:, by
    default 30 days to STANDARD_IA, 90 to GLACIER, expiry at 365); and, when the
    target sets object_lock, Object Lock's default retention. A setting already
    as asked says "already so". Exit 1 when the server refused a setting, 2 for
    a folder target (no bucket), 4 when the expiry would delete what
    backup.retention or object_lock keeps, 6 when the bucket cannot be reached
    or does not exist (without --create). Run it with the bucket owner's
    credentials: a host's least-privilege key may not change a bucket.
    """
    from itsup.actions.bucket import setup_bucket as run

    host = open_host(ctx)
    if dry_run:
        out.print("dry run: nothing is changed")
    steps = run(host, target_choice, dry_run=dry_run, create=create, report=_show_step)
    refused = [s for s in steps if s.state == "refused"]
    if refused:
        out.print(f"{len(refused)} setting(s) refused: " + ", ".join(s.item for s in refused))
        return ExitCode.FAILURE
    return ExitCode.SUCCESS


def _show_finding(finding: Finding) -> None:
    out.print(f"{finding.status:<4} {finding.item}: {finding.detail}")


@click.command("doctor")
@TARGET
@click.pass_context
def doctor(ctx: click.Context, target_choice: str | None) -> int:
    """Check the target's bucket against itsup.yml, one line each.

    \b
    Lifecycle, encryption, versioning, public access block, Object Lock; that
    the credentials can put, get and list (a probe object under the prefix)
    and whether they can delete (reported, not required); the clock against
    the server's. Exit 0 when all that is required is there, 1 when something
    is missing (a FAIL line), 2 for a folder target (no bucket), 6 when the
    bucket cannot be reached or does not exist. "?" means the key may not
    read that setting: not counted as missing.
    """
    from itsup.actions.bucket import doctor as run

    host = open_host(ctx)
    findings = run(host, target_choice, _show_finding)
    failed = [f for f in findings if f.status == "FAIL"]
    if failed:
        out.print(f"{len(failed)} problem(s): " + ", ".join(f.item for f in failed))
        return ExitCode.FAILURE
    return ExitCode.SUCCESS


@click.command("iam-policy")
@TARGET
@click.option("--read-only", is_flag=True, help="Only what a restore host needs: list and get.")
@click.pass_context
def iam_policy(ctx: click.Context, target_choice: str | None, read_only: bool) -> None:
    """Print the least-privilege IAM policy (JSON) for the target's bucket and prefix.

    Deleting (prune, cleanup) is its own statement, Sid ItsupPrune: leave it out
    of a host's key and run prune elsewhere, or rely on the lifecycle, so that a
    stolen host key cannot delete backups. Exit 2 for a folder target.
    """
    from itsup.actions.bucket import iam_policy as policy

    host = open_host(ctx)
    out.print(json.dumps(policy(host, target_choice, read_only), indent=2))
