"""Load `projects/itsup.yml`: parse, expand `${VAR}`, validate, report.

One fixed sequence of pure steps (as borgmatic does): read the file, parse
YAML keeping line numbers, expand placeholders from `secrets/itsup.txt` and
then the process environment, validate against the schema, and report every
problem as `FILE:LINE: key.path: message`. Values that came from a
placeholder are secret-aware: they print as `***`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from itsup.errors import ConfigError
from itsup.layout import Layout

Path_ = tuple[str | int, ...]
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Sections itsup itself reads; the rest of itsup.yml belongs to other tools.
OWN_SECTIONS = ("backup", "notify")
# Longest key (and message) shown in a problem line; longer ones are cut.
MAX_KEY_SHOWN = 80
MAX_MESSAGE_SHOWN = 300
# Longest number YAML may hold: Python's int() refuses over 4300 digits, and a
# YAML 1.1 base-60 number (`1:2:3:...`) costs time quadratic in its length.
MAX_NUMBER_CHARS = 1000
MAX_DURATION_CHARS = 100  # 1w2d3h4m5s is 10


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class S3Config(_Strict):
    bucket: str = Field(min_length=1)
    prefix: Prefix = "itsup/"
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

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be a URL such as https://s3.example.com")
        return value


class LocalConfig(_Strict):
    path: str = Field(min_length=1)
    prefix: Prefix = "itsup/"


class CompressionConfig(_Strict):
    codec: Literal["gzip", "none"] = "gzip"
    # ISA-L's levels: 0 fastest .. 3 smallest; the output is standard gzip.
    level: Count = Field(default=1, ge=0, le=3)
    threads: Count = Field(default=2, ge=1, le=64)


class EncryptionConfig(_Strict):
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


class MonitoringConfig(_Strict):
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


class NotifyTarget(_Strict):
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


class GuardConfig(_Strict):
    # A backup holding fewer than this share of the files or of the bytes of the
    # newest complete generation on the target is refused (an unmounted disk, a
    # wrong root, a new host before its restore): it would replace `latest`.
    # 0 turns the comparison off; an empty source is refused whatever the ratio.
    min_ratio: Number = Field(default=0.5, ge=0, le=1)


class BackupConfig(_Strict):
    s3: S3Config | None = None
    local: LocalConfig | None = None
    target: Literal["s3", "local"] | None = None
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

    @field_validator("target")
    @classmethod
    def _target_is_configured(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A failed `s3` section is absent from info.data: reported on its own.
        if value == "s3" and "s3" in info.data and info.data["s3"] is None:
            raise ValueError("is 's3', but there is no backup.s3 section")
        return value

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


def _read_text(path: Path, what: str) -> str:
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
    return parse_dotenv(_read_text(path, "the secrets file"), str(path))


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


# -- step 2: parse YAML keeping line numbers ------------------------------------


def _clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters: a 1 MB key or value must not make a 1 MB line."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...({len(text)} characters)"


def _dotted(path: Path_) -> str:
    """A key path as `backup.s3.bucket`; odd keys quoted so a message stays one line."""
    parts = (_clip(str(p), MAX_KEY_SHOWN) for p in path)
    return ".".join(p if re.fullmatch(r"[\w-]+", p) else json.dumps(p) for p in parts)


def _line_index(node: yaml.Node, path: Path_ = ()) -> Iterator[tuple[Path_, int]]:
    seen: set[int] = set()

    def walk(node: yaml.Node, path: Path_) -> Iterator[tuple[Path_, int]]:
        yield path, node.start_mark.line + 1
        if id(node) in seen:  # an alias of a node already indexed (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value)
                yield (*path, key), key_node.start_mark.line + 1
                for sub_path, line in walk(value_node, (*path, key)):
                    if sub_path != (*path, key):
                        yield sub_path, line
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                yield from walk(item, (*path, i))

    yield from walk(node, path)


def _duplicates(node: yaml.Node, source: str) -> list[tuple[int, str]]:
    """Keys given twice at the top level or inside itsup's own sections."""
    found: list[tuple[int, str]] = []

    def check(node: yaml.Node, path: Path_, deep: bool, seen: set[int]) -> None:
        if not isinstance(node, yaml.MappingNode) or id(node) in seen:
            return
        seen.add(id(node))
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                where = f"{source}:{line}: {_dotted((*path, key))}"
                found.append((line, f"{where}: duplicate key (first given at line {first[key]})"))
            else:
                first[key] = line
            if deep or key in OWN_SECTIONS:
                check(value_node, (*path, key), True, seen)

    check(node, (), False, set())
    return found


class _NumberTooLarge(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader, refusing numbers longer than MAX_NUMBER_CHARS."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        text = str(node.value)
        if len(text) > MAX_NUMBER_CHARS:
            raise _NumberTooLarge(
                None, None, f"a number of {len(text)} characters is too large", node.start_mark
            )
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _safe_load(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = _safe_load(text)
    except _NumberTooLarge as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"{source}{f':{line}' if line else ''}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        context = ""
        if exc.context and exc.context_mark and exc.context_mark is not mark:
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: broken YAML: {exc.problem or exc}{context}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"{source}:{line}: broken YAML: {exc.reason} character {exc.character!r}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: broken YAML: {' '.join(str(exc).split())}") from None
    if node is None:
        return data, {}
    duplicates = _duplicates(node, source)
    if duplicates:
        raise ConfigError([text for _, text in sorted(duplicates)])
    return data, dict(_line_index(node))


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


# -- step 4: validate and report ------------------------------------------------


def edit_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (optimal string alignment) of a and b; `limit + 1`
    as soon as it is known to be larger than `limit` (a 1 MB key costs nothing)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        before, row = row, current
    return min(row[-1], limit + 1)


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
                    f"{source}:{line}: {_dotted((str(key),))}: unknown section "
                    f"(did you mean '{section}'?)",
                )
            )
    return found


def _describe(error: Any, loc: Path_) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(ItsupConfig, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]).lower(), known, n=1)
        if close:
            return f"unknown key (did you mean '{close[0]}'?)"
        return "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    return message[0].lower() + message[1:]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is Annotated:
        return _models_in(get_args(annotation)[0])
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_keys(model: type[BaseModel], loc: Path_) -> list[str]:
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        candidates = _models_in(field.annotation)
        if not candidates:
            return []
        current = candidates[0]
    return sorted(current.model_fields)


def _locate(loc: tuple[Any, ...], data: Any, missing: bool) -> Path_:
    """The key path an error is about, in the operator's document.

    pydantic's locations also hold union member tags and markers such as
    '[key]'; keep only the steps that exist in the document (and, for a
    missing key, the key itself).
    """
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            out.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif missing and i == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return tuple(out)


def _report(
    exc: ValidationError,
    data: Any,
    source: str,
    lines: dict[Path_, int],
    skip: set[Path_] | None = None,
    hidden: set[str] | None = None,
) -> list[tuple[int, str]]:
    problems: dict[Path_, str] = {}
    for error in exc.errors():
        loc = _locate(tuple(error["loc"]), data, error["type"] == "missing")
        if any(loc[: len(s)] == s for s in skip or ()):
            continue  # already reported (an undefined placeholder)
        if loc not in problems:
            problems[loc] = _describe(error, loc)
    out = []
    for loc, text in problems.items():
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
        key = _dotted(loc) or "(top level)"
        shown = _clip(_hide(text, hidden or set()), MAX_MESSAGE_SHOWN)
        out.append((line or 0, f"{where}: {key}: {shown}"))
    return out


def _hide(text: str, secrets: set[str]) -> str:
    """Replace secret values in a message by `***` (longest first)."""
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "***")
    return text


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
    data, lines = parse_yaml(_read_text(layout.config_file, "the config file"), source)
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
        key = _dotted(where)
        problems.append(
            (
                line or 0,
                f"{source}:{line}: {key}: ${{{_clip(name, MAX_KEY_SHOWN)}}} is not defined in "
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
        problems += _report(exc, merged, source, lines, skip, hidden)
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
