"""Config loading as the operator meets it: `projects/itsup.yml` and `secrets/itsup.txt`.

Most cases run the real `itsup` command (exit code, stderr, no traceback);
the property test calls `load_config` in-process for speed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import ITSUP, Result, make_host, run_itsup, s3_config, s3_secrets, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from s3server import S3Server

from itsup.config import ItsupConfig, load_config
from itsup.errors import ConfigError
from itsup.layout import Layout, find_root

# The spec's "Backup Script Details" section, verbatim.
SPEC_SECTION = """\
backup:
  s3:
    bucket: my-backup-bucket
    prefix: itsup/               # S3 key prefix
    region: us-east-1
  include_volumes: false         # Backup container volumes?
  compression: true              # Use gzip compression?
"""
SECRET = "s3cr3t-value-that-must-never-show-0f9e8d"
LIST_LOCAL = ("backup", "list", "--target", "local")  # never leaves the machine


@pytest.fixture
def root(tmp_path: Path) -> Path:
    host = make_host(tmp_path / "host", volumes=False)
    write_config(host, "backup: {}\n")
    return host


def config_path(root: Path) -> str:
    return str(root / "projects" / "itsup.yml")


def problem_lines(result: Result, root: Path) -> list[str]:
    """The reported problems: one line each, all naming the config file."""
    return [
        line.strip().removeprefix("itsup: error: ")
        for line in result.err.splitlines()
        if config_path(root) in line
    ]


def assert_problems(result: Result, root: Path, *expected: tuple[int, str, str]) -> None:
    """Exit 4, no traceback, and exactly one `FILE:LINE: key: ...` line per expected problem."""
    assert result.code == 4, (result.code, result.out, result.err)
    assert "Traceback" not in result.err + result.out
    assert "internal error" not in result.err
    lines = problem_lines(result, root)
    for line, key, fragment in expected:
        prefix = f"{config_path(root)}:{line}: {key}: "
        hits = [text for text in lines if text.startswith(prefix)]
        assert len(hits) == 1, f"no single {prefix!r} in:\n{result.err}"
        assert fragment in hits[0], (fragment, hits[0])
    assert len(lines) == len(expected), result.err
    if len(expected) > 1:
        assert f"{len(expected)} problems in configuration" in result.err


def run_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI from a given working folder, without --root and without a stray ITSUP_ROOT."""
    full_env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    full_env.update(env or {})
    proc = subprocess.run(
        [*ITSUP, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=str(cwd),
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def secrets_file(root: Path, text: str) -> None:
    path = root / "secrets" / "itsup.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)


# -- what loads ----------------------------------------------------------------


def test_spec_section_loads_exactly_as_written(root: Path) -> None:
    write_config(root, "dns:\n  provider: cloudflare\n" + SPEC_SECTION)
    cfg = load_config(Layout(root), environ={})
    backup = cfg.backup
    assert backup.s3 is not None
    assert (backup.s3.bucket, backup.s3.prefix, backup.s3.region) == (
        "my-backup-bucket",
        "itsup/",
        "us-east-1",
    )
    assert backup.s3.endpoint is None
    assert backup.include_volumes is False
    assert backup.compression is True
    assert backup.compression_settings.codec == "gzip"
    # Sections other tools own are kept, not validated.
    assert cfg.model_extra == {"dns": {"provider": "cloudflare"}}
    # The command accepts it too (listing the local target: no traffic to AWS).
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err


def test_spec_section_variants(root: Path) -> None:
    write_config(
        root,
        SPEC_SECTION.replace("false", "true").replace("compression: true", "compression: false"),
    )
    backup = load_config(Layout(root), environ={}).backup
    assert backup.include_volumes is True
    assert backup.compression_settings.codec == "none"


def test_empty_file_and_empty_section_give_defaults(root: Path) -> None:
    for text in ("", "# nothing yet\n", "backup:\n", "backup: {}\n", "other: 1\n"):
        write_config(root, text)
        backup = load_config(Layout(root), environ={}).backup
        assert backup.s3 is None and backup.local is None
        assert backup.compression_settings.codec == "gzip"


def test_everything_real_use_needs_loads(root: Path) -> None:
    write_config(
        root,
        """\
backup:
  target: local
  s3:
    bucket: b
    prefix: hosts/web1/
    region: eu-west-1
    endpoint: https://s3.example.com
    part_size_mb: 8
    max_concurrency: 2
    addressing_style: virtual
  local:
    path: /var/backups/itsup
    prefix: web1/
  compression:
    codec: gzip
    level: 3
    threads: 4
  encryption:
    recipients:
      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  exclude:
    - "*.log"
    - upstream/*/cache
""",
    )
    backup = load_config(Layout(root), environ={}).backup
    assert backup.target == "local"
    assert backup.s3 is not None and backup.s3.part_size_mb == 8
    assert backup.local is not None and backup.local.path == "/var/backups/itsup"
    assert backup.compression_settings.level == 3
    assert backup.encryption is not None and len(backup.encryption.recipients) == 1
    assert backup.exclude == ["*.log", "upstream/*/cache"]


# -- named targets ---------------------------------------------------------------------

TWO_TARGETS = """\
backup:
  targets:
    offsite:
      url: s3://my-backups/hosts/web1
      region: eu-west-1
      endpoint: https://s3.example.com
      part_size_mb: 8
    usb: file:///mnt/usb/itsup
"""

# itsup.yml -> (target names in order, the default, {name: (scheme, location, prefix)})
GOOD_TARGETS: dict[str, tuple[str, list[str], str, dict[str, tuple[str, str, str]]]] = {
    "nothing": ("backup: {}\n", ["local"], "local", {"local": ("file", "backups", "itsup/")}),
    "old_s3": (SPEC_SECTION, ["s3"], "s3", {"s3": ("s3", "my-backup-bucket", "itsup/")}),
    "old_local": (
        "backup:\n  local:\n    path: /var/backups\n    prefix: ''\n",
        ["local"],
        "local",
        {"local": ("file", "/var/backups", "")},
    ),
    "old_both_local_first": (
        "backup:\n  local:\n    path: /var/backups\n  s3:\n    bucket: b\n",
        ["s3", "local"],
        "s3",
        {"s3": ("s3", "b", "itsup/"), "local": ("file", "/var/backups", "itsup/")},
    ),
    "old_both_chosen": (
        "backup:\n  target: local\n  s3:\n    bucket: b\n  local:\n    path: x\n",
        ["s3", "local"],
        "local",
        {},
    ),
    "old_s3_embedded_local_by_name": (
        "backup:\n  target: local\n  s3:\n    bucket: b\n",
        ["s3"],
        "local",
        {"local": ("file", "backups", "itsup/")},
    ),
    "two_targets": (
        TWO_TARGETS,
        ["offsite", "usb"],
        "offsite",
        {"offsite": ("s3", "my-backups", "hosts/web1/"), "usb": ("file", "/mnt/usb", "itsup/")},
    ),
    "two_targets_chosen": (TWO_TARGETS + "  target: usb\n", ["offsite", "usb"], "usb", {}),
    "section_before_targets": (
        "backup:\n  s3:\n    bucket: b\n  targets:\n    usb: usb\n",
        ["s3", "usb"],
        "s3",
        {"usb": ("file", ".", "usb/")},
    ),
    "targets_before_section": (
        "backup:\n  targets:\n    usb: usb\n  s3:\n    bucket: b\n",
        ["usb", "s3"],
        "usb",
        {},
    ),
    "url_forms": (
        "backup:\n  targets:\n"
        "    a: s3://bucket\n    b: S3://bucket/x/y/\n    c: store/x\n    d: ~/backups\n"
        "    e: /var/backups/itsup/\n    f: {url: 'file:///srv/b/./itsup'}\n"
        "    local: ../elsewhere\n",
        ["a", "b", "c", "d", "e", "f", "local"],
        "a",
        {
            "a": ("s3", "bucket", ""),
            "b": ("s3", "bucket", "x/y/"),
            "c": ("file", "store", "x/"),
            "d": ("file", "~", "backups/"),
            "e": ("file", "/var/backups", "itsup/"),
            "f": ("file", "/srv/b", "itsup/"),
            "local": ("file", "..", "elsewhere/"),
        },
    ),
}


@pytest.mark.parametrize("case", sorted(GOOD_TARGETS))
def test_targets_load_in_file_order_with_their_default(root: Path, case: str) -> None:
    text, names, default, settings = GOOD_TARGETS[case]
    write_config(root, text)
    backup = load_config(Layout(root), environ={}).backup
    assert backup.target_names() == names
    assert backup.default_target == default
    for name, (scheme, location, prefix) in settings.items():
        got = backup.target_settings(name)
        assert (got.scheme, got.location, got.prefix) == (scheme, location, prefix), name
    assert backup.unknown_target("local") is None  # the embedded folder is always there
    assert "no target is named 'nope'" in (backup.unknown_target("nope") or "")


def test_target_settings_of_a_url_are_those_of_the_section(root: Path) -> None:
    """`targets: {x: {url: s3://B/P, ...}}` and `s3: {bucket: B, prefix: P, ...}` mean one thing."""
    write_config(root, TWO_TARGETS)
    offsite = load_config(Layout(root), environ={}).backup.target_settings("offsite")
    assert offsite.s3 is not None and offsite.key_path == "backup.targets.offsite"
    assert (offsite.s3.region, offsite.s3.part_size_mb, offsite.s3.max_attempts) == (
        "eu-west-1",
        8,
        8,
    )
    assert offsite.s3.endpoint == "https://s3.example.com"


def test_a_target_url_from_a_placeholder(root: Path) -> None:
    write_config(root, "backup:\n  targets:\n    offsite: ${OFFSITE}\n    usb: {url: '${USB}'}\n")
    env = {"OFFSITE": "s3://from-env/itsup", "USB": "/mnt/usb/itsup"}
    backup = load_config(Layout(root), environ=env).backup
    assert backup.target_settings("offsite").location == "from-env"
    assert backup.target_settings("usb").location == "/mnt/usb"


def test_relative_and_home_folders_open_below_the_root_and_home(root: Path) -> None:
    from itsup.host import load_host

    write_config(root, "backup:\n  targets:\n    here: store/x\n    home: ~/itsup-backups\n")
    host = load_host(Layout(root))
    target, prefix = host.target("here")
    assert (target.name, prefix) == (str(root / "store"), "x/")
    assert host.target() == (target, prefix)  # the default, opened once per run
    target, prefix = host.target("home")
    assert (target.name, prefix) == (str(Path.home()), "itsup-backups/")


# -- ${VAR} placeholders ------------------------------------------------------------


def test_placeholders_expand_from_secrets_file_then_environment(root: Path) -> None:
    write_config(
        root,
        "backup:\n"
        "  s3:\n"
        "    bucket: ${BUCKET}\n"
        "    prefix: ${PREFIX}\n"
        "    region: ${REGION:-eu-central-1}\n"
        "    endpoint: https://${HOST}:9000\n"
        "    secret_access_key: ${SECRET}\n"
        "    access_key_id: ${KEY_ID}\n",
    )
    secrets_file(root, f"BUCKET=from-secrets\nexport HOST=s3.internal\nSECRET='{SECRET}'\n")
    env = {"BUCKET": "from-env", "PREFIX": "env-prefix/", "KEY_ID": "AKIDENV"}
    s3 = load_config(Layout(root), environ=env).backup.s3
    assert s3 is not None
    assert s3.bucket == "from-secrets"  # the secrets file wins over the environment
    assert s3.prefix == "env-prefix/"  # the environment fills what the file lacks
    assert s3.region == "eu-central-1"  # ${VAR:-default}
    assert s3.endpoint == "https://s3.internal:9000"  # inside a longer string
    assert s3.secret_access_key is not None
    assert s3.secret_access_key.get_secret_value() == SECRET
    assert SECRET not in repr(s3) and SECRET not in str(s3)

    # The same through the command (the environment of the process).
    result = run_itsup(
        *LIST_LOCAL, root=root, env={"PREFIX": "p/", "KEY_ID": "AKID", "BUCKET": "env"}
    )
    assert result.code == 0, result.err
    assert SECRET not in result.out + result.err


def test_placeholders_give_numbers_and_booleans(root: Path) -> None:
    write_config(
        root,
        "backup:\n"
        "  include_volumes: ${VOLUMES}\n"
        "  s3:\n"
        "    bucket: ${BUCKET}\n"
        "    part_size_mb: ${PART}\n"
        "  compression: ${COMPRESS:-false}\n",
    )
    secrets_file(root, "VOLUMES=true\nPART=32\nBUCKET=12345\n")
    backup = load_config(Layout(root), environ={}).backup
    assert backup.include_volumes is True
    assert backup.s3 is not None and backup.s3.part_size_mb == 32
    assert backup.s3.bucket == "12345"  # a string field stays a string
    assert backup.compression is False
    # ... and a placeholder that yields the wrong kind of value is still a type error.
    secrets_file(root, "VOLUMES=perhaps\nPART=big\nBUCKET=b\n")
    assert_problems(
        run_itsup(*LIST_LOCAL, root=root),
        root,
        (2, "backup.include_volumes", "boolean"),
        (5, "backup.s3.part_size_mb", "integer"),
    )


def test_undefined_variable(root: Path) -> None:
    write_config(root, "backup:\n  s3:\n    bucket: ${NOT_DEFINED_ANYWHERE}\n")
    result = run_itsup(*LIST_LOCAL, root=root)
    assert_problems(result, root, (3, "backup.s3.bucket", "${NOT_DEFINED_ANYWHERE} is not defined"))
    assert "secrets/itsup.txt" in result.err


def test_placeholders_outside_itsup_sections_are_left_alone(root: Path) -> None:
    write_config(root, "dns:\n  token: ${SOMETHING_ELSE_USES}\nbackup: {}\n")
    assert load_config(Layout(root), environ={}).model_extra == {
        "dns": {"token": "${SOMETHING_ELSE_USES}"}
    }


def test_broken_secrets_file(root: Path) -> None:
    write_config(root, "backup: {}\n")
    secrets_file(root, f"GOOD=1\nthis line holds {SECRET} and no equals sign\n")
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 4
    assert "secrets/itsup.txt:2: not a KEY=VALUE line" in result.err
    assert SECRET not in result.err + result.out
    assert "Traceback" not in result.err
    (root / "secrets" / "itsup.txt").write_bytes(b"KEY=\xff\xfe\n")
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 4 and "not UTF-8" in result.err and "Traceback" not in result.err


# -- one clear message per problem ------------------------------------------------------

BAD_CONFIGS = {
    "include_volumes_string": (
        'backup:\n  s3:\n    bucket: b\n  include_volumes: "yes"\n',
        [(4, "backup.include_volumes", "valid boolean")],
    ),
    "part_size_string": (
        'backup:\n  s3:\n    bucket: b\n    part_size_mb: "big"\n',
        [(4, "backup.s3.part_size_mb", "valid integer")],
    ),
    "part_size_too_small": (
        "backup:\n  s3:\n    bucket: b\n    part_size_mb: 1\n",
        [(4, "backup.s3.part_size_mb", "greater than or equal to 5")],
    ),
    "bucket_list": (
        "backup:\n  s3:\n    bucket:\n      - a\n      - b\n",
        [(3, "backup.s3.bucket", "valid string")],
    ),
    "bucket_missing": (
        "backup:\n  s3:\n    region: eu-west-1\n",
        [(2, "backup.s3.bucket", "required key is missing")],
    ),
    "compression_number": (
        "backup:\n  compression: 5\n",
        [(2, "backup.compression", "boolean")],
    ),
    "compression_codec": (
        "backup:\n  compression:\n    codec: zstd\n",
        [(3, "backup.compression.codec", "'gzip' or 'none'")],
    ),
    "exclude_not_list": (
        'backup:\n  exclude: "*.log"\n',
        [(2, "backup.exclude", "valid list")],
    ),
    "exclude_item": (
        "backup:\n  exclude:\n    - ok\n    - 42\n",
        [(4, "backup.exclude.1", "valid string")],
    ),
    "section_not_mapping": (
        "backup: 3\n",
        [(1, "backup", "valid dictionary")],
    ),
    "s3_not_mapping": (
        "backup:\n  s3: my-bucket\n",
        [(2, "backup.s3", "valid dictionary")],
    ),
    "target_value": (
        "backup:\n  target: ftp\n",
        [(2, "backup.target", "no target is named 'ftp' (known: local)")],
    ),
    "target_s3_without_section": (
        "backup:\n  target: s3\n",
        [(2, "backup.target", "no target is named 's3' (known: local)")],
    ),
    "target_typo_of_a_named_one": (
        "backup:\n  targets:\n    offsite: s3://b/x\n  target: ofsite\n",
        [(4, "backup.target", "(known: offsite, local; did you mean 'offsite'?)")],
    ),
    "targets_not_mapping": (
        "backup:\n  targets: [s3://b/x]\n",
        [(2, "backup.targets", "valid dictionary")],
    ),
    "target_entry_not_mapping": (
        "backup:\n  targets:\n    usb: 5\n",
        [(3, "backup.targets.usb", "valid dictionary")],
    ),
    "target_name_with_space": (
        "backup:\n  targets:\n    my usb: /mnt/usb/itsup\n",
        [(3, 'backup.targets."my usb"', "a target name is up to 64 letters, digits")],
    ),
    "target_name_given_twice": (
        "backup:\n  s3:\n    bucket: b\n  targets:\n    usb: usb\n    s3: s3://other/x\n",
        [(6, "backup.targets.s3", "is also given as the backup.s3 section")],
    ),
    "target_local_given_twice": (
        "backup:\n  targets:\n    local: file:///srv/b/itsup\n  local:\n    path: /srv/b\n",
        [(3, "backup.targets.local", "is also given as the backup.local section")],
    ),
    "target_url_unknown_scheme": (
        "backup:\n  targets:\n    usb:\n      url: ftp://host/itsup\n",
        [
            (
                4,
                "backup.targets.usb.url",
                "unknown scheme 'ftp:'; known: s3://BUCKET/PREFIX, file://",
            )
        ],
    ),
    "target_short_url_unknown_scheme": (
        "backup:\n  targets:\n    usb: sftp://host/itsup\n",
        [(3, "backup.targets.usb", "unknown scheme 'sftp:'")],
    ),
    "target_s3_without_bucket": (
        "backup:\n  targets:\n    offsite:\n      url: s3://\n",
        [(4, "backup.targets.offsite.url", "names no bucket: write s3://BUCKET/PREFIX")],
    ),
    "target_s3_without_slashes": (
        "backup:\n  targets:\n    offsite: s3:bucket/itsup\n",
        [(3, "backup.targets.offsite", "write an S3 target as s3://BUCKET/PREFIX")],
    ),
    "target_s3_prefix_with_leading_slash": (
        "backup:\n  targets:\n    offsite:\n      url: s3://b//itsup\n",
        [(4, "backup.targets.offsite.url", "without the leading '/'")],
    ),
    "target_s3_prefix_climbing": (
        "backup:\n  targets:\n    offsite:\n      url: s3://b/../x\n",
        [(4, "backup.targets.offsite.url", "without '..'")],
    ),
    "target_file_url_with_a_host": (
        "backup:\n  targets:\n    usb:\n      url: file://mnt/usb\n",
        [(4, "backup.targets.usb.url", "a file URL names an absolute path: write file:///PATH")],
    ),
    "target_url_names_no_folder": (
        "backup:\n  targets:\n    usb:\n      url: file:///\n",
        [(4, "backup.targets.usb.url", "names no folder to keep backups in")],
    ),
    "target_url_empty": (
        "backup:\n  targets:\n    usb:\n      url: ''\n",
        [(4, "backup.targets.usb.url", "at least 1 character")],
    ),
    "target_url_missing": (
        "backup:\n  targets:\n    offsite:\n      region: eu-west-1\n",
        [
            (3, "backup.targets.offsite.url", "required key is missing"),
            (4, "backup.targets.offsite.region", "only an s3:// target takes it"),
        ],
    ),
    "target_unknown_option": (
        "backup:\n  targets:\n    offsite:\n      url: s3://b/x\n      regoin: eu\n",
        [(5, "backup.targets.offsite.regoin", "unknown key (did you mean 'region'?)")],
    ),
    "target_s3_option_on_a_folder": (
        "backup:\n  targets:\n    usb:\n      url: /mnt/usb/itsup\n      part_size_mb: 8\n",
        [(5, "backup.targets.usb.part_size_mb", "only an s3:// target takes it")],
    ),
    "target_bad_s3_option": (
        "backup:\n  targets:\n    offsite:\n      url: s3://b/x\n      part_size_mb: 1\n",
        [(5, "backup.targets.offsite.part_size_mb", "greater than or equal to 5")],
    ),
    "unknown_key": (
        "backup:\n  s3:\n    bucket: b\n  compresion: true\n",
        [(4, "backup.compresion", "unknown key (did you mean 'compression'?)")],
    ),
    "unknown_nested_key": (
        "backup:\n  s3:\n    bucket: b\n    secret_acess_key: x\n",
        [(4, "backup.s3.secret_acess_key", "did you mean 'secret_access_key'?")],
    ),
    "unknown_key_capitalised": (
        "backup:\n  S3:\n    bucket: b\n",
        [(2, "backup.S3", "did you mean 's3'?")],
    ),
    "unknown_key_nothing_close": (
        "backup:\n  frobnicate: 1\n",
        [(2, "backup.frobnicate", "unknown key (known: compression, databases, dump_idle_timeout")],
    ),
    "unknown_key_named_like_a_type": (
        "backup:\n  bool: 1\n  str: 2\n",
        [(2, "backup.bool", "unknown key"), (3, "backup.str", "unknown key")],
    ),
    "bad_endpoint": (
        "backup:\n  s3:\n    bucket: b\n    endpoint: s3.example.com\n",
        [(4, "backup.s3.endpoint", "must be a URL")],
    ),
    "bad_prefix": (
        "backup:\n  s3:\n    bucket: b\n    prefix: ../other/\n",
        [(4, "backup.s3.prefix", "relative key prefix")],
    ),
    "bad_recipient": (
        "backup:\n  encryption:\n    recipients:\n"
        "      - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n"
        "      - age1notarealkey\n",
        [(5, "backup.encryption.recipients.1", "not an age or SSH public key")],
    ),
    "secret_key_as_recipient": (
        "backup:\n  encryption:\n    recipients:\n"
        "      - AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZ2LXEW\n",
        [(4, "backup.encryption.recipients.0", "secret key (identity), not a public recipient")],
    ),
    "no_recipients": (
        "backup:\n  encryption:\n    recipients: []\n",
        [(3, "backup.encryption.recipients", "at least 1 item")],
    ),
    "duplicate_key": (
        "backup:\n  s3:\n    bucket: first\n    bucket: second\n",
        [(4, "backup.s3.bucket", "duplicate key (first given at line 3)")],
    ),
    "duplicate_section": (
        "backup:\n  include_volumes: true\nother: 1\nbackup:\n  include_volumes: false\n",
        [(4, "backup", "duplicate key (first given at line 1)")],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_clear_message(root: Path, case: str) -> None:
    text, expected = BAD_CONFIGS[case]
    write_config(root, text)
    assert_problems(run_itsup(*LIST_LOCAL, root=root), root, *expected)


def test_bad_config_in_process_raises_config_error(root: Path) -> None:
    for text, expected in BAD_CONFIGS.values():
        write_config(root, text)
        with pytest.raises(ConfigError) as err:
            load_config(Layout(root), environ={})
        assert len(err.value.problems) == len(expected)


BROKEN_YAML = {
    "unclosed_flow": ("backup:\n  s3:\n    bucket: [a, b\n", "flow sequence at line 3"),
    "tab_indent": ("backup:\n\ts3: x\n", ":2: broken YAML"),
    "bad_indent": ("backup:\n  s3:\n    bucket: b\n   region: x\n", ":4: broken YAML"),
    "colon_in_value": ("backup:\n  s3:\n    bucket: a: b\n", ":3: broken YAML"),
    "undefined_alias": ("backup:\n  s3: *nothing\n", ":2: broken YAML"),
    "python_tag": ("backup: !!python/object:os.system x\n", ":1: broken YAML"),
    "unclosed_quote": ('backup:\n  s3:\n    bucket: "abc\n', "broken YAML"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_YAML))
def test_broken_yaml(root: Path, case: str) -> None:
    text, fragment = BROKEN_YAML[case]
    write_config(root, text)
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 4, result.err
    assert "Traceback" not in result.err
    lines = problem_lines(result, root)
    assert len(lines) == 1, result.err
    assert re.match(re.escape(config_path(root)) + r":\d+: broken YAML: ", lines[0])
    assert fragment in lines[0]


def test_not_utf8(root: Path) -> None:
    (root / "projects" / "itsup.yml").write_bytes(b"backup:\n  s3: \xff\xfe\n")
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 4 and "Traceback" not in result.err
    assert f"{config_path(root)}: the config file is not UTF-8 text" in result.err


def test_recursive_anchor(root: Path) -> None:
    write_config(root, "backup: &loop\n  exclude: *loop\n")
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 4 and "Traceback" not in result.err
    assert config_path(root) in result.err


@pytest.mark.parametrize(
    ("text", "line"),
    [("- a\n- b\n", 1), ("just a string\n", 1), ("# header comment\n\n42\n", 3)],
)
def test_top_level_not_a_mapping(root: Path, text: str, line: int) -> None:
    write_config(root, text)
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 4 and "Traceback" not in result.err
    assert f"{config_path(root)}:{line}: the top level must be a mapping" in result.err


def test_several_problems_are_all_reported_in_file_order(root: Path) -> None:
    write_config(
        root,
        """\
dns:
  anything: goes
backup:
  s3:
    bucket: b
    part_size_mb: "big"
    endpoint: not-a-url
    secrt_access_key: x
  include_volumes: "yes"
  compression:
    codec: zstd
  encryption:
    recipients:
      - age1bogus
""",
    )
    result = run_itsup(*LIST_LOCAL, root=root)
    expected = [
        (6, "backup.s3.part_size_mb", "valid integer"),
        (7, "backup.s3.endpoint", "must be a URL"),
        (8, "backup.s3.secrt_access_key", "did you mean 'secret_access_key'?"),
        (9, "backup.include_volumes", "valid boolean"),
        (11, "backup.compression.codec", "'gzip' or 'none'"),
        (14, "backup.encryption.recipients.0", "not an age or SSH public key"),
    ]
    assert_problems(result, root, *expected)
    reported = [int(line.split(":")[1]) for line in problem_lines(result, root)]
    assert reported == sorted(reported)


def test_several_undefined_variables_are_all_reported(root: Path) -> None:
    write_config(root, "backup:\n  s3:\n    bucket: ${ONE}\n    region: ${TWO}\n")
    assert_problems(
        run_itsup(*LIST_LOCAL, root=root),
        root,
        (3, "backup.s3.bucket", "${ONE}"),
        (4, "backup.s3.region", "${TWO}"),
    )


def test_undefined_variables_and_other_problems_are_reported_together(root: Path) -> None:
    write_config(
        root,
        "backup:\n"
        "  s3:\n"
        "    bucket: b\n"
        "    endpoint: ${UNDEFINED_ENDPOINT}\n"
        "    part_size_mb: 2\n"
        '  include_volumes: "yes"\n',
    )
    assert_problems(
        run_itsup(*LIST_LOCAL, root=root),
        root,
        (4, "backup.s3.endpoint", "${UNDEFINED_ENDPOINT} is not defined"),
        (5, "backup.s3.part_size_mb", "greater than or equal to 5"),
        (6, "backup.include_volumes", "valid boolean"),
    )


# -- secrets never show --------------------------------------------------------------


def _all_output(result: Result, root: Path) -> str:
    log = root / "logs" / "backup.log"
    return result.out + result.err + (log.read_text() if log.exists() else "")


def test_secret_values_never_appear_in_config_errors(root: Path) -> None:
    secrets_file(root, f"S3_SECRET={SECRET}\nSHORT_SECRET=hunter22\n")
    write_config(
        root,
        """\
backup:
  target: ${S3_SECRET}
  s3:
    bucket: b
    endpoint: ${S3_SECRET}
    prefix: /${S3_SECRET}
    part_size_mb: ${S3_SECRET}
    addressing_style: ${SHORT_SECRET}
    secret_access_key: ${S3_SECRET}
  compression: ${S3_SECRET}
  encryption:
    recipients:
      - ${S3_SECRET}
      - "${SHORT_SECRET}"
""",
    )
    result = run_itsup("-v", *LIST_LOCAL, root=root)
    assert result.code == 4
    assert len(problem_lines(result, root)) == 8, result.err
    text = _all_output(result, root)
    assert SECRET not in text and "hunter22" not in text
    assert "'***' is not an age or SSH public key" in result.err
    with pytest.raises(ConfigError) as err:
        load_config(Layout(root), environ={})
    assert SECRET not in str(err.value) and "hunter22" not in str(err.value)


def test_secret_values_never_appear_in_output_or_logs(root: Path, s3_server: S3Server) -> None:
    """A real backup and listing against the S3 server, with logs/backup.log, verbose."""
    write_config(root, s3_config(s3_server, "t/config-secrets/"))
    s3_secrets(root, s3_server)
    backup = run_itsup("-v", "backup", root=root)
    assert backup.code == 0, backup.err
    listing = run_itsup("-v", "backup", "list", "--json", root=root)
    assert listing.code == 0, listing.err
    log = (root / "logs" / "backup.log").read_text()
    assert "backup-" in log  # the log is really written
    for text in (backup.out, backup.err, listing.out, listing.err, log):
        assert s3_server.secret_key not in text
    # A refused login: the error names the endpoint, never the secret.
    (root / "secrets" / "itsup.txt").write_text(
        f"S3_KEY_ID={s3_server.access_key}\nS3_SECRET={SECRET}\n"
    )
    refused = run_itsup("-v", "backup", root=root)
    assert refused.code == 6, refused.err
    assert "Traceback" not in refused.err
    assert s3_server.endpoint in refused.err
    assert SECRET not in _all_output(refused, root)


# -- finding the host root ----------------------------------------------------------------


def test_root_from_option(root: Path) -> None:
    result = run_itsup(*LIST_LOCAL, root=root)
    assert result.code == 0, result.err
    assert f"no backups on {root / 'backups'}" in result.out


def test_root_from_environment(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_in(elsewhere, *LIST_LOCAL, env={"ITSUP_ROOT": str(root)})
    assert result.code == 0, result.err
    assert f"no backups on {root / 'backups'}" in result.out


def test_root_found_by_walking_up(root: Path) -> None:
    for sub in (root, root / "projects" / "app", root / "proxy" / "traefik"):
        result = run_in(sub, *LIST_LOCAL)
        assert result.code == 0, (sub, result.err)
        assert f"no backups on {root / 'backups'}" in result.out


def test_root_precedence(root: Path, tmp_path: Path) -> None:
    other = make_host(tmp_path / "other", volumes=False)
    write_config(other, "backup: {}\n")
    # ITSUP_ROOT beats the current folder; --root beats both.
    result = run_in(root / "projects", *LIST_LOCAL, env={"ITSUP_ROOT": str(other)})
    assert f"no backups on {other / 'backups'}" in result.out, result.err
    result = run_in(
        root / "projects", "--root", str(root), *LIST_LOCAL, env={"ITSUP_ROOT": str(other)}
    )
    assert f"no backups on {root / 'backups'}" in result.out, result.err
    assert find_root(str(other), cwd=root).root == other.resolve()


def test_no_root_found(tmp_path: Path) -> None:
    lost = tmp_path / "not" / "a" / "host"
    lost.mkdir(parents=True)
    result = run_in(lost, *LIST_LOCAL)
    assert result.code == 4, result.err
    assert "Traceback" not in result.err
    assert "no host root found" in result.err and "projects/itsup.yml" in result.err
    assert "--root" in result.err  # the hint says what to do


@pytest.mark.parametrize("how", ["option", "environment"])
def test_root_given_without_itsup_yml(tmp_path: Path, how: str) -> None:
    bare = tmp_path / "bare"
    (bare / "projects").mkdir(parents=True)  # projects/ but no itsup.yml
    if how == "option":
        result = run_itsup(*LIST_LOCAL, root=bare)
    else:
        result = run_in(tmp_path, *LIST_LOCAL, env={"ITSUP_ROOT": str(bare)})
    assert result.code == 4, result.err
    assert "Traceback" not in result.err
    assert f"{bare / 'projects' / 'itsup.yml'}: not found" in result.err


def test_missing_root_folder(tmp_path: Path) -> None:
    result = run_in(tmp_path, "--root", str(tmp_path / "does-not-exist"), *LIST_LOCAL)
    assert result.code == 4, result.err
    assert "Traceback" not in result.err
    assert "not found" in result.err


# -- property: nothing under `backup:` produces a traceback ---------------------------------

KNOWN_KEYS = sorted(
    {
        "s3", "local", "target", "include_volumes", "compression", "encryption", "exclude",
        "bucket", "prefix", "region", "endpoint", "access_key_id", "secret_access_key",
        "session_token", "storage_class", "part_size_mb", "max_concurrency",
        "addressing_style", "path", "codec", "level", "threads", "recipients", "identity_file",
        "targets", "url", "connect_timeout", "read_timeout", "max_attempts",
    }
)  # fmt: skip
PROPERTY_SECRET = "property-secret-value-7c1d"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "${PS}",
            "${UNDEFINED}",
            "${N:-7}",
            "x-${PS}-y",
            "${BOOL}",
            "${NUM}",
            "s3",
            "local",
            "gzip",
            "none",
            "https://s3.example.com",
            "age1bogus",
            "AGE-SECRET-KEY-1ABC",
            "yes",
            "itsup/",
            "../x",
            "",
            "s3://b/x",
            "s3://",
            "file:///srv/b",
            "ftp://h/x",
        ]
    ),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12), st.integers(0, 3))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=25,
)
documents = st.one_of(
    st.dictionaries(st.just("backup"), values, min_size=1),
    st.dictionaries(keys, values, max_size=4),
    values,
)


def _mutate(text: str, edits: list[tuple[int, str]]) -> str:
    for pos, chars in edits:
        at = pos % (len(text) + 1)
        text = text[:at] + chars + text[at:]
    return text


@pytest.fixture(scope="module")
def scratch_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "projects").mkdir()
        yield Path(tmp)


def _check_loads_or_reports(root: Path, text: str) -> None:
    (root / "projects" / "itsup.yml").write_text(text, encoding="utf-8", errors="surrogatepass")
    source = str(root / "projects" / "itsup.yml")
    try:
        cfg = load_config(
            Layout(root),
            environ={"BOOL": "true", "NUM": "12"},
            secrets={"PS": PROPERTY_SECRET},
        )
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert "\n" not in problem
            assert problem.startswith(source), problem
            assert PROPERTY_SECRET not in problem
        assert exc.exit_code == 4
    else:
        assert isinstance(cfg, ItsupConfig)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_property_random_documents_never_crash(scratch_root: Path, doc: object) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True, default_flow_style=None)
    _check_loads_or_reports(scratch_root, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(st.just("backup"), values, min_size=1),
    edits=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.sampled_from(
                [
                    "\t",
                    ":",
                    "- ",
                    "[",
                    "]",
                    "{",
                    "'",
                    '"',
                    "&a ",
                    "*a",
                    "!!",
                    "\n  ",
                    "\n",
                    "#",
                    "%",
                    "@",
                    "\x00",
                    "\x85",
                    "\ud800",
                ]
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_property_mangled_yaml_never_crashes(
    scratch_root: Path, doc: object, edits: list[tuple[int, str]]
) -> None:
    text = _mutate(yaml.safe_dump(doc, allow_unicode=True), edits)
    _check_loads_or_reports(scratch_root, text)


def test_cli_never_shows_a_traceback_for_odd_documents(root: Path) -> None:
    """A few odd documents through the real command: exit 0 or 4, never a traceback."""
    for text in (
        "backup:\n  ? [a, b]\n  : c\n",
        "backup:\n  1: x\n  null: y\n",
        "backup: !!binary aGVsbG8=\n",
        "backup:\n  exclude: [[[]]]\n",
        "backup:\n  s3:\n    bucket: " + "[" * 200 + "]" * 200 + "\n",
        "backup: 2001-12-14\n",
        "%YAML 1.1\n---\nbackup: {}\n",
        "--- a\n--- b\n",
        "backup:\n  s3: &x\n    bucket: b\n  local: *x\n",
    ):
        write_config(root, text)
        result = run_itsup(*LIST_LOCAL, root=root)
        assert result.code in (0, 4), (text, result.err)
        assert "Traceback" not in result.err and "internal error" not in result.err, text
        if result.code == 4:
            assert problem_lines(result, root), (text, result.err)


def test_masking_touches_only_the_message_not_the_location(root: Path) -> None:
    """A secret that happens to be an ordinary word does not garble file or key names."""
    secrets_file(root, "WORD=projects\nOTHER=compression\n")
    write_config(root, "backup:\n  compression: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(Layout(root), environ={})
    assert err.value.problems == [
        f"{config_path(root)}:2: backup.compression: input should be a valid boolean"
    ]


# -- monitoring and notify ------------------------------------------------------


def test_monitoring_and_notify_sections_load(root: Path) -> None:
    secrets_file(root, "NTFY_TOKEN=tk_secret_value\n")
    write_config(
        root,
        "backup:\n"
        "  monitoring:\n"
        "    max_age: 26h\n"
        "    rto: 30m\n"
        "    rpo: 1d\n"
        "    metrics_file: /var/lib/node_exporter/textfile_collector/itsup.prom\n"
        "    healthchecks: https://hc-ping.com/0b1c2d3e\n"
        "notify:\n"
        "  - ntfys://${NTFY_TOKEN}@ntfy.sh/backups\n"
        "  - url: mailto://ops:pw@example.com\n"
        "    events: [failure, stale]\n",
    )
    cfg = load_config(Layout(root))
    m = cfg.backup.monitoring
    assert (m.max_age, m.rto, m.rpo) == (26 * 3600, 1800, 86400)
    assert cfg.notify[0].url == "ntfys://tk_secret_value@ntfy.sh/backups"
    assert "success" not in cfg.notify[0].events and "stale" in cfg.notify[0].events
    assert cfg.notify[1].events == ["failure", "stale"]


def test_monitoring_and_notify_mistakes_name_line_and_key(root: Path) -> None:
    secrets_file(root, "NTFY_TOKEN=tk_secret_value\n")
    write_config(
        root,
        "backup:\n"
        "  monitoring:\n"
        "    max_age: two days\n"
        "    healthchecks: hc-ping.com/x\n"
        "notify:\n"
        "  - url: ${NTFY_TOKEN}\n"
        "    events: [failure, sometimes]\n",
    )
    r = run_itsup("backup", "list", root=root)
    assert_problems(
        r,
        root,
        (3, "backup.monitoring.max_age", "is not a duration"),
        (4, "backup.monitoring.healthchecks", "http(s) URL"),
        (6, "notify.0.url", "apprise URL"),
        (7, "notify.0.events.1", "'failure'"),
    )
    assert "tk_secret_value" not in r.err + r.out
