"""Load `projects/itsup.yml`: parse, expand `${VAR}`, validate, report.

One fixed sequence of pure steps (as borgmatic does): read the file, parse
YAML keeping line numbers, expand placeholders from `secrets/itsup.txt` and
then the process environment, validate against the schema, and report every
problem as `FILE:LINE: key.path: message`. Values that came from a
placeholder are secret-aware: they print as `***`.
"""

from __future__ import annotations

import difflib
import itertools
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from itsup.configcheck import edit_distance, report_problems
from itsup.errors import ConfigError
from itsup.layout import Layout
from itsup.retention import LOCAL, UNLIMITED, Policy, time_zone
from itsup.yamldoc import MAX_KEY_SHOWN, KeyPath, clip, dotted, parse_yaml

Path_ = KeyPath

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Sections itsup itself reads; the rest of itsup.yml belongs to other tools.
OWN_SECTIONS = ("backup", "notify")
MAX_DURATION_CHARS = 100  # 1w2d3h4m5s is 10
MAX_PATH = 4096  # the longest path Linux takes (PATH_MAX)


class Expanded(str):
    """A string that was wholly one `${VAR}` placeholder (and may be a secret)."""


def _typed(value: Any) -> Any:
    # `part_size_mb: ${PART}` expands to the text "16"; read it as YAML would
    # have read the literal, so placeholders work for numbers and booleans too.
    if isinstance(value, Expanded):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, bool | int | float):
            return parsed
    return value


Flag = Annotated[bool, BeforeValidator(_typed)]
Count = Annotated[int, BeforeValidator(_typed)]
Number = Annotated[float, BeforeValidator(_typed)]


def _recipient(value: str) -> str:
    from itsup.agekeys import parse_recipient

    if value.strip().upper().startswith("AGE-SECRET-KEY-"):
        raise ValueError(
            "this is an age secret key (identity), not a public recipient; "
            "give its public key (age-keygen -y) and keep the secret key out of itsup.yml"
        )
    parse_recipient(value)
    return value


def _prefix(value: str) -> str:
    """A key prefix names a folder: `itsup` means `itsup/` (never objects named `itsupbackup-...`).

    An empty prefix stays empty: the objects go to the bucket's (or folder's) root.
    """
    if value.startswith("/"):
        raise ValueError(
            "must be a relative key prefix: write it without the leading '/', e.g. 'itsup/'"
        )
    if ".." in value.split("/"):
        raise ValueError("must be a relative key prefix without '..', e.g. 'itsup/'")
    if value and not value.endswith("/"):
        value += "/"
    return value


Prefix = Annotated[str, AfterValidator(_prefix)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ObjectLockConfig(Strict):
    """`object_lock:` of an S3 target: the retention every object of a backup gets."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: Count = Field(ge=1, le=36500)


OptionalDays = Annotated[Count, Field(ge=1, le=36500)] | None


class LifecycleConfig(Strict):
    """`lifecycle:` of an S3 target: the bucket's lifecycle rules for itsup's prefix
    (the spec's numbers by default). `null` leaves a step out."""

    ia_days: Annotated[Count, Field(ge=30, le=36500)] | None = 30  # S3's minimum for IA
    glacier_days: OptionalDays = 90
    expire_days: OptionalDays = 365
    # Old versions (a versioned bucket: every `latest` copy replaced) go this long
    # after they stopped being current.
    noncurrent_days: Annotated[Count, Field(ge=1, le=36500)] = 30

    @model_validator(mode="after")
    def _in_order(self) -> LifecycleConfig:
        steps = [(k, getattr(self, k)) for k in ("ia_days", "glacier_days", "expire_days")]
        given = [(k, v) for k, v in steps if v is not None]
        for (k1, v1), (k2, v2) in itertools.pairwise(given):
            if v2 <= v1:
                raise ValueError(f"{k2} ({v2}) must come after {k1} ({v1})")
        return self


class S3Options(Strict):
    """How an S3 target is reached: everything but where (bucket and prefix)."""

    region: str = "us-east-1"
    endpoint: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    storage_class: str | None = None
    part_size_mb: Count = Field(default=16, ge=5, le=5120)
    max_concurrency: Count = Field(default=4, ge=1, le=64)
    addressing_style: Literal["auto", "path", "virtual"] = "path"
    # Network limits, so that a server that stops answering ends a run in bounded
    # time: seconds to open a connection (and for each send to make progress),
    # seconds a request may wait for the next byte of an answer, and attempts per
    # request in all (retried with backoff on errors, throttling and timeouts).
    connect_timeout: Count = Field(default=10, ge=1, le=600)
    read_timeout: Count = Field(default=60, ge=1, le=3600)
    max_attempts: Count = Field(default=8, ge=1, le=20)
    # Which checksums boto3 adds and checks: `when_required` (only where S3
    # demands one; some S3-compatible providers refuse the newer CRC headers)
    # or `when_supported` (boto3's own default: a CRC on every upload).
    checksum: Literal["when_required", "when_supported"] = "when_required"
    # Immutable backups: every object a backup writes carries this retention
    # (the bucket must have Object Lock enabled: `itsup backup setup-bucket`).
    object_lock: ObjectLockConfig | None = None
    # What `itsup backup setup-bucket` applies to the bucket (and `doctor` checks):
    # the lifecycle of generations, and default encryption (SSE-S3, or SSE-KMS
    # with `kms_key_id`).
    lifecycle: LifecycleConfig = Field(default_factory=lambda: LifecycleConfig())
    sse: Literal["AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> S3Options:
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("kms_key_id is for sse: aws:kms (SSE-KMS); set sse: aws:kms too")
        return self

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be a URL such as https://s3.example.com")
        return value


class S3Config(S3Options):
    """The `backup.s3:` section: the target named `s3`."""

    bucket: str = Field(min_length=1)
    prefix: Prefix = "itsup/"


class LocalConfig(Strict):
    """The `backup.local:` section: the target named `local`."""

    path: str = Field(min_length=1, max_length=MAX_PATH)
    prefix: Prefix = "itsup/"


# -- named targets (`backup.targets:`) --------------------------------------------

# The URL schemes a target may have; itsup.storage registers an opener for each
# (tests/test_storage.py keeps the two in step).
TARGET_SCHEMES = ("s3", "file")
TARGET_FORMS = "s3://BUCKET/PREFIX, file:///PATH or a path relative to the host root"
# The name of the local folder `<root>/backups/itsup/` when no `local` target is
# configured: it is there when nothing else is, and `--target local` reaches it.
EMBEDDED_TARGET = "local"
EMBEDDED_LOCAL = LocalConfig(path="backups", prefix="itsup/")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def url_scheme(url: str) -> str:
    """A target URL's scheme in lower case (`s3`, `file`, ...); "" for a plain path."""
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else ""


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PREFIX` as (bucket, prefix); the prefix names a folder (`_prefix`)."""
    rest = url[len("s3:") :]
    if not rest.startswith("//"):
        raise ValueError("write an S3 target as s3://BUCKET/PREFIX")
    bucket, _, prefix = rest[2:].partition("/")
    if not bucket or re.search(r"\s", bucket):
        raise ValueError("names no bucket: write s3://BUCKET/PREFIX, e.g. s3://my-backups/itsup")
    return bucket, _prefix(prefix)


def split_folder_url(url: str) -> tuple[str, str]:
    """`file:///PATH` or a plain path as (the folder holding it, its name as a key prefix).

    `file:///var/backups/itsup` is the folder `/var/backups` with the prefix
    `itsup/`, which is what `local: {path: /var/backups, prefix: itsup/}`
    always meant: generations written either way read back either way.
    """
    scheme = url_scheme(url)
    path = url
    if scheme == "file":
        path = url[len("file:") :]
        if not path.startswith("///"):
            raise ValueError("a file URL names an absolute path: write file:///PATH")
        path = path[2:]
    elif scheme:
        raise ValueError(f"unknown scheme '{scheme}:'; known: {TARGET_FORMS}")
    parent, name = posixpath.split(posixpath.normpath(path))
    if name in ("", ".", "..") or (name.startswith("~") and not parent):
        raise ValueError(
            "names no folder to keep backups in: e.g. backups/itsup or file:///var/backups/itsup"
        )
    return parent or ".", name + "/"


def _checked(split: Callable[[str], tuple[str, str]]) -> Callable[[str], str]:
    def check(url: str) -> str:
        split(url)
        return url

    return check


class S3TargetConfig(S3Options):
    url: Annotated[str, Field(max_length=MAX_PATH), AfterValidator(_checked(split_s3_url))]


class LocalTargetConfig(Strict):
    url: Annotated[
        str, Field(min_length=1, max_length=MAX_PATH), AfterValidator(_checked(split_folder_url))
    ]


def _target_kind(value: Any) -> str:
    url = value.get("url") if isinstance(value, dict) else getattr(value, "url", None)
    return "s3" if isinstance(url, str) and url_scheme(url) == "s3" else "file"


def _target_name(value: str) -> str:
    if not _TARGET_NAME.fullmatch(value):
        raise ValueError(
            "a target name is up to 64 letters, digits, '-' and '_', starting with a "
            "letter or digit (it is what --target takes)"
        )
    return value


# `name: URL` is short for `name: {url: URL}`; the URL's scheme picks the settings.
TargetConfig = Annotated[
    Annotated[S3TargetConfig, Tag("s3")] | Annotated[LocalTargetConfig, Tag("file")],
    Discriminator(_target_kind),
    BeforeValidator(lambda value: {"url": value} if isinstance(value, str) else value),
]


@dataclass(frozen=True)
class TargetSettings:
    """One target, whichever way itsup.yml gives it (a `targets:` entry, `s3:`, `local:`)."""

    name: str
    key_path: str  # where itsup.yml sets it, for messages: "backup.targets.usb"
    scheme: str  # one of TARGET_SCHEMES
    location: str  # the bucket; or the folder, as written (relative to the root, `~`)
    prefix: str  # key prefix inside it, "" or ending in "/"
    s3: S3Options | None = None

    @classmethod
    def of(
        cls,
        name: str,
        key_path: str,
        given: S3Config | LocalConfig | S3TargetConfig | LocalTargetConfig,
    ) -> TargetSettings:
        if isinstance(given, S3Config):
            return cls(name, key_path, "s3", given.bucket, given.prefix, given)
        if isinstance(given, LocalConfig):
            return cls(name, key_path, "file", given.path, given.prefix)
        if isinstance(given, S3TargetConfig):
            return cls(name, key_path, "s3", *split_s3_url(given.url), given)
        return cls(name, key_path, "file", *split_folder_url(given.url))


def suggest(name: str, known: list[str]) -> str:
    """`"; did you mean 'x'?"` for a close known name, else ""."""
    close = difflib.get_close_matches(name.casefold(), [k.casefold() for k in known], n=1)
    if not close:
        return ""
    return f"; did you mean '{next(k for k in known if k.casefold() == close[0])}'?"


class CompressionConfig(Strict):
    codec: Literal["gzip", "none"] = "gzip"
    # ISA-L's levels: 0 fastest .. 3 smallest; the output is standard gzip.
    level: Count = Field(default=1, ge=0, le=3)
    threads: Count = Field(default=2, ge=1, le=64)


class EncryptionConfig(Strict):
    recipients: list[Annotated[str, AfterValidator(_recipient)]] = Field(min_length=1)
    identity_file: str | None = None


def _compression_kind(value: Any) -> str:
    return "settings" if isinstance(value, dict | CompressionConfig) else "switch"


def _seconds(value: Any) -> Any:
    """`48h`, `30m`, `7d` (or a number of seconds) as seconds."""
    from itsup.durations import parse_duration

    if isinstance(value, bool):
        return value  # let validation refuse it
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if len(value) > MAX_DURATION_CHARS:  # parse_duration's pattern is quadratic in length
            raise ValueError(f"{len(value)} characters are too many for a duration")
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


Seconds = Annotated[int, BeforeValidator(_seconds), Field(ge=1)]
Event = Literal["failure", "partial", "stale", "verify_failed", "drill_failed", "success", "locked"]
EVENTS: tuple[Event, ...] = get_args(Event)
# `success` and `locked` (a backup skipped because another still runs) only when asked for.
DEFAULT_EVENTS: tuple[Event, ...] = tuple(e for e in EVENTS if e not in ("success", "locked"))


def _http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL")
    return value


class MonitoringConfig(Strict):
    # `itsup backup check` and stale-backup alerts: the newest complete
    # generation may be at most this old (the spec: alert after 48 hours).
    max_age: Seconds = 48 * 3600
    # Restore drill targets: recovery time and the age of the restored data.
    rto: Seconds | None = None
    rpo: Seconds | None = None
    # Prometheus text file for node_exporter's textfile collector.
    metrics_file: str | None = None
    # Healthchecks-style pings: URL, URL/start, URL/fail.
    healthchecks: Annotated[str | None, AfterValidator(_http_url)] = None


def _notify_item(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


class NotifyTarget(Strict):
    url: str = Field(min_length=3)
    events: list[Event] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)

    @field_validator("url")
    @classmethod
    def _apprise_url(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError(
                "must be an apprise URL such as ntfys://ntfy.sh/topic or json://host/path"
            )
        return value


class GuardConfig(Strict):
    # A backup holding fewer than this share of the files or of the bytes of the
    # newest complete generation on the target is refused (an unmounted disk, a
    # wrong root, a new host before its restore): it would replace `latest`.
    # 0 turns the comparison off; an empty source is refused whatever the ratio.
    min_ratio: Number = Field(default=0.5, ge=0, le=1)


def _keep_count(value: Any) -> Any:
    """A retention count: a whole number, or `unlimited` (restic's word; -1)."""
    value = _typed(value)
    if value == "unlimited":
        return UNLIMITED
    if isinstance(value, int) and not isinstance(value, bool) and value < UNLIMITED:
        raise ValueError("must be 0 or more, or unlimited")
    return value


def _time_zone(value: str) -> str:
    time_zone(value)
    return value


KEEP_COUNTS = tuple(name for name in Policy.model_fields if name != "keep_within")


class RetentionConfig(Strict, Policy):
    """`backup.retention`: what `itsup backup prune` keeps (restic's `forget --keep-*`):
    the rules (`retention.Policy`'s keep_* fields, read as the configuration reads
    numbers and durations), and the settings below."""

    model_config = Strict.model_config
    # Run prune after every backup that stored a generation (its failure is a warning).
    prune_after_backup: Flag = False
    # The wall clock the hours, days, weeks, months and years are counted in.
    timezone: Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_time_zone)] = (
        LOCAL
    )

    @field_validator(*KEEP_COUNTS, mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return _keep_count(value)

    @field_validator("keep_within", mode="before")
    @classmethod
    def _within(cls, value: Any) -> Any:
        return _seconds(value)

    @model_validator(mode="after")
    def _keeps_something(self) -> RetentionConfig:
        if self.empty():
            raise ValueError(
                "keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, "
                "keep_weekly, keep_monthly, keep_yearly (above 0) or keep_within; an empty "
                "policy is refused rather than read as 'remove all but the newest'"
            )
        return self


def unknown_target(name: str, known: list[str]) -> str:
    return f"no target is named '{name}' (known: {', '.join(known)}{suggest(name, known)})"


def _target_names(
    has_s3: bool, has_local: bool, targets: dict[str, Any], order: tuple[str, ...]
) -> list[str]:
    """Target names in the order their keys stand in the section; an `s3:` section
    counts before a `local:` one wherever they stand (the default before named targets)."""
    given = {"s3": has_s3, "local": has_local}
    names: list[str] = []
    for key in (*order, "s3", "local", "targets"):
        if key == "targets":
            names += [n for n in targets if n not in names]
        elif given.get(key) and key not in names:
            names.append(key)
    if "s3" in names and "local" in names and names.index("local") < names.index("s3"):
        i, j = names.index("local"), names.index("s3")
        names[i], names[j] = names[j], names[i]
    return names


class BackupConfig(Strict):
    s3: S3Config | None = None
    local: LocalConfig | None = None
    # Named targets, each a URL with the settings of its kind (after s3/local:
    # a name given both ways is refused).
    targets: Annotated[
        dict[Annotated[str, AfterValidator(_target_name)], TargetConfig],
        BeforeValidator(lambda value: {} if value is None else value),
    ] = Field(default_factory=dict)
    # The target used without --target (after targets: it must name one).
    target: str | None = None
    include_volumes: Flag = False
    # `compression: true|false` as the spec writes it, or a mapping of settings.
    compression: Annotated[
        Annotated[Flag, Tag("switch")] | Annotated[CompressionConfig, Tag("settings")],
        Discriminator(_compression_kind),
    ] = True
    encryption: EncryptionConfig | None = None
    exclude: list[str] = Field(default_factory=list)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    # An archive or index without a manifest, left by a run that did not finish,
    # is deleted by the next backup once it is this old (younger ones may still
    # be written by another host sharing the prefix by mistake).
    orphan_grace: Seconds = 3600
    # Databases: `configured` dumps what projects/{project}/backup.yml asks for;
    # `auto` also dumps the engines found in the compose files of projects that
    # have no backup.yml (`itsup backup plan` shows both).
    databases: Literal["configured", "auto"] = "configured"
    # Dumps run at once (of different engines), and the longest a dump may
    # produce no bytes before it is killed and reported.
    dump_jobs: Count = Field(default=2, ge=1, le=16)
    dump_idle_timeout: Seconds = 300
    # A backup to several targets waits for a slow one; one that takes nothing for
    # this long is dropped (it fails, the others go on).
    target_stall_timeout: Seconds = 300
    # What `itsup backup prune` keeps; None: no policy, prune refuses to run.
    # `retention:` given empty is a policy that keeps nothing, refused.
    retention: Annotated[
        RetentionConfig | None, BeforeValidator(lambda value: {} if value is None else value)
    ] = None
    # The keys of the section in file order: the first target given is the default.
    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: Callable[[Any], BackupConfig]) -> BackupConfig:
        config = handler(data)
        if isinstance(data, dict):
            config._order = tuple(str(key) for key in data)
        return config

    @field_validator("targets")
    @classmethod
    def _names_given_once(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        for section in ("s3", "local"):
            if section in value and info.data.get(section) is not None:
                raise PydanticCustomError(
                    "target_clash",
                    f"is also given as the backup.{section} section: give each name once "
                    "(rename this target, or drop the section)",
                    {"below": (section,)},
                )
        return value

    @field_validator("target")
    @classmethod
    def _target_is_configured(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field that failed is absent from info.data (and reported on its own): a
        # section that failed was given, so its name counts; failed targets, unknown.
        if value is None or "targets" not in info.data:
            return value
        has_s3, has_local = (info.data.get(k, "failed") is not None for k in ("s3", "local"))
        known = _target_names(has_s3, has_local, info.data["targets"], ())
        if EMBEDDED_TARGET not in known:
            known.append(EMBEDDED_TARGET)
        if value not in known:
            raise ValueError(unknown_target(value, known))
        return value

    def target_names(self) -> list[str]:
        """The configured targets in file order (`s3:` before `local:`, as always),
        or the embedded `local` when there is none."""
        names = _target_names(
            self.s3 is not None, self.local is not None, self.targets, self._order
        )
        return names or [EMBEDDED_TARGET]

    @property
    def default_target(self) -> str:
        return self.target or self.target_names()[0]

    def unknown_target(self, name: str) -> str | None:
        """Why `name` names no target (listing those it could), or None when it names one."""
        known = self.target_names()
        if EMBEDDED_TARGET not in known:
            known.append(EMBEDDED_TARGET)
        return None if name in known else unknown_target(name, known)

    def target_settings(self, name: str) -> TargetSettings:
        """The settings of a target named by `target_names` (or the embedded `local`)."""
        if name in self.targets:
            return TargetSettings.of(name, f"backup.targets.{name}", self.targets[name])
        if name == "s3" and self.s3 is not None:
            return TargetSettings.of(name, "backup.s3", self.s3)
        if name == EMBEDDED_TARGET:
            return TargetSettings.of(name, "backup.local", self.local or EMBEDDED_LOCAL)
        raise KeyError(name)

    @property
    def compression_settings(self) -> CompressionConfig:
        if isinstance(self.compression, CompressionConfig):
            return self.compression
        return CompressionConfig(codec="gzip" if self.compression else "none")


class ItsupConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    # Where alerts go: apprise URLs, each for all events but success unless
    # `events:` says otherwise.
    notify: list[Annotated[NotifyTarget, BeforeValidator(_notify_item)]] = Field(
        default_factory=list
    )

    @property
    def backup_given(self) -> bool:
        """Whether itsup.yml has a `backup:` section at all.

        Without one, itsup does not know where backups go: a command that opens
        a target refuses (`Host.target`) rather than quietly using the local
        default. `backup: {}`, and `backup:` with nothing under it, count as
        given: they select the local default explicitly.
        """
        return "backup" in self.model_fields_set


# -- step 1: read files ---------------------------------------------------------


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a dotenv file (KEY=VALUE, `export` prefix, quotes, # comments)."""
    return parse_dotenv(read_text(path, "the secrets file"), str(path))


def parse_dotenv(text: str, source: str) -> dict[str, str]:
    """Parse dotenv text; `source` names it in messages (which never quote a line)."""
    path = source
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            # Never echo the line: it may hold a secret.
            raise ConfigError(f"{path}:{lineno}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


# -- step 3: expand placeholders ----------------------------------------------


def expand(
    data: Any, lookup: Callable[[str], str | None], path: Path_ = ()
) -> tuple[Any, list[tuple[Path_, str]], set[Path_]]:
    """Expand `${VAR}` / `${VAR:-default}` in strings; return (data, undefined, expanded paths).

    A string that is exactly one placeholder becomes an `Expanded` string, so
    that number and boolean settings can be given by placeholder too.
    """
    undefined: list[tuple[Path_, str]] = []
    touched: set[Path_] = set()
    # YAML aliases make one mapping or list appear in many places: expand each
    # once and share the result, or a "billion laughs" document (nine aliases
    # of nine aliases of ...) costs exponential time and memory.
    done: dict[int, Any] = {}
    active: set[int] = set()

    def walk(value: Any, where: Path_) -> Any:
        if isinstance(value, dict | list):
            key = id(value)
            if key in done:
                return done[key]
            if key in active:
                raise RecursionError("an &anchor that refers to itself")
            active.add(key)
            if isinstance(value, dict):
                result: Any = {k: walk(v, (*where, str(k))) for k, v in value.items()}
            else:
                result = [walk(v, (*where, i)) for i, v in enumerate(value)]
            active.discard(key)
            done[key] = result
            return result
        if isinstance(value, str) and "${" in value:

            def repl(m: re.Match[str]) -> str:
                found = lookup(m.group(1))
                if found is None:
                    if m.group(2) is not None:
                        return m.group(2)
                    undefined.append((where, m.group(1)))
                    return m.group(0)
                touched.add(where)
                return found

            result = PLACEHOLDER.sub(repl, value)
            return Expanded(result) if PLACEHOLDER.fullmatch(value) else result
        return value

    return walk(data, path), undefined, touched


# -- step 4: validate and report (configcheck.py tells the problems) -------------


def _folder_target_key(raw: tuple[Any, ...], loc: Path_) -> str | None:
    """An S3 setting given to a folder target."""
    in_folder_target = raw[:2] == ("backup", "targets") and raw[3:4] == ("file",)
    if in_folder_target and loc and loc[-1] in S3Options.model_fields:
        return "unknown key: only an s3:// target takes it"
    return None


def misspelt_section(key: object) -> str | None:
    """The section of itsup's own a top-level key was probably meant to be.

    Other tools keep their settings in itsup.yml too (itsUP: `router_ip`,
    `traefik`, `backend`, ...), so unknown top-level keys are allowed; but one
    that differs from `backup` or `notify` only by case or by a small edit
    (`Backup`, `bakup`, `backups`, `backpu`, `notfy`) would silently leave the
    section out: Damerau-Levenshtein distance up to 2 for keys of 5 characters
    or more, up to 1 for shorter ones, after case-folding.
    """
    if not isinstance(key, str) or key in OWN_SECTIONS:
        return None
    folded = key.casefold()
    limit = 2 if len(folded) >= 5 else 1
    for section in OWN_SECTIONS:
        if edit_distance(folded, section, limit) <= limit:
            return section
    return None


def _misspelt_sections(
    data: dict[Any, Any], source: str, lines: dict[Path_, int]
) -> list[tuple[int, str]]:
    found = []
    for key in data:
        section = misspelt_section(key)
        if section is not None:
            line = lines.get((str(key),), 0)
            found.append(
                (
                    line,
                    f"{source}:{line}: {dotted((str(key),))}: unknown section "
                    f"(did you mean '{section}'?)",
                )
            )
    return found


def load_secrets(layout: Layout) -> dict[str, str]:
    """The shared secrets: `secrets/itsup.txt`, else `secrets/itsup.enc.txt` decrypted in memory.

    A freshly cloned host has only the encrypted file; decrypting it in memory
    (never to disk) lets it back up and restore before anyone runs `decrypt`.
    When it cannot be decrypted and itsup.yml has no `${VAR}` to expand, the
    run goes on without it (with a warning): nothing needed it.
    """
    if layout.shared_secrets.is_file():
        return read_dotenv(layout.shared_secrets)
    encrypted = layout.secrets / "itsup.enc.txt"
    if not encrypted.is_file():
        return {}
    from itsup import sops
    from itsup.errors import ItsupError

    try:
        data = encrypted.read_bytes()
        plain = sops.decrypt(data, "secrets/itsup.enc.txt", layout.secrets)
    except (ItsupError, OSError) as exc:
        try:
            needed = "${" in layout.config_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            needed = True
        if needed:
            raise
        import logging

        message = exc.message if isinstance(exc, ItsupError) else str(exc)
        logging.getLogger("itsup").warning("shared secrets not loaded: %s", message)
        return {}
    return parse_dotenv(plain.decode("utf-8", "replace"), "secrets/itsup.enc.txt (decrypted)")


def load_config(
    layout: Layout, environ: dict[str, str] | None = None, secrets: dict[str, str] | None = None
) -> ItsupConfig:
    """Load and validate itsup.yml for a host root, or raise ConfigError listing every problem."""
    source = str(layout.config_file)
    try:
        return _load(layout, source, environ, secrets)
    except RecursionError:
        raise ConfigError(
            f"{source}: nested too deeply (or an &anchor that refers to itself)"
        ) from None


def _load(
    layout: Layout, source: str, environ: dict[str, str] | None, secrets: dict[str, str] | None
) -> ItsupConfig:
    data, lines = parse_yaml(read_text(layout.config_file, "the config file"), source, OWN_SECTIONS)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}:{lines.get((), 1)}: the top level must be a mapping of sections"
        )
    if secrets is None:
        secrets = load_secrets(layout)
    env = os.environ if environ is None else environ
    used: set[str] = set()

    def lookup(name: str) -> str | None:
        assert secrets is not None
        found = secrets.get(name, env.get(name))
        if found is not None:
            used.add(found)
        return found

    own = {k: v for k, v in data.items() if k in OWN_SECTIONS}
    expanded, undefined, _ = expand(own, lookup)
    problems = []
    for where, name in undefined:
        line = lines.get(where)
        key = dotted(where)
        problems.append(
            (
                line or 0,
                f"{source}:{line}: {key}: ${{{clip(name, MAX_KEY_SHOWN)}}} is not defined in "
                f"{layout.shared_secrets.relative_to(layout.root)} or the environment",
            )
        )
    problems += _misspelt_sections(data, source, lines)
    merged = {**data, **expanded}
    # `backup:` with nothing under it is the section given empty (`backup: {}`):
    # the local default, chosen explicitly. A missing section stays missing, so
    # that `ItsupConfig.backup_given` can tell the two apart.
    for section, empty in (("backup", {}), ("notify", [])):
        if section in merged and merged[section] is None:
            merged[section] = empty
    try:
        config = ItsupConfig.model_validate(merged)
    except ValidationError as exc:
        skip = {where for where, _ in undefined}
        hidden = {v for v in (*used, *secrets.values()) if len(v) >= 4}
        problems += report_problems(
            exc, merged, source, lines, skip, hidden, model=ItsupConfig, special=_folder_target_key
        )
    if problems:
        ordered = sorted(problems, key=lambda p: p[0])  # stable: file order
        hint = None
        if any(misspelt_section(key) for key in data):
            hint = (
                "itsup reads only the backup: and notify: sections and leaves other "
                "top-level keys to other tools; a key this close to one of its own is "
                "taken for a typo"
            )
        raise ConfigError([text for _, text in ordered], hint=hint)
    return config
