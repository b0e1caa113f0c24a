"""Bucket hardening: `itsup backup setup-bucket`, `doctor` and `iam-policy`.

`setup_bucket` brings an S3 target's bucket to what itsup.yml asks, one
setting at a time, idempotently: versioning, default encryption, the public
access block, the lifecycle of itsup's prefix (the spec's 30 days to
STANDARD_IA, 90 to GLACIER, expiry at 365 by default) and, when the target
sets `object_lock`, Object Lock's default retention. Each setting is read
first and written only when it differs, so a second run reports "already so".
`doctor` reads the same settings and checks what the credentials may do
(with a probe object under the prefix) and the server's clock.
`iam_policy` writes the least-privilege policy for the target's bucket and
prefix; it needs no network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsup.config import LifecycleConfig, S3Options, TargetSettings
from itsup.errors import ConfigError, StorageError, UsageError
from itsup.host import Host
from itsup.storage import open_target
from itsup.storage.s3 import S3Target
from itsup.storage.s3bucket import PUBLIC_ACCESS_BLOCK, BucketError, S3Bucket

PROBE = "itsup-doctor-probe"  # below the prefix; the same key each run
ABORT_UPLOADS_AFTER_DAYS = 7  # unfinished multipart uploads of a host that stopped
SKEW_WARN, SKEW_FAIL = 60, 900  # seconds; S3 refuses requests signed 15 minutes off
# How many days a `backup.retention` setting keeps generations for, at most.
RETENTION_DAYS = {"keep_daily": 1, "keep_weekly": 7, "keep_monthly": 31, "keep_yearly": 366}


@dataclass
class Step:
    """One setting of `setup-bucket`: what it is and what was done."""

    item: str
    state: str  # already so | set | would set | created | would create | skipped | refused
    detail: str = ""


@dataclass
class Finding:
    """One line of `doctor`."""

    item: str
    status: str  # ok | FAIL | warn | info | ? (cannot tell: not allowed to read it)
    detail: str


@dataclass
class Opened:
    settings: TargetSettings
    s3: S3Options
    bucket: S3Bucket


def s3_settings(host: Host, choice: str | None, command: str) -> tuple[TargetSettings, S3Options]:
    """The S3 target's settings; a folder target has no bucket (UsageError, exit 2)."""
    settings = host.target_settings(choice)
    if settings.scheme != "s3" or settings.s3 is None:
        raise UsageError(
            f"{command}: target '{settings.name}' is a folder ({settings.location}), not a "
            "bucket: there is nothing to configure; this is for s3:// targets"
        )
    return settings, settings.s3


def open_bucket(host: Host, choice: str | None, command: str) -> Opened:
    settings, s3 = s3_settings(host, choice, command)
    target = open_target(host.target_spec(settings), wrap=False)
    assert isinstance(target, S3Target)
    return Opened(settings, s3, S3Bucket(target))


# -- what itsup.yml asks of the bucket ------------------------------------------------


def lifecycle_rules(prefix: str, lc: LifecycleConfig) -> list[dict[str, Any]]:
    """itsup's lifecycle rules for `prefix`: generations move to STANDARD_IA, then
    GLACIER, then expire; old versions (replaced `latest` copies, expired objects)
    go `noncurrent_days` later; unfinished uploads are aborted after a week."""
    rules = []
    moves = [(lc.ia_days, "STANDARD_IA"), (lc.glacier_days, "GLACIER")]
    generations: dict[str, Any] = {
        "ID": f"itsup-generations:{prefix}"[:255],
        "Status": "Enabled",
        "Filter": {"Prefix": f"{prefix}backup-"},
    }
    transitions = [{"Days": days, "StorageClass": cls} for days, cls in moves if days]
    if transitions:
        generations["Transitions"] = transitions
    if lc.expire_days:
        generations["Expiration"] = {"Days": lc.expire_days}
    if transitions or lc.expire_days:
        rules.append(generations)
    rules.append(
        {
            "ID": f"itsup-versions:{prefix}"[:255],
            "Status": "Enabled",
            "Filter": {"Prefix": prefix},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
            "NoncurrentVersionExpiration": {"NoncurrentDays": lc.noncurrent_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_UPLOADS_AFTER_DAYS},
        }
    )
    return rules


def _rule_shape(rule: dict[str, Any]) -> dict[str, Any]:
    """What a rule does, in a form that compares equal however the server spells it."""
    flt = rule.get("Filter") or {}
    prefix = flt.get("Prefix", (flt.get("And") or {}).get("Prefix", rule.get("Prefix", "")))
    expiration = rule.get("Expiration") or {}
    marker = str(expiration.get("ExpiredObjectDeleteMarker", "")).lower() == "true"
    return {
        "status": rule.get("Status"),
        "prefix": prefix or "",
        "transitions": sorted(
            (int(t.get("Days", -1)), str(t.get("StorageClass")))
            for t in rule.get("Transitions", [])
        ),
        "expire": expiration.get("Days"),
        "expired_markers": marker,
        "noncurrent": (rule.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays"),
        "abort": (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation"),
    }


def lifecycle_matches(current: list[dict[str, Any]] | None, wanted: list[dict[str, Any]]) -> bool:
    have = {r.get("ID"): _rule_shape(r) for r in current or []}
    return all(have.get(r["ID"]) == _rule_shape(r) for r in wanted)


def describe_lifecycle(lc: LifecycleConfig) -> str:
    steps = [
        f"STANDARD_IA after {lc.ia_days} days" if lc.ia_days else "",
        f"GLACIER after {lc.glacier_days}" if lc.glacier_days else "",
        f"expire after {lc.expire_days}" if lc.expire_days else "never expire",
    ]
    return ", ".join(s for s in steps if s) + f"; old versions go after {lc.noncurrent_days} days"


def retention_horizon(backup: Any) -> tuple[int, str] | None:
    """How long `backup.retention` keeps generations, at most, in days, and the
    setting that says so; None without retention settings.

    Read by name (keep_daily, keep_weekly, keep_monthly, keep_yearly; keep_within
    in seconds), so that the lifecycle check works with whatever retention holds.
    """
    retention = getattr(backup, "retention", None)
    if retention is None:
        return None
    found: tuple[int, str] | None = None
    counts = {key: getattr(retention, key, None) for key in (*RETENTION_DAYS, "keep_within")}
    for key, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int | float) or count <= 0:
            continue
        days = (
            math.ceil(count / 86400) if key == "keep_within" else int(count) * RETENTION_DAYS[key]
        )
        if found is None or days > found[0]:
            found = (days, f"backup.retention.{key}: {count}")
    return found


def expiry_problems(host: Host, settings: TargetSettings, s3: S3Options) -> list[str]:
    """Why the lifecycle's expiry would delete what must be kept: generations that
    retention keeps, or objects still under Object Lock (a delete marker would
    hide them from itsup while their bytes stay)."""
    expire = s3.lifecycle.expire_days
    if not expire:
        return []
    where = f"{settings.key_path}.lifecycle.expire_days"
    problems = []
    horizon = retention_horizon(host.config.backup)
    if horizon is not None and horizon[0] > expire:
        problems.append(
            f"{where}: {expire} days would delete generations that {horizon[1]} keeps "
            f"(about {horizon[0]} days); raise it to at least {horizon[0]}, or null"
        )
    if s3.object_lock is not None and s3.object_lock.days > expire:
        problems.append(
            f"{where}: {expire} days is shorter than object_lock.days "
            f"({s3.object_lock.days}): generations would vanish from listings while still locked"
        )
    return problems


# -- setup-bucket -----------------------------------------------------------------------


@dataclass
class Setting:
    item: str
    wanted: str
    already: Callable[[], bool]
    apply: Callable[[], None]
    hint: str = ""  # said when the server refuses it


def _settings(opened: Opened) -> list[Setting]:
    b, s3, prefix = opened.bucket, opened.s3, opened.settings.prefix
    rules = lifecycle_rules(prefix, s3.lifecycle)

    def encryption_ok() -> bool:
        have = b.encryption() or {}
        return have.get("SSEAlgorithm") == s3.sse and (
            s3.kms_key_id is None or have.get("KMSMasterKeyID") == s3.kms_key_id
        )

    def put_lifecycle() -> None:
        ours = {r["ID"] for r in rules}
        others = [r for r in b.lifecycle() or [] if r.get("ID") not in ours]
        b.put_lifecycle(others + rules)

    found = [
        Setting("versioning", "Enabled", lambda: b.versioning() == "Enabled", b.enable_versioning),
        Setting(
            "encryption",
            s3.sse + (f" with KMS key {s3.kms_key_id}" if s3.kms_key_id else ""),
            encryption_ok,
            lambda: b.put_encryption(s3.sse, s3.kms_key_id),
        ),
        Setting(
            "public access block",
            "all four blocks on",
            lambda: all((b.public_access_block() or {}).get(k) for k in PUBLIC_ACCESS_BLOCK),
            b.put_public_access_block,
        ),
        Setting(
            "lifecycle",
            f"{prefix or '(whole bucket)'}: {describe_lifecycle(s3.lifecycle)}",
            lambda: lifecycle_matches(b.lifecycle(), rules),
            put_lifecycle,
        ),
    ]
    lock = s3.object_lock
    if lock is not None:

        def lock_ok() -> bool:
            have = b.object_lock()
            return bool(
                have and have["enabled"] and (have["mode"], have["days"]) == (lock.mode, lock.days)
            )

        found.append(
            Setting(
                "object lock",
                f"default retention {lock.mode} {lock.days} days",
                lock_ok,
                lambda: b.put_object_lock(lock.mode, lock.days),
                hint="Object Lock can be turned on only when a bucket is created on most "
                "providers (AWS also allows it later, once versioning is on): create a new "
                "bucket with `itsup backup setup-bucket --create`",
            )
        )
    return found


def setup_bucket(
    host: Host,
    choice: str | None,
    *,
    dry_run: bool,
    create: bool,
    report: Callable[[Step], None],
) -> list[Step]:
    """Apply what itsup.yml asks to the bucket, reporting each step as it goes."""
    opened = open_bucket(host, choice, "setup-bucket")
    problems = expiry_problems(host, opened.settings, opened.s3)
    if problems:
        raise ConfigError(problems)
    steps: list[Step] = []

    def emit(step: Step) -> None:
        steps.append(step)
        report(step)

    b, settings = opened.bucket, _settings(opened)
    if not b.exists():
        if not create:
            raise StorageError(
                f"{b.target.name}: bucket {b.name} does not exist",
                hint="`itsup backup setup-bucket --create` creates it, with Object Lock enabled",
            )
        emit(Step("bucket", "would create" if dry_run else "created", _created(opened)))
        if dry_run:
            for s in settings:
                emit(Step(s.item, "would set", s.wanted))
            return steps
        b.create(opened.s3.region, object_lock=True)
    elif create:
        emit(Step("bucket", "already so", f"{b.name} exists"))
    for s in settings:
        emit(_apply(s, dry_run))
    if opened.s3.object_lock is None:
        emit(Step("object lock", "skipped", "not asked: this target sets no object_lock"))
    return steps


def _created(opened: Opened) -> str:
    return f"{opened.bucket.name} in {opened.s3.region}, Object Lock enabled, so versioning too"


def _apply(setting: Setting, dry_run: bool) -> Step:
    try:
        if setting.already():
            return Step(setting.item, "already so", setting.wanted)
        if dry_run:
            return Step(setting.item, "would set", setting.wanted)
        setting.apply()
    except BucketError as exc:
        hint = f" ({setting.hint})" if setting.hint else ""
        return Step(setting.item, "refused", f"{exc.message}{hint}")
    return Step(setting.item, "set", setting.wanted)


# -- doctor -------------------------------------------------------------------------------


def doctor(host: Host, choice: str | None, report: Callable[[Finding], None]) -> list[Finding]:
    """Check the bucket against itsup.yml, one finding each; StorageError when the
    bucket cannot be reached or does not exist."""
    opened = open_bucket(host, choice, "doctor")
    b = opened.bucket
    if not b.exists():
        raise StorageError(
            f"{b.target.name}: bucket {b.name} does not exist",
            hint="`itsup backup setup-bucket --create` creates it",
        )
    findings: list[Finding] = []
    checks: list[Callable[[Opened, Host], list[Finding]]] = [
        _check_settings,
        _check_object_lock,
        _check_expiry,
        _check_access,
        _check_clock,
    ]
    for check in checks:
        for finding in check(opened, host):
            findings.append(finding)
            report(finding)
    return findings


def _cannot_tell(item: str, exc: BucketError) -> Finding:
    if exc.code in {"AccessDenied", "403"}:
        return Finding(item, "?", f"cannot tell: this key may not read it ({exc.code})")
    return Finding(item, "FAIL", exc.message)


def _check_settings(opened: Opened, _host: Host) -> list[Finding]:
    found = []
    for s in _settings(opened):
        if s.item == "object lock":
            continue  # _check_object_lock says more
        try:
            ok = s.already()
        except BucketError as exc:
            found.append(_cannot_tell(s.item, exc))
            continue
        detail = s.wanted if ok else f"not as asked: want {s.wanted} (itsup backup setup-bucket)"
        found.append(Finding(s.item, "ok" if ok else "FAIL", detail))
    return found


def _check_object_lock(opened: Opened, _host: Host) -> list[Finding]:
    item, lock, s3 = "object lock", opened.s3.object_lock, opened.s3
    try:
        have = opened.bucket.object_lock()
    except BucketError as exc:
        return [_cannot_tell(item, exc)]
    enabled = bool(have and have["enabled"])
    default = (
        f"default retention {have['mode']} {have['days']} days" if have and have["mode"] else ""
    )
    if lock is not None:
        if not enabled:
            return [
                Finding(
                    item,
                    "FAIL",
                    f"object_lock asks for {lock.mode} {lock.days} days, but the bucket has no "
                    "Object Lock: every write would be refused (setup-bucket --create makes a "
                    "bucket with it)",
                )
            ]
        return [
            Finding(
                item,
                "ok",
                f"enabled; writes are locked {lock.mode} {lock.days} days"
                + (f"; {default}" if default else ""),
            )
        ]
    if default and s3.checksum == "when_required":
        return [
            Finding(
                item,
                "FAIL",
                f"the bucket has a {default}, so S3 demands Content-MD5 on every write, which "
                "itsup sends only with object_lock set: set object_lock for this target",
            )
        ]
    state = "enabled, " + (default or "no default retention") if enabled else "not enabled"
    return [Finding(item, "info", f"{state}; not asked (this target sets no object_lock)")]


def _check_expiry(opened: Opened, host: Host) -> list[Finding]:
    problems = expiry_problems(host, opened.settings, opened.s3)
    if not problems:
        return []
    return [Finding("lifecycle expiry", "FAIL", problem) for problem in problems]


def _check_access(opened: Opened, _host: Host) -> list[Finding]:
    """put, get and list a probe object under the prefix (required), then delete it
    (reported, never required: a host's key that may not delete is the point of
    the least-privilege policy)."""
    b = opened.bucket
    key = f"{opened.settings.prefix}{PROBE}"
    data = b"itsup doctor probe\n"
    found = []
    steps: list[tuple[str, Callable[[], bool]]] = [
        ("put", lambda: _done(b.put_probe, key, data)),
        ("get", lambda: b.get_probe(key) == data),
        ("list", lambda: key in b.list_probe(key)),
    ]
    for what, call in steps:
        try:
            ok = call()
        except BucketError as exc:
            found.append(Finding(f"credentials: {what}", "FAIL", exc.message))
            return found
        detail = key if ok else f"{key}: not what was written"
        found.append(Finding(f"credentials: {what}", "ok" if ok else "FAIL", detail))
    try:
        b.delete_probe(key)
    except BucketError as exc:
        return [
            *found,
            Finding(
                "credentials: delete",
                "info",
                f"denied ({exc.code}): prune and cleanup must run with another key, or the "
                f"lifecycle expires generations; {key} stays",
            ),
        ]
    return [
        *found,
        Finding(
            "credentials: delete",
            "info",
            "allowed: this key can prune (and so can anyone who steals it; see iam-policy)",
        ),
    ]


def _done(call: Callable[..., None], *args: Any) -> bool:
    call(*args)
    return True


def _check_clock(opened: Opened, _host: Host) -> list[Finding]:
    server, local = opened.bucket.server_time()
    skew = local - server
    detail = f"local clock is {abs(skew):.0f} s {'ahead of' if skew >= 0 else 'behind'} the server"
    if abs(skew) > SKEW_FAIL:
        return [Finding("clock", "FAIL", f"{detail}: S3 refuses requests signed 15 min off")]
    if abs(skew) > SKEW_WARN:
        return [Finding("clock", "warn", f"{detail}: lock dates are counted from it")]
    return [Finding("clock", "ok", f"{detail} (the Date header counts whole seconds)")]


# -- iam-policy ---------------------------------------------------------------------------


def iam_policy(host: Host, choice: str | None, read_only: bool) -> dict[str, Any]:
    """The least-privilege IAM policy for the target's bucket and prefix.

    The writer's statements (list, put, get, multipart) are apart from the one
    prune and cleanup need (DeleteObject, Sid ItsupPrune), so that a host's key
    can leave it out; s3:DeleteObjectVersion and s3:BypassGovernanceRetention are
    never granted, so no itsup key can remove a locked version. `read_only`:
    what a restore host needs, list and get.
    """
    settings, s3 = s3_settings(host, choice, "iam-policy")
    bucket = f"arn:aws:s3:::{settings.location}"
    objects = f"{bucket}/{settings.prefix}*"
    listing: dict[str, Any] = {
        "Sid": "ItsupList",
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": [bucket],
    }
    if settings.prefix:
        prefixes = [settings.prefix, f"{settings.prefix}*"]
        listing["Condition"] = {"StringLike": {"s3:prefix": prefixes}}
    if read_only:
        read = {
            "Sid": "ItsupRead",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [objects],
        }
        return {"Version": "2012-10-17", "Statement": [listing, read]}
    write = [
        "s3:PutObject",
        "s3:GetObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:GetObjectRetention",
    ]
    if s3.object_lock is not None:
        write.append("s3:PutObjectRetention")  # a write that sets its own retention
    statements = [
        listing,
        {
            "Sid": "ItsupUploads",
            "Effect": "Allow",
            "Action": ["s3:ListBucketMultipartUploads"],
            "Resource": [bucket],
        },
        {"Sid": "ItsupWrite", "Effect": "Allow", "Action": write, "Resource": [objects]},
        {
            "Sid": "ItsupInspectBucket",
            "Effect": "Allow",
            "Action": [
                "s3:GetLifecycleConfiguration",
                "s3:GetEncryptionConfiguration",
                "s3:GetBucketVersioning",
                "s3:GetBucketPublicAccessBlock",
                "s3:GetBucketObjectLockConfiguration",
            ],
            "Resource": [bucket],
        },
        {
            "Sid": "ItsupPrune",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": [objects],
        },
    ]
    return {"Version": "2012-10-17", "Statement": statements}
