"""Load `projects/itsup.yml`: parse, expand `${VAR}`, validate, report.

One fixed sequence of pure steps (as borgmatic does): read the file, parse
YAML keeping line numbers, expand placeholders from `secrets/itsup.txt` and
then the process environment, validate against the schema, and report every
problem as `FILE:LINE: key.path: message`. Values that came from a
placeholder are secret-aware: they print as `***`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from itsup.errors import ConfigError
from itsup.layout import Layout

Path_ = tuple[str | int, ...]
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Sections itsup itself reads; the rest of itsup.yml belongs to other tools.
OWN_SECTIONS = ("backup",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class S3Config(_Strict):
    bucket: str = Field(min_length=1)
    prefix: str = "itsup/"
    region: str = "us-east-1"
    endpoint: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    storage_class: str | None = None
    part_size_mb: int = Field(default=16, ge=5, le=5120)
    max_concurrency: int = Field(default=4, ge=1, le=64)
    addressing_style: Literal["auto", "path", "virtual"] = "path"

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be a URL such as https://s3.example.com")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be a relative key prefix such as 'itsup/'")
        return value


class LocalConfig(_Strict):
    path: str = Field(min_length=1)
    prefix: str = "itsup/"


class CompressionConfig(_Strict):
    codec: Literal["gzip", "none"] = "gzip"
    # ISA-L's levels: 0 fastest .. 3 smallest; the output is standard gzip.
    level: int = Field(default=1, ge=0, le=3)
    threads: int = Field(default=2, ge=1, le=64)


class EncryptionConfig(_Strict):
    recipients: list[str] = Field(min_length=1)
    identity_file: str | None = None

    @field_validator("recipients")
    @classmethod
    def _recipients_parse(cls, value: list[str]) -> list[str]:
        from itsup.pipeline.crypt import parse_recipient

        for item in value:
            parse_recipient(item)
        return value


class BackupConfig(_Strict):
    s3: S3Config | None = None
    local: LocalConfig | None = None
    target: Literal["s3", "local"] | None = None
    include_volumes: bool = False
    compression: bool | CompressionConfig = True
    encryption: EncryptionConfig | None = None
    exclude: list[str] = Field(default_factory=list)

    @property
    def compression_settings(self) -> CompressionConfig:
        if isinstance(self.compression, CompressionConfig):
            return self.compression
        return CompressionConfig(codec="gzip" if self.compression else "none")


class ItsupConfig(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    backup: BackupConfig = Field(default_factory=BackupConfig)


# -- step 1: read secrets -----------------------------------------------------


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a dotenv file (KEY=VALUE, `export` prefix, quotes, # comments)."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{path}:{lineno}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


# -- step 2: parse YAML keeping line numbers ------------------------------------


def _line_index(node: yaml.Node, path: Path_ = ()) -> Iterator[tuple[Path_, int]]:
    yield path, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            yield (*path, key), key_node.start_mark.line + 1
            for sub_path, line in _line_index(value_node, (*path, key)):
                if sub_path != (*path, key):
                    yield sub_path, line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _line_index(item, (*path, i))


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: broken YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: broken YAML: {exc}") from None
    lines = dict(_line_index(node)) if node is not None else {}
    return data, lines


# -- step 3: expand placeholders ----------------------------------------------


def expand(
    data: Any, lookup: Callable[[str], str | None], path: Path_ = ()
) -> tuple[Any, list[tuple[Path_, str]], set[Path_]]:
    """Expand `${VAR}` / `${VAR:-default}` in strings; return (data, undefined, expanded paths)."""
    undefined: list[tuple[Path_, str]] = []
    touched: set[Path_] = set()

    def walk(value: Any, where: Path_) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*where, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*where, i)) for i, v in enumerate(value)]
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

            return PLACEHOLDER.sub(repl, value)
        return value

    return walk(data, path), undefined, touched


# -- step 4: validate and report ------------------------------------------------


def _describe(error: Any, model: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        tip = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
        return "unknown key" + tip
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message[0].lower() + message[1:]


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [
            a
            for a in getattr(annotation, "__args__", (annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return []
        current = candidates[0]
    return sorted(getattr(current, "model_fields", {}))


def _clean_loc(loc: tuple[Any, ...]) -> Path_:
    # pydantic adds union member tags such as 'CompressionConfig' or 'bool'.
    return tuple(
        p
        for p in loc
        if not (
            isinstance(p, str)
            and (p[:1].isupper() or p in {"bool", "str", "int", "list[str]", "none"})
        )
    )


def _report(exc: ValidationError, source: str, lines: dict[Path_, int]) -> list[str]:
    problems: dict[Path_, str] = {}
    for error in exc.errors():
        loc = _clean_loc(tuple(error["loc"]))
        if loc in problems:
            continue
        problems[loc] = _describe(error, ItsupConfig)
    out = []
    for loc, text in problems.items():
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
        key = ".".join(str(p) for p in loc) or "(top level)"
        out.append(f"{where}: {key}: {text}")
    return out


def load_secrets(layout: Layout) -> dict[str, str]:
    """The shared secrets (`secrets/itsup.txt`), or nothing when the file is absent."""
    return read_dotenv(layout.shared_secrets) if layout.shared_secrets.is_file() else {}


def load_config(
    layout: Layout, environ: dict[str, str] | None = None, secrets: dict[str, str] | None = None
) -> ItsupConfig:
    """Load and validate itsup.yml for a host root, or raise ConfigError listing every problem."""
    source = str(layout.config_file)
    try:
        text = layout.config_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the top level must be a mapping of sections")
    if secrets is None:
        secrets = load_secrets(layout)
    env = os.environ if environ is None else environ

    def lookup(name: str) -> str | None:
        assert secrets is not None
        return secrets.get(name, env.get(name))

    own = {k: v for k, v in data.items() if k in OWN_SECTIONS}
    expanded, undefined, _ = expand(own, lookup)
    problems = []
    for where, name in undefined:
        line = lines.get(where)
        key = ".".join(str(p) for p in where)
        problems.append(
            f"{source}:{line}: {key}: ${{{name}}} is not defined in "
            f"{layout.shared_secrets.relative_to(layout.root)} or the environment"
        )
    if problems:
        raise ConfigError(problems)
    merged = {**data, **expanded}
    if merged.get("backup") is None:
        merged["backup"] = {}
    try:
        return ItsupConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_report(exc, source, lines)) from None
