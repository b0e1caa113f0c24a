"""Hostile inputs: fuzzed configuration files and hostile archives.

Configuration: `projects/itsup.yml` fuzzed with hypothesis (in-process through
`load_config`, where many examples are needed) and a sample of hostile files
through the real command (`itsup backup list`): wrong types for every key of
the backup, monitoring and notify sections, huge values (1 MB strings, numbers
of thousands of digits, deep nesting, a "billion laughs" alias bomb, 1 MB key
names), unknown keys, random YAML documents with anchors, random bytes,
non-UTF-8 text, an empty file. The answer is always exit 4 with one
`FILE:LINE: key: message` line per problem (or one clear line), never a
traceback, never "internal error", in bounded time and memory, and nothing
written outside the host root. (tests/e2e/test_config.py holds the cases the
operator meets every day; these are the ones nobody writes on purpose.)

Archives: the hostile archives of tests/e2e/test_hostile.py, published as proper
generations, through `itsup backup verify` and `itsup backup drill`: exit 5,
naming the member, and nothing written outside the drill's scratch folder and
the host's own run records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ITSUP, Result, make_host, write_config
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from reliability import record
from test_hostile import CASE_NAMES, LINK_TARGET_ONLY, _cases, publish_members

from itsup.config import (
    BackupConfig,
    CompressionConfig,
    EncryptionConfig,
    GuardConfig,
    ItsupConfig,
    LifecycleConfig,
    LocalConfig,
    LocalTargetConfig,
    MonitoringConfig,
    NotifyTarget,
    ObjectLockConfig,
    RetentionConfig,
    S3Config,
    S3TargetConfig,
    load_config,
)
from itsup.errors import ConfigError, ExitCode
from itsup.layout import Layout

pytestmark = pytest.mark.faults

AGE_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
MB = 1 << 20
# A problem line may name the file (a temporary path) and a key path; the rest
# (key path and message) stays short whatever the input was.
MAX_LINE_BEYOND_SOURCE = 700
CLI_SECONDS = 20.0  # any config, however hostile, is judged within this
CLI_PEAK_RSS_MIB = 200  # ... and this much memory (itsup itself takes about 60 MiB)


# -- the keys, and what each accepts ------------------------------------------------------

KINDS = ("none", "bool", "int", "float", "str", "list", "dict")
Key = tuple[str | int, ...]

# Every key of itsup's own sections with the kinds of YAML value it accepts
# (the value may still be refused for its content; only other kinds are
# generated). test_key_table_covers_every_setting keeps this in step with the models.
KEYS: dict[Key, frozenset[str]] = {
    key: frozenset(kinds.split())
    for key, kinds in {
        ("backup",): "none dict",
        ("backup", "s3"): "none dict",
        ("backup", "s3", "bucket"): "str",
        ("backup", "s3", "prefix"): "str",
        ("backup", "s3", "region"): "str",
        ("backup", "s3", "endpoint"): "none str",
        ("backup", "s3", "access_key_id"): "none str",
        ("backup", "s3", "secret_access_key"): "none str",
        ("backup", "s3", "session_token"): "none str",
        ("backup", "s3", "storage_class"): "none str",
        ("backup", "s3", "part_size_mb"): "int",
        ("backup", "s3", "max_concurrency"): "int",
        ("backup", "s3", "addressing_style"): "str",
        ("backup", "s3", "connect_timeout"): "int",
        ("backup", "s3", "read_timeout"): "int",
        ("backup", "s3", "max_attempts"): "int",
        ("backup", "s3", "checksum"): "str",
        ("backup", "s3", "object_lock"): "none dict",
        ("backup", "s3", "lifecycle"): "dict",
        ("backup", "s3", "sse"): "str",
        ("backup", "s3", "kms_key_id"): "none str",
        ("backup", "s3", "object_lock", "mode"): "str",
        ("backup", "s3", "object_lock", "days"): "int",
        ("backup", "s3", "lifecycle", "ia_days"): "none int",
        ("backup", "s3", "lifecycle", "glacier_days"): "none int",
        ("backup", "s3", "lifecycle", "expire_days"): "none int",
        ("backup", "s3", "lifecycle", "noncurrent_days"): "int",
        ("backup", "local"): "none dict",
        ("backup", "local", "path"): "str",
        ("backup", "local", "prefix"): "str",
        ("backup", "targets"): "none dict",
        ("backup", "targets", "offsite"): "str dict",
        ("backup", "targets", "offsite", "url"): "str",
        ("backup", "targets", "offsite", "region"): "str",
        ("backup", "targets", "offsite", "endpoint"): "none str",
        ("backup", "targets", "offsite", "access_key_id"): "none str",
        ("backup", "targets", "offsite", "secret_access_key"): "none str",
        ("backup", "targets", "offsite", "session_token"): "none str",
        ("backup", "targets", "offsite", "storage_class"): "none str",
        ("backup", "targets", "offsite", "part_size_mb"): "int",
        ("backup", "targets", "offsite", "max_concurrency"): "int",
        ("backup", "targets", "offsite", "addressing_style"): "str",
        ("backup", "targets", "offsite", "connect_timeout"): "int",
        ("backup", "targets", "offsite", "read_timeout"): "int",
        ("backup", "targets", "offsite", "max_attempts"): "int",
        ("backup", "targets", "offsite", "checksum"): "str",
        ("backup", "targets", "offsite", "object_lock"): "none dict",
        ("backup", "targets", "offsite", "lifecycle"): "dict",
        ("backup", "targets", "offsite", "sse"): "str",
        ("backup", "targets", "offsite", "kms_key_id"): "none str",
        ("backup", "targets", "offsite", "object_lock", "mode"): "str",
        ("backup", "targets", "offsite", "object_lock", "days"): "int",
        ("backup", "targets", "offsite", "lifecycle", "ia_days"): "none int",
        ("backup", "targets", "offsite", "lifecycle", "glacier_days"): "none int",
        ("backup", "targets", "offsite", "lifecycle", "expire_days"): "none int",
        ("backup", "targets", "offsite", "lifecycle", "noncurrent_days"): "int",
        ("backup", "targets", "usb"): "str dict",
        ("backup", "targets", "usb", "url"): "str",
        ("backup", "target"): "none str",
        ("backup", "include_volumes"): "bool",
        ("backup", "compression"): "bool dict",
        ("backup", "compression", "codec"): "str",
        ("backup", "compression", "level"): "int",
        ("backup", "compression", "threads"): "int",
        ("backup", "encryption"): "none dict",
        ("backup", "encryption", "recipients"): "list",
        ("backup", "encryption", "identity_file"): "none str",
        ("backup", "exclude"): "list",
        ("backup", "monitoring"): "dict",
        ("backup", "monitoring", "max_age"): "int str",
        ("backup", "monitoring", "rto"): "none int str",
        ("backup", "monitoring", "rpo"): "none int str",
        ("backup", "monitoring", "metrics_file"): "none str",
        ("backup", "monitoring", "healthchecks"): "none str",
        ("backup", "guard"): "dict",
        ("backup", "guard", "min_ratio"): "int float",
        ("backup", "orphan_grace"): "int str",
        ("backup", "databases"): "str",
        ("backup", "dump_jobs"): "int",
        ("backup", "dump_idle_timeout"): "int str",
        ("backup", "target_stall_timeout"): "int str",
        ("backup", "retention"): "none dict",
        ("backup", "retention", "keep_last"): "int str",
        ("backup", "retention", "keep_hourly"): "int str",
        ("backup", "retention", "keep_daily"): "int str",
        ("backup", "retention", "keep_weekly"): "int str",
        ("backup", "retention", "keep_monthly"): "int str",
        ("backup", "retention", "keep_yearly"): "int str",
        ("backup", "retention", "keep_within"): "none int str",
        ("backup", "retention", "prune_after_backup"): "bool",
        ("backup", "retention", "timezone"): "str",
        ("notify",): "none list",
        ("notify", 0): "str dict",
        ("notify", 0, "url"): "str",
        ("notify", 0, "events"): "list",
    }.items()
}
WRONG = {key: tuple(k for k in KINDS if k not in kinds) for key, kinds in KEYS.items()}

# What a section needs besides the key under test, so that the key is the only problem.
REQUIRED: dict[Key, dict[str, Any]] = {
    ("backup", "s3"): {"bucket": "b"},
    ("backup", "local"): {"path": "backups"},
    ("backup", "targets", "offsite"): {"url": "s3://b/itsup"},
    ("backup", "targets", "usb"): {"url": "/mnt/usb/itsup"},
    ("backup", "encryption"): {"recipients": [AGE_RECIPIENT]},
    ("backup", "retention"): {"keep_last": 1},
    ("backup", "s3", "object_lock"): {"mode": "GOVERNANCE", "days": 1},
    ("backup", "targets", "offsite", "object_lock"): {"mode": "GOVERNANCE", "days": 1},
    ("notify", 0): {"url": "json://localhost/hook"},
}
MODELS: dict[Key, type] = {
    ("backup",): BackupConfig,
    ("backup", "s3"): S3Config,
    ("backup", "local"): LocalConfig,
    ("backup", "targets", "offsite"): S3TargetConfig,
    ("backup", "targets", "usb"): LocalTargetConfig,
    ("backup", "s3", "object_lock"): ObjectLockConfig,
    ("backup", "s3", "lifecycle"): LifecycleConfig,
    ("backup", "targets", "offsite", "object_lock"): ObjectLockConfig,
    ("backup", "targets", "offsite", "lifecycle"): LifecycleConfig,
    ("backup", "compression"): CompressionConfig,
    ("backup", "encryption"): EncryptionConfig,
    ("backup", "monitoring"): MonitoringConfig,
    ("backup", "guard"): GuardConfig,
    ("backup", "retention"): RetentionConfig,
    ("notify", 0): NotifyTarget,
}


def test_key_table_covers_every_setting() -> None:
    """A setting added to a model must be fuzzed too: the table lists every field."""
    for section, model in MODELS.items():
        fields = set(model.model_fields)  # type: ignore[attr-defined]
        listed = {key[-1] for key in KEYS if key[:-1] == section}
        assert fields == listed, f"{section}: add {fields - listed} / drop {listed - fields}"
    top = set(ItsupConfig.model_fields)
    assert top == {key[0] for key in KEYS if len(key) == 1}


# -- writing documents whose lines are known -------------------------------------------------


@dataclass
class Leaf:
    """The value under test, in a document tree."""

    value: Any


def flow(value: Any) -> str:
    """`value` as one line of YAML (flow style), read back as the same kinds."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return yaml.safe_dump(value).splitlines()[0]  # 1.0e+20, .inf, .nan
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are YAML double-quoted escapes
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {flow(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def render(tree: dict[str, Any]) -> tuple[str, int]:
    """Block-style YAML for `tree`; the line of its Leaf (0 if none)."""
    lines: list[str] = []
    leaf_line = 0

    def emit(node: Any, indent: int) -> None:
        nonlocal leaf_line
        pad = "  " * indent
        items = node.items() if isinstance(node, dict) else ((None, v) for v in node)
        for key, value in items:
            head = f"{pad}{key}:" if key is not None else f"{pad}-"
            if isinstance(value, Leaf):
                lines.append(f"{head} {flow(value.value)}")
                leaf_line = len(lines)
            elif isinstance(value, dict | list) and value:
                lines.append(head)
                emit(value, indent + 1)
            else:
                lines.append(f"{head} {flow(value)}")

    emit(tree, 0)
    return "\n".join(lines) + "\n", leaf_line


def document(key: Key, value: Any) -> tuple[str, int]:
    """A document where `key` holds `value` and nothing else is wrong; the key's line."""
    tree: dict[str, Any] = {}
    node: Any = tree
    for depth, part in enumerate(key):
        last = depth == len(key) - 1
        if last:
            child: Any = Leaf(value)
        elif isinstance(key[depth + 1], int):
            child = []
        else:
            child = dict(REQUIRED.get(key[: depth + 1], {}))
        if isinstance(node, list):
            node.append(child)
        else:
            node[part] = child
        node = child
    return render(tree)


def dotted(key: Key) -> str:
    return ".".join(str(p) for p in key)


# -- in-process checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "projects").mkdir()
        yield Path(tmp)


def load(root: Path, content: str | bytes) -> tuple[ItsupConfig | None, list[str], float]:
    """Write itsup.yml, load it; (config, problems, seconds). Only ConfigError may escape."""
    path = root / "projects" / "itsup.yml"
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    started = time.monotonic()
    try:
        config = load_config(Layout(root), environ={}, secrets={})
    except ConfigError as exc:
        assert exc.exit_code == ExitCode.CONFIG
        return None, exc.problems, time.monotonic() - started
    return config, [], time.monotonic() - started


def assert_clear(problems: list[str], source: str) -> None:
    """Every problem: one line, naming the file, short whatever the input was."""
    assert problems
    for problem in problems:
        assert "\n" not in problem and "\r" not in problem, problem[:300]
        assert problem.startswith(f"{source}:") or problem.startswith(f"{source} "), problem[:300]
        assert len(problem) - len(source) <= MAX_LINE_BEYOND_SOURCE, problem[:300]
        assert "Traceback" not in problem


values_of_kind = {
    "none": st.none(),
    "bool": st.booleans(),
    "int": st.integers(min_value=-(2**80), max_value=2**80),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "str": st.text(max_size=30).filter(lambda s: "${" not in s),
}
_scalars = st.one_of(*values_of_kind.values())
values_of_kind["list"] = st.lists(_scalars, max_size=3)
values_of_kind["dict"] = st.dictionaries(st.text(max_size=8), _scalars, max_size=3)


@st.composite
def wrong_values(draw: st.DrawFn) -> tuple[Key, str, Any]:
    key = draw(st.sampled_from(sorted(KEYS, key=dotted)))
    kind = draw(st.sampled_from(WRONG[key]))
    return key, kind, draw(values_of_kind[kind])


WRONG_TYPE_FAULT = "itsup.yml: a wrong type for a key of backup, monitoring or notify (hypothesis)"
REFUSED_ONE_LINE = "refused: exit 4, one FILE:LINE: key line"
tried_wrong: Counter[Key] = Counter()


@pytest.mark.xdist_group("fuzz-wrong-types")  # with the check after it
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=wrong_values())
def test_wrong_type_for_any_key_is_one_line_at_its_line(
    scratch_root: Path, case: tuple[Key, str, Any]
) -> None:
    check_wrong_type(scratch_root, case)


def check_wrong_type(scratch_root: Path, case: tuple[Key, str, Any]) -> None:
    key, kind, value = case
    text, line = document(key, value)
    config, problems, _ = load(scratch_root, text)
    source = str(scratch_root / "projects" / "itsup.yml")
    assert config is None, f"{dotted(key)} accepted a {kind}: {value!r}\n{text}"
    assert_clear(problems, source)
    assert len(problems) == 1, problems
    prefix = f"{source}:{line}: {dotted(key)}"
    assert problems[0].startswith(prefix), (problems[0], text)
    assert problems[0][len(prefix)] in ":.", problems[0]
    tried_wrong[key] += 1
    record("input", WRONG_TYPE_FAULT, REFUSED_ONE_LINE)


# One fixed wrong value of the first wrong kind per key, so that every key is
# tried whatever hypothesis draws above.
FIXED_WRONG: dict[str, Any] = {
    "none": None,
    "bool": True,
    "int": 7,
    "float": 1.5,
    "str": "x",
    "list": [1],
    "dict": {"a": 1},
}


@pytest.mark.xdist_group("fuzz-wrong-types")
def test_every_key_got_wrong_types(scratch_root: Path) -> None:
    """Runs after the property (file order): a key hypothesis never drew there is
    tried here with one fixed wrong value, so every key of the table is covered."""
    missing = [k for k in sorted(KEYS, key=dotted) if not tried_wrong[k]]
    for key in missing:
        kind = WRONG[key][0]
        check_wrong_type(scratch_root, (key, kind, FIXED_WRONG[kind]))
    assert all(tried_wrong[k] for k in KEYS)


# Huge values, at any key.


def bomb_definitions(levels: int = 9) -> str:
    """The "billion laughs": nine aliases of nine aliases ... of a string, 9**9 strings."""
    lines = ['  l0: &l0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "x-bomb:\n" + "\n".join(lines) + "\n"


HUGE_KINDS = (
    "long string",
    "long key",
    "big integer",
    "too many digits",
    "base-60 number",
    "deep list",
    "deep mapping",
    "alias bomb",
    "many items",
)


@st.composite
def huge_values(draw: st.DrawFn) -> tuple[Key, str, str]:
    """(key, kind, document text) with a huge value at (or beside) `key`."""
    key = draw(st.sampled_from(sorted(KEYS, key=dotted)))
    kind = draw(st.sampled_from(HUGE_KINDS))
    size = draw(st.integers(min_value=1, max_value=32 * 1024))
    prefix = ""
    if kind == "long string":
        value: Any = draw(st.sampled_from("ab9/:-. \u00e9\u6587")) * size
    elif kind == "long key":
        value = {draw(st.sampled_from("kK_\u00e9")) * size: 1}
    elif kind == "big integer":
        value = draw(st.integers(min_value=10**20, max_value=10**999))
    elif kind == "too many digits":
        value = Leaf("9" * draw(st.integers(min_value=1001, max_value=20_000)))
    elif kind == "base-60 number":
        value = Leaf("1" + ":59" * draw(st.integers(min_value=400, max_value=20_000)))
    elif kind == "deep list":
        depth = draw(st.integers(min_value=50, max_value=5000))
        value = Leaf("[" * depth + "]" * depth)
    elif kind == "deep mapping":
        depth = draw(st.integers(min_value=50, max_value=3000))
        value = Leaf("{a: " * depth + "1" + "}" * depth)
    elif kind == "alias bomb":
        prefix = bomb_definitions()
        value = Leaf("*l9")
    else:  # many items
        value = [draw(st.sampled_from(["failure", "x", "*.log", 1]))] * min(size, 5000)
    raw = value.value if isinstance(value, Leaf) else None
    text, _line = document(key, "\0RAW\0" if raw is not None else value)
    if raw is not None:
        text = text.replace(json.dumps("\0RAW\0"), raw)
    return key, kind, prefix + text


HUGE_FAULT = (
    "itsup.yml: a huge value at any key: long strings and keys, 1000+ digits, "
    "deep nesting, alias bomb (hypothesis)"
)
HUGE_OUTCOME = "judged in < 5 s: loaded, or refused with short FILE:LINE lines"
tried_huge: Counter[str] = Counter()


@pytest.mark.serial  # a time limit: measured alone, after the parallel part
@pytest.mark.xdist_group("fuzz-huge-values")  # with the check after it
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example is already simple
    derandomize=True,  # the same 60 examples each run: random ones missed a kind at times
)
@given(case=huge_values())
def test_huge_values_are_judged_quickly_in_short_lines(
    scratch_root: Path, case: tuple[Key, str, str]
) -> None:
    key, kind, text = case
    _config, problems, seconds = load(scratch_root, text)
    assert seconds < 5, f"{kind} at {dotted(key)} took {seconds:.1f} s"
    if problems:
        assert_clear(problems, str(scratch_root / "projects" / "itsup.yml"))
    if kind in ("too many digits", "base-60 number"):
        assert problems and "too large" in problems[0], problems
    tried_huge[kind] += 1
    record("input", HUGE_FAULT, HUGE_OUTCOME)


@pytest.mark.serial
@pytest.mark.xdist_group("fuzz-huge-values")
def test_every_huge_kind_was_tried() -> None:
    if not tried_huge:
        pytest.skip("run together with test_huge_values_are_judged_quickly_in_short_lines")
    assert set(tried_huge) == set(HUGE_KINDS), tried_huge


# Random documents (with anchors and aliases) and random bytes.

ALL_KEYS = sorted({str(p) for key in KEYS for p in key if isinstance(p, str)} | {"events", "x"})
_values = st.recursive(
    st.one_of(
        _scalars,
        st.sampled_from(
            ["json://h/p", "48h", "7d", "0s", "failure", "success", "s3", "local", "${NOPE}"]
        ),
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(ALL_KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def documents_with_aliases(draw: st.DrawFn) -> str:
    """A document mixing itsup's sections, where one value appears in several places
    (yaml.safe_dump writes it once with an &anchor and refers to it by *alias)."""
    shared = draw(_values)
    backup = draw(st.dictionaries(st.sampled_from(ALL_KEYS), _values, max_size=5))
    monitoring = draw(st.dictionaries(st.sampled_from(ALL_KEYS), _values, max_size=4))
    backup["monitoring"] = monitoring
    for where in draw(st.lists(st.sampled_from(["exclude", "monitoring", "s3", "rto"]))):
        (monitoring if where == "rto" else backup)[where] = shared
    notify = draw(st.lists(st.one_of(_values, st.just(shared)), max_size=3))
    doc = {"backup": backup, "notify": notify, "x-other": shared}
    return yaml.safe_dump(doc, allow_unicode=True, default_flow_style=draw(st.booleans()))


RANDOM_DOC_FAULT = "itsup.yml: a random document over all sections, with aliases (hypothesis)"
LOADED_OR_REFUSED = "loaded, or refused: exit 4, FILE:LINE lines"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents_with_aliases())
def test_random_documents_load_or_are_refused_clearly(scratch_root: Path, text: str) -> None:
    config, problems, _ = load(scratch_root, text)
    if config is None:
        assert_clear(problems, str(scratch_root / "projects" / "itsup.yml"))
    record("input", RANDOM_DOC_FAULT, LOADED_OR_REFUSED)


VALID = b"backup:\n  include_volumes: true\n  exclude: ['*.log']\nnotify: []\n"
BYTES_FAULT = "itsup.yml: random bytes, alone or spliced into a valid file (hypothesis)"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    garbage=st.binary(max_size=512),
    at=st.integers(min_value=0, max_value=len(VALID)),
    splice=st.booleans(),
)
def test_random_bytes_load_or_are_refused_clearly(
    scratch_root: Path, garbage: bytes, at: int, splice: bool
) -> None:
    content = VALID[:at] + garbage + VALID[at:] if splice else garbage
    config, problems, _ = load(scratch_root, content)
    if config is None:
        assert_clear(problems, str(scratch_root / "projects" / "itsup.yml"))
    record("input", BYTES_FAULT, LOADED_OR_REFUSED)


# -- the real command ---------------------------------------------------------------------------


@dataclass
class Measured:
    result: Result
    seconds: float
    peak_rss_mib: float


_LAUNCHER = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.executable, [sys.executable, *sys.argv[1:]], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "sys.stderr.write(f'\\n@@rss {usage.ru_maxrss}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_cli(root: Path, *args: str, timeout: float = 60) -> Measured:
    """`itsup --root ROOT ARGS` under a small launcher that reports its peak RSS."""
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, "-m", "itsup", "--root", str(root), *args],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    err, _, tail = proc.stderr.rpartition("\n@@rss ")
    rss_kib = int(tail.split()[0])
    return Measured(Result(proc.returncode, proc.stdout, err), seconds, rss_kib / 1024)


def tree_snapshot(top: Path, skip: Path) -> dict[str, tuple[Any, ...]]:
    """Everything below `top` except `skip`: type, mode, size, mtime, content hash.

    Folders count by their entries (each of which is listed), not by their own
    size and mtime, which any change inside updates."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files in os.walk(top):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirs[:] = []
            continue
        for name in dirs + files:
            full = Path(dirpath) / name
            if full == skip:
                continue
            st_ = os.lstat(full)
            digest = (
                hashlib.sha256(full.read_bytes()).hexdigest() if stat.S_ISREG(st_.st_mode) else ""
            )
            is_dir = stat.S_ISDIR(st_.st_mode)  # a folder's size and mtime follow its entries
            found[str(full.relative_to(top))] = (
                stat.S_IFMT(st_.st_mode),
                stat.S_IMODE(st_.st_mode),
                0 if is_dir else st_.st_size,
                0 if is_dir else st_.st_mtime_ns,
                digest,
            )
    return found


def bomb_doc(where: str) -> str:
    return bomb_definitions() + where


CLI_CASES: dict[str, tuple[bytes | str, int]] = {
    # name: (itsup.yml content, expected exit code)
    # No backup section: itsup does not guess where backups go (exit 4, one line and a hint).
    "empty file": ("", 4),
    "only a comment": ("# nothing here yet\n", 4),
    "binary garbage": (bytes(range(256)) * 16, 4),
    "latin-1 byte in a value": (b"backup:\n  exclude: ['caf\xe9']\n", 4),
    "UTF-16 with a BOM": ("backup: {}\n".encode("utf-16"), 4),
    "NUL byte": ("backup: {}\n\0\n", 4),
    "billion laughs in backup.exclude": (bomb_doc("backup:\n  exclude: *l9\n"), 4),
    "billion laughs under an unknown key": (bomb_doc("backup:\n  junk: *l9\n"), 4),
    "billion laughs in notify": (bomb_doc("notify: *l9\n"), 4),
    "billion laughs in another tool's section only": (bomb_doc("backup: {}\n"), 0),
    "self-referencing anchor in notify": ("notify: &n\n  - *n\n", 4),
    "list nested 100000 deep": ("backup:\n  exclude: " + "[" * 100_000 + "]" * 100_000, 4),
    "1 MB key name": ("backup:\n  ? " + "k" * MB + "\n  : 1\n", 4),
    "1 MB value for backup.target": ("backup:\n  target: " + "s" * MB + "\n", 4),
    "1 MB value in backup.exclude": ("backup:\n  exclude: ['" + "e" * MB + "']\n", 0),
    "1 MB duration": ("backup:\n  monitoring:\n    max_age: " + "h" * MB + "\n", 4),
    "1 MB undefined variable name": ("backup:\n  exclude: ['${" + "V" * MB + "}']\n", 4),
    "number of 5000 digits": ("backup:\n  s3:\n    bucket: b\n    part_size_mb: " + "9" * 5000, 4),
    "python object tag": ("backup: !!python/object/apply:os.system ['touch ../pwned']\n", 4),
    "wrong types everywhere": (
        "backup:\n  include_volumes: 3\n  exclude: {a: 1}\n  monitoring:\n"
        "    max_age: [1]\n    rto: true\n    healthchecks: 5\n"
        "notify:\n  - 7\n  - url: json://h/p\n    events: [boom]\n",
        4,
    ),
    "unknown keys everywhere": (
        "backup:\n  s4: {}\n  local:\n    path: b\n    paht: c\n  monitoring:\n    max_ages: 1d\n"
        "notify:\n  - url: json://h/p\n    event: [failure]\n",
        4,
    ),
    "local target outside the root": ("backup:\n  local:\n    path: ../elsewhere\n", 0),
    "1 MB target URL": ("backup:\n  targets:\n    usb: " + "u/" * (MB // 2) + "\n", 4),
    "a folder name of 300 characters": ("backup:\n  targets:\n    usb: " + "n" * 300 + "/x\n", 6),
    "1 MB local path": ("backup:\n  local:\n    path: " + "u/" * (MB // 2) + "\n", 4),
    "1 MB target name": ("backup:\n  targets:\n    " + "n" * MB + ": usb\n", 4),
    "billion laughs as targets": (bomb_doc("backup:\n  targets: *l9\n"), 4),
    "a thousand targets": (
        "backup:\n  targets:\n" + "".join(f"    t{i}: store/{i}\n" for i in range(1000)),
        0,
    ),
}
CLI_FAULT = f"hostile itsup.yml through `itsup backup list` ({len(CLI_CASES)} files)"
CLI_PROBLEMS = {  # how many FILE:LINE lines the multi-problem cases must give
    "wrong types everywhere": 7,
    "unknown keys everywhere": 4,
    "billion laughs in backup.exclude": 9,  # each of the nine items is not a string
    "billion laughs in notify": 9,
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_hostile_config_through_the_command(tmp_path: Path, name: str) -> None:
    content, expected = CLI_CASES[name]
    root = make_host(tmp_path / "host", volumes=False)
    config = root / "projects" / "itsup.yml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = tree_snapshot(tmp_path, skip=root)

    run = run_cli(root, "backup", "list")
    res = run.result
    assert res.code == expected, (name, res.code, res.err[:2000])
    assert "Traceback" not in res.err + res.out
    assert "internal error" not in res.err
    assert run.seconds < CLI_SECONDS, f"{name}: {run.seconds:.1f} s"
    assert run.peak_rss_mib < CLI_PEAK_RSS_MIB, f"{name}: {run.peak_rss_mib:.0f} MiB"
    assert tree_snapshot(tmp_path, skip=root) == before, "itsup wrote outside the host root"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "elsewhere").exists()
    if expected == ExitCode.CONFIG:
        lines = [line for line in res.err.splitlines() if line.strip()]
        assert all(len(line) <= len(str(config)) + MAX_LINE_BEYOND_SOURCE for line in lines)
        problems = [line.strip() for line in lines if str(config) in line]
        for problem in problems:
            assert re.match(
                re.escape(str(config)) + r"(:\d+)?: ", problem.removeprefix("itsup: error: ")
            ), problem
        count = CLI_PROBLEMS.get(name, 1)
        assert len(problems) == count, res.err
        if count > 1:
            assert lines[0] == f"itsup: error: {count} problems in configuration:"
            assert len(lines) == count + 1, res.err
        else:
            assert lines[0].startswith(f"itsup: error: {config}"), res.err
            assert all(line.startswith("itsup: hint:") for line in lines[1:]), res.err
        outcome = "refused: exit 4, FILE:LINE lines, bounded time and memory, nothing outside"
    else:
        outcome = "loaded: exit 0, bounded time and memory, nothing written outside the root"
    record("input", CLI_FAULT, outcome)


CLI_SAMPLE_FAULT = "itsup.yml: a wrong type for a key, through `itsup backup list` (hypothesis)"


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=wrong_values())
def test_command_reports_what_load_config_reports(
    tmp_path: Path, case: tuple[Key, str, Any]
) -> None:
    """A sample of the property above through the real command: the same one line."""
    key, _kind, value = case
    text, _line = document(key, value)
    root = tmp_path / "host"
    write_config(root, text)
    try:
        load_config(Layout(root), environ={}, secrets={})
    except ConfigError as exc:
        [expected] = exc.problems
    else:
        pytest.fail(f"{dotted(key)} accepted {value!r}")
    res = run_cli(root, "backup", "list").result
    assert res.code == ExitCode.CONFIG, res.err
    assert "Traceback" not in res.err and "internal error" not in res.err
    assert res.err.splitlines()[0] == f"itsup: error: {expected}"
    record("input", CLI_SAMPLE_FAULT, REFUSED_ONE_LINE)


# -- hostile archives through verify and drill ---------------------------------------------------


@dataclass
class Scene:
    tmp: Path
    root: Path
    target: Path
    scratch: Path  # the drill's TMPDIR
    outside: Path


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    root = make_host(tmp_path / "host", volumes=False)
    target = tmp_path / "target"
    write_config(root, f"backup:\n  local:\n    path: {target}\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("outside\n")
    return Scene(tmp_path, root, target, scratch, outside)


# What verify and drill may write: the host's run records (and the drill report).
RUN_RECORDS = re.compile(r"^host/(logs|logs/backup\.log|logs/drill-[0-9-]+\.json|\.itsup(/.*)?)$")


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def run_hostile(scene: Scene, case: str, *command: str) -> Result:
    members, _named = _cases(scene.outside)[case]
    publish_members(scene.target, members)
    before = tree_snapshot(scene.tmp, skip=scene.target)
    env = {"TMPDIR": str(scene.scratch)}
    full_env = {**{k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}, **env}
    proc = subprocess.run(
        [*ITSUP, "--root", str(scene.root), *command],
        cwd=scene.root,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in res.err + res.out and "internal error" not in res.err
    after = tree_snapshot(scene.tmp, skip=scene.target)
    written = [path for path in changes(before, after) if not RUN_RECORDS.match(path)]
    assert written == [], f"{' '.join(command)} wrote {written}"
    assert list(scene.scratch.iterdir()) == [], "the drill left its scratch root behind"
    assert (scene.outside / "canary").read_text() == "outside\n"
    if case in LINK_TARGET_ONLY:
        # Links that point out are state a backup keeps (localtime -> /usr/share/...):
        # verify passes them, the drill creates them as links in its scratch root.
        assert res.code == ExitCode.SUCCESS, res.err
    else:
        assert res.code == ExitCode.DAMAGED, (res.code, res.err)
        assert res.err.startswith("itsup: error:"), res.err
    return res


TRUNCATED = {"absurd_size_large", "absurd_size_small"}  # the stream ends inside a member


HOSTILE_FAULT = f"hostile archive through `backup {{command}}` ({len(CASE_NAMES)} kinds)"


def _outcome(case: str, what: str) -> str:
    if case in LINK_TARGET_ONLY:
        return f"{what} passed (links kept as links, by design), nothing written outside"
    return f"{what} refused: exit 5, nothing written outside"


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_archive_fails_verify(scene: Scene, case: str) -> None:
    res = run_hostile(scene, case, "backup", "verify")
    _members, named = _cases(scene.outside)[case]
    if case not in LINK_TARGET_ONLY:
        assert "FAILED" in res.err
        if case not in TRUNCATED:
            assert named in res.err, res.err
        else:
            assert "truncated" in res.err or "not a readable tar" in res.err, res.err
    record("input", HOSTILE_FAULT.format(command="verify"), _outcome(case, "verify"))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_archive_fails_the_drill(scene: Scene, case: str) -> None:
    res = run_hostile(scene, case, "backup", "drill", "--no-git")
    _members, named = _cases(scene.outside)[case]
    if case not in LINK_TARGET_ONLY:
        assert "drill of" in res.err and "FAILED" in res.err
        assert named in res.err, res.err
    record("input", HOSTILE_FAULT.format(command="drill"), _outcome(case, "drill"))
