"""`itsup backup schedule`: run backups (and drills and stale checks) unattended.

Two schedulers, one plan:

- systemd timers (the default where systemd runs): `itsup-backup.service` +
  `.timer`, `itsup-drill.*` (monthly or weekly restore drill), and with
  `check` `itsup-check.*` (hourly stale alert). Timers are `Persistent=true`
  (a run missed while the machine was off happens at boot) and spread by
  `RandomizedDelaySec`. Services run at the lowest CPU and I/O priority.
- cron (where systemd is absent): the spec's crontab line, plus drill and
  check lines, between `# BEGIN itsup (root: R)` and `# END itsup (root: R)`
  markers in the user's crontab (`crontab -l` / `crontab -`) or in a system
  crontab file (`/etc/cron.d/...`, which has a user field). cron has no
  randomized delay, and itsup does not emulate one: `sleep $((RANDOM % N))`
  needs `SHELL=/bin/bash`, which would change the shell of every other line
  in the same crontab. Pick the minute with `--at` instead.

Ownership is explicit. Every unit (and logrotate) file itsup writes starts
with `# Managed by itsup backup schedule (root: R)`; itsup overwrites or
removes only files that carry that line for the same root, and refuses to
touch any other. In a crontab it touches only its own block; every other
byte stays as it was.

Names: units are `itsup-backup.*`, `itsup-drill.*`, `itsup-check.*`. A
second host root on the same machine needs `--name NAME`, which makes them
`itsup-NAME-backup.*` (no hash: names stay readable in `systemctl
list-timers`); without it the second install is refused, because the files
carry the first root's marker. Cron blocks are per root already.

Drill time: 90 minutes after the backup time (so it drills the night's fresh
generation), on the 1st of the month (monthly) or on Sundays (weekly);
04:30 when the backup time is given as a free-form calendar spec.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from itsup.durations import parse_duration
from itsup.errors import ItsupError, UsageError
from itsup.fsutil import atomic_write
from itsup.layout import Layout

log = logging.getLogger("itsup.schedule")

MARKER = "# Managed by itsup backup schedule (root: {root})"
BEGIN = "# BEGIN itsup (root: {root})"
END = "# END itsup (root: {root})"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# Where systemd itself looks for units the administrator writes; enabling a
# unit anywhere else would fail, so files written elsewhere are only written.
SYSTEM_UNIT_DIRS = (SYSTEM_UNIT_DIR, Path("/run/systemd/system"))
LOGROTATE_DIR = Path("/etc/logrotate.d")
DEFAULT_AT = (3, 0)
DRILL_OFFSET_MINUTES = 90
FALLBACK_DRILL_AT = (4, 30)
CHECK_DELAY = "5m"
UNIT_MODE = 0o644
_AT_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_CRON_FIELD_RE = re.compile(r"^[A-Za-z0-9*,/-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SD_QUOTE_RE = re.compile(r"[\s\"'\\;]")


class ScheduleError(ItsupError):
    """Installing or removing the schedule failed (files named in the message)."""


@dataclass(frozen=True)
class Options:
    kind: str = "systemd"  # "systemd" | "cron"
    at: str | None = None  # HH:MM
    on_calendar: str | None = None  # systemd OnCalendar, or 5 cron fields
    randomized_delay: str = "30m"
    drill: str = "monthly"  # "monthly" | "weekly" | "off"
    check: bool = False
    max_age: str = "48h"
    user: bool = False  # systemd user units (systemctl --user)
    name: str | None = None
    unit_dir: Path | None = None
    cron_file: Path | None = None  # a system crontab (cron.d format, with a user field)
    logrotate: bool = False
    logrotate_file: Path | None = None


@dataclass(frozen=True)
class Rendered:
    """One file (or the user's crontab block) as it would be installed."""

    label: str  # a path, or "crontab of USER"
    text: str
    path: Path | None = None  # None: the user's crontab
    enable: bool = False  # a timer to enable


@dataclass
class Outcome:
    rendered: list[Rendered] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # one line per change, in order
    notes: list[str] = field(default_factory=list)


# -- choosing and validating -------------------------------------------------------------


def systemd_running() -> bool:
    """True when systemd is the init system (sd_booted's test)."""
    return Path("/run/systemd/system").is_dir()


def default_kind() -> str:
    return "systemd" if systemd_running() else "cron"


def parse_at(text: str) -> tuple[int, int]:
    m = _AT_RE.match(text.strip())
    if not m:
        raise UsageError(
            f"--at {text!r}: not a time of day",
            hint="use HH:MM from 00:00 to 23:59, e.g. --at 03:00",
        )
    return int(m.group(1)), int(m.group(2))


def _seconds(option: str, text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _timespan(seconds: int) -> str:
    """A systemd time span: 30m, 1h 30m, 0."""
    if seconds == 0:
        return "0"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


def _check_root(root: Path, kind: str) -> None:
    text = str(root)
    if _CONTROL_RE.search(text):
        raise UsageError(f"{text!r}: a host root with control characters cannot be scheduled")
    if kind == "cron" and "%" in text:
        raise UsageError(
            f"{text}: cron turns '%' in a command into a newline; "
            "schedule a host root without '%' in its path, or use --systemd"
        )


def _validate(opts: Options) -> None:
    if opts.kind not in ("systemd", "cron"):
        raise UsageError(f"unknown scheduler {opts.kind!r}")
    if opts.at is not None and opts.on_calendar is not None:
        raise UsageError("--at and --on-calendar exclude each other")
    if opts.at is not None:
        parse_at(opts.at)
    if opts.drill not in ("monthly", "weekly", "off"):
        raise UsageError(f"--drill {opts.drill!r}: use monthly, weekly or off")
    _seconds("--randomized-delay", opts.randomized_delay)
    if _seconds("--max-age", opts.max_age) <= 0:
        raise UsageError("--max-age: must be longer than 0s")
    if opts.name is not None and not _NAME_RE.match(opts.name):
        raise UsageError(
            f"--name {opts.name!r}: use letters, digits, '-' and '_' (at most 40), "
            "starting with a letter or digit"
        )
    if opts.kind == "systemd":
        if opts.cron_file is not None:
            raise UsageError("--cron-file is for cron; with systemd use --unit-dir")
        if opts.on_calendar is not None:
            _check_calendar(opts.on_calendar)
    else:
        if opts.unit_dir is not None or opts.user:
            raise UsageError(
                "--unit-dir and --user are for systemd timers",
                hint="for cron, the default is your own crontab; --cron-file FILE writes a "
                "system crontab such as /etc/cron.d/itsup",
            )
        if opts.on_calendar is not None:
            fields = opts.on_calendar.split()
            if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
                raise UsageError(
                    f"--on-calendar {opts.on_calendar!r}: with cron, give the 5 time "
                    "fields of a crontab line, e.g. '0 3 * * *'"
                )


def _check_calendar(spec: str) -> None:
    if not spec.strip() or _CONTROL_RE.search(spec):
        raise UsageError(f"--on-calendar {spec!r}: not a calendar specification")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # systemd itself will judge it when the timer is loaded
        return
    proc = subprocess.run(
        [analyze, "calendar", spec], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["invalid"])[-1]
        raise UsageError(
            f"--on-calendar {spec!r}: not a systemd calendar specification ({reason})",
            hint="e.g. '*-*-* 03:00:00', 'daily', 'Mon..Fri 02:30'; see `man systemd.time`",
        )


# -- the commands the jobs run ------------------------------------------------------------


def itsup_command() -> list[str]:
    """The absolute path of this interpreter's `itsup` entry point, else `python -m itsup`.

    The interpreter path is made absolute but not resolved: a virtualenv's
    python is a symlink, and resolving it would leave the virtualenv behind.
    """
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "itsup"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(python), "-m", "itsup"]


@dataclass(frozen=True)
class Job:
    key: str  # backup | drill | check
    args: tuple[str, ...]  # after `itsup --root R`
    description: str


def _jobs(opts: Options) -> list[Job]:
    jobs = [Job("backup", ("backup",), "itsup backup")]
    if opts.drill != "off":
        jobs.append(Job("drill", ("backup", "drill"), f"itsup restore drill ({opts.drill})"))
    if opts.check:
        jobs.append(
            Job(
                "check",
                ("backup", "check", "--max-age", opts.max_age),
                f"itsup stale-backup check (older than {opts.max_age} alerts)",
            )
        )
    return jobs


def _times(opts: Options) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """(backup HH:MM or None for a free-form spec, drill HH:MM)."""
    if opts.on_calendar is not None:
        return None, FALLBACK_DRILL_AT
    at = parse_at(opts.at) if opts.at is not None else DEFAULT_AT
    minutes = (at[0] * 60 + at[1] + DRILL_OFFSET_MINUTES) % (24 * 60)
    return at, (minutes // 60, minutes % 60)


# -- systemd ------------------------------------------------------------------------------


def unit_prefix(opts: Options) -> str:
    return f"itsup-{opts.name}-" if opts.name else "itsup-"


def unit_names(opts: Options) -> list[str]:
    """Every unit file name this --name can own (the wanted ones and the optional ones)."""
    prefix = unit_prefix(opts)
    return [f"{prefix}{k}.{s}" for k in ("backup", "drill", "check") for s in ("service", "timer")]


def unit_dir(opts: Options) -> Path:
    if opts.unit_dir is not None:
        return Path(os.path.abspath(opts.unit_dir))
    if opts.user:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "systemd" / "user"
    return SYSTEM_UNIT_DIR


def _sd_escape(text: str) -> str:
    """Text in a unit setting: '%' starts a specifier in systemd, so it is doubled."""
    return text.replace("%", "%%")


def _sd_arg(arg: str) -> str:
    """One ExecStart word: specifiers and $VARIABLES escaped, quoted when it needs it."""
    word = _sd_escape(arg).replace("$", "$$")
    if not word or _SD_QUOTE_RE.search(word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def _sd_quoted(text: str) -> str:
    return '"' + _sd_escape(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _service(root: Path, job: Job, opts: Options, command: list[str]) -> str:
    exec_start = " ".join(_sd_arg(a) for a in [*command, "--root", str(root), *job.args])
    lines = [
        MARKER.format(root=root),
        "# Written by `itsup backup schedule`; `itsup backup schedule --uninstall` removes it.",
        "[Unit]",
        f"Description={_sd_escape(f'{job.description} of {root}')}",
    ]
    if not opts.user:  # user managers cannot see the system's network targets
        lines += ["Wants=network-online.target", "After=network-online.target"]
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={_sd_escape(str(root))}",
        f"Environment={_sd_quoted(f'ITSUP_ROOT={root}')}",
        f"ExecStart={exec_start}",
        "SyslogIdentifier=itsup",
        "# Be kind to the services this host runs: lowest CPU and I/O priority.",
        "Nice=19",
        "IOSchedulingClass=idle",
        "# Output goes to the journal (journalctl -u <this unit>); itsup itself also appends",
        f"# its log lines to {root}/logs/backup.log, as it does on every run when logs/ exists.",
        "# A failed run (any exit code but 0, e.g. 3 partial) leaves the unit failed:",
        "# `systemctl --failed` shows it.",
        "",
    ]
    return "\n".join(lines)


def _timer(root: Path, job: Job, opts: Options, on_calendar: str, delay: str) -> str:
    service = f"{unit_prefix(opts)}{job.key}.service"
    lines = [
        MARKER.format(root=root),
        "# Written by `itsup backup schedule`; `itsup backup schedule --uninstall` removes it.",
        "[Unit]",
        f"Description={_sd_escape(f'Timer for {job.description} of {root}')}",
        "",
        "[Timer]",
        f"OnCalendar={_sd_escape(on_calendar)}",
        f"RandomizedDelaySec={delay}",
        "AccuracySec=1m",
        "# A run missed while the machine was off happens at the next boot.",
        "Persistent=true",
        f"Unit={service}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ]
    return "\n".join(lines)


def _systemd_files(root: Path, opts: Options) -> list[Rendered]:
    at, drill_at = _times(opts)
    backup_cal = opts.on_calendar if at is None else f"*-*-* {at[0]:02d}:{at[1]:02d}:00"
    assert backup_cal is not None
    drill_time = f"{drill_at[0]:02d}:{drill_at[1]:02d}:00"
    calendars = {
        "backup": backup_cal,
        "drill": f"*-*-01 {drill_time}" if opts.drill == "monthly" else f"Sun *-*-* {drill_time}",
        "check": "hourly",
    }
    delay = _timespan(_seconds("--randomized-delay", opts.randomized_delay))
    folder = unit_dir(opts)
    command = itsup_command()
    files = []
    for job in _jobs(opts):
        base = folder / f"{unit_prefix(opts)}{job.key}"
        service = Path(f"{base}.service")
        files.append(Rendered(str(service), _service(root, job, opts, command), service))
        job_delay = CHECK_DELAY if job.key == "check" else delay
        timer = Path(f"{base}.timer")
        text = _timer(root, job, opts, calendars[job.key], job_delay)
        files.append(Rendered(str(timer), text, timer, enable=True))
    return files


# -- cron ---------------------------------------------------------------------------------


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        if os.geteuid() == 0:
            return "root"
        raise UsageError(
            f"user id {os.geteuid()} has no name in the password database; "
            "a system crontab needs one in its user field"
        ) from None


def _cron_lines(root: Path, opts: Options) -> list[str]:
    at, drill_at = _times(opts)
    backup_when = opts.on_calendar if at is None else f"{at[1]} {at[0]} * * *"
    assert backup_when is not None
    drill_dom, drill_dow = ("1", "*") if opts.drill == "monthly" else ("*", "0")
    when = {
        "backup": " ".join(backup_when.split()),
        "drill": f"{drill_at[1]} {drill_at[0]} {drill_dom} * {drill_dow}",
        "check": "5 * * * *",
    }
    user = f" {current_user()}" if opts.cron_file is not None else ""
    q = shlex.quote
    prefix = f"ITSUP_ROOT={q(str(root))} nice -n 19 " + " ".join(q(a) for a in itsup_command())
    log_file = q(str(root / "logs" / "backup.log"))
    lines = [
        BEGIN.format(root=root),
        "# Managed by `itsup backup schedule`: reinstalling replaces this block,",
        "# `itsup backup schedule --uninstall` removes it. cron has no randomized delay:",
        "# each job starts at the minute shown. itsup also logs to logs/backup.log itself.",
    ]
    for job in _jobs(opts):
        args = " ".join(q(a) for a in ("--root", str(root), *job.args))
        lines.append(f"{when[job.key]}{user} {prefix} {args} >> {log_file} 2>&1")
    lines.append(END.format(root=root))
    return lines


def _cron_rendered(root: Path, opts: Options) -> Rendered:
    text = "\n".join(_cron_lines(root, opts)) + "\n"
    if opts.cron_file is not None:
        path = Path(os.path.abspath(opts.cron_file))
        return Rendered(str(path), text, path)
    return Rendered(f"crontab of {current_user()}", text)


def _lines(text: str) -> list[str]:
    """Lines with their endings, so that joining them gives back every byte."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _find_block(text: str, root: Path, where: str) -> tuple[int, int] | None:
    """(first line, line after END) of this root's block, or None; refuses broken markers."""
    begin, end = BEGIN.format(root=root), END.format(root=root)
    found: list[tuple[int, int]] = []
    start: int | None = None
    for i, line in enumerate(_lines(text)):
        stripped = line.rstrip("\r\n")
        if stripped == begin:
            if start is not None:
                raise ScheduleError(f"{where}: line {i + 1}: a second '{begin}' before '{end}'")
            start = i
        elif stripped == end:
            if start is None:
                raise ScheduleError(f"{where}: line {i + 1}: '{end}' without '{begin}'")
            found.append((start, i + 1))
            start = None
    if start is not None:
        raise ScheduleError(
            f"{where}: line {start + 1}: '{begin}' without '{end}'",
            hint="fix the markers by hand; itsup changes nothing until they pair up",
        )
    if len(found) > 1:
        raise ScheduleError(
            f"{where}: {len(found)} itsup blocks for {root}",
            hint="remove all but one by hand; itsup changes nothing until then",
        )
    return found[0] if found else None


def splice_block(text: str, block: str | None, root: Path, where: str) -> str:
    """`text` with this root's block replaced by `block` (None: removed), or appended.

    Every line outside the block is kept byte for byte; a missing final newline
    before an appended block is the only byte added.
    """
    lines = _lines(text)
    span = _find_block(text, root, where)
    if span is not None:
        first, after = span
        return "".join(lines[:first]) + (block or "") + "".join(lines[after:])
    if block is None:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + block


def _crontab_program() -> str:
    program = shutil.which("crontab")
    if program is None:
        raise ScheduleError(
            "the crontab program is not installed, so the user's crontab cannot be changed",
            hint="write a system crontab instead, e.g. --cron-file /etc/cron.d/itsup "
            "(as root), or install cron",
        )
    return program


def _read_crontab() -> str:
    proc = subprocess.run([_crontab_program(), "-l"], capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        if "no crontab" in message.lower():
            return ""
        raise ScheduleError(f"crontab -l failed: {message or f'exit {proc.returncode}'}")
    return proc.stdout.decode("utf-8", "surrogateescape")


def _write_crontab(text: str) -> None:
    proc = subprocess.run(
        [_crontab_program(), "-"],
        input=text.encode("utf-8", "surrogateescape"),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip()
        raise ScheduleError(f"crontab - failed: {message or f'exit {proc.returncode}'}")


def _cron_file_notes(path: Path) -> list[str]:
    if path.parent == Path("/etc/cron.d") and not re.match(r"^[A-Za-z0-9_-]+$", path.name):
        return [
            f"{path}: cron ignores files in /etc/cron.d whose names hold anything but "
            "letters, digits, '-' and '_' (such as a dot); choose e.g. /etc/cron.d/itsup"
        ]
    return []


# -- logrotate ----------------------------------------------------------------------------


def logrotate_path(opts: Options) -> Path:
    if opts.logrotate_file is not None:
        return Path(os.path.abspath(opts.logrotate_file))
    return LOGROTATE_DIR / (f"itsup-{opts.name}" if opts.name else "itsup")


def _logrotate(root: Path, opts: Options) -> Rendered:
    log_file = str(root / "logs" / "backup.log").replace("\\", "\\\\").replace('"', '\\"')
    text = "\n".join(
        [
            MARKER.format(root=root),
            "# Rotation of itsup's log. No copytruncate: every itsup run opens",
            "# logs/backup.log anew (appending) and closes it when it exits, so a file",
            "# renamed between runs loses nothing and the next run starts a new one.",
            f'"{log_file}" {{',
            "    weekly",
            "    rotate 8",
            "    compress",
            "    missingok",
            "    notifempty",
            "}",
            "",
        ]
    )
    path = logrotate_path(opts)
    return Rendered(str(path), text, path)


# -- the plan -----------------------------------------------------------------------------


def render(layout: Layout, opts: Options) -> list[Rendered]:
    """What `--install` would write, nothing written."""
    root = layout.root
    _validate(opts)
    _check_root(root, opts.kind)
    files = _systemd_files(root, opts) if opts.kind == "systemd" else [_cron_rendered(root, opts)]
    if opts.logrotate:
        files.append(_logrotate(root, opts))
    return files


def _owner(path: Path) -> str | None:
    """The root named in the file's marker line; '' for a file without one; None if absent."""
    try:
        with path.open("rb") as fh:
            first = fh.readline(4096).decode("utf-8", "surrogateescape").rstrip("\r\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read: {exc.strerror}") from None
    m = re.match(r"^# Managed by itsup backup schedule \(root: (.*)\)$", first)
    return m.group(1) if m else ""


def _claim(path: Path, root: Path, opts: Options) -> None:
    """Refuse to overwrite a file that is not this root's."""
    owner = _owner(path)
    if owner is None or owner == str(root):
        return
    if owner == "":
        raise ScheduleError(
            f"{path}: exists and was not written by itsup; left alone, nothing installed",
            hint="move it away, or choose another name with --name",
        )
    raise ScheduleError(
        f"{path}: belongs to the schedule of another host root ({owner}); nothing installed",
        hint="give this host root its own units with --name NAME"
        if opts.kind == "systemd"
        else None,
    )


def _write(path: Path, text: str, mode: int = UNIT_MODE) -> bool:
    """Write `text` atomically; False when the file already held exactly that."""
    data = text.encode("utf-8", "surrogateescape")
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    try:
        if st is not None and (st.st_mode & 0o7777) == mode and path.read_bytes() == data:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode)
        if st is not None and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.chown(path, st.st_uid, st.st_gid)
    except OSError as exc:
        raise ScheduleError(
            f"{path}: cannot write: {exc.strerror}",
            hint="run as root, or use --user (systemd) / your own crontab (cron)",
        ) from None
    return True


def _systemctl(opts: Options, *args: str) -> str:
    command = ["systemctl", *(["--user"] if opts.user else []), *args]
    program = shutil.which("systemctl")
    if program is None:
        raise ScheduleError("systemd runs, but the systemctl program is not on PATH")
    proc = subprocess.run(
        [program, *command[1:]], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        reason = proc.stderr.strip() or f"exit {proc.returncode}"
        raise ScheduleError(
            f"`{' '.join(command)}` failed: {reason}",
            hint="the unit files are written; fix the cause and run the same command again",
        )
    return " ".join(command)


def _may_enable(opts: Options, folder: Path) -> str | None:
    """None when systemctl should enable the timers; else why not."""
    if not systemd_running():
        return "systemd is not running on this machine"
    if opts.unit_dir is not None and not opts.user and folder not in SYSTEM_UNIT_DIRS:
        return f"{folder} is not a folder systemd loads units from"
    if (
        opts.unit_dir is not None
        and opts.user
        and folder != unit_dir(Options(kind="systemd", user=True))
    ):
        return f"{folder} is not the folder systemd loads your user units from"
    return None


def install(layout: Layout, opts: Options) -> Outcome:
    """Write what `render` shows, enable the timers, and report each step."""
    root = layout.root
    files = render(layout, opts)
    result = Outcome(rendered=files)
    if opts.kind == "systemd":
        folder = unit_dir(opts)
        if opts.unit_dir is None and not systemd_running():
            raise UsageError(
                "systemd is not running on this machine: nothing installed",
                hint="use --cron, or give --unit-dir DIR to only write the unit files",
            )
        _install_units(root, opts, folder, files, result)
    else:
        _install_cron(root, opts, files[0], result)
    if opts.logrotate:
        rotate = files[-1]
        assert rotate.path is not None
        _claim(rotate.path, root, opts)
        _record(result, rotate.path, _write(rotate.path, rotate.text))
    if not layout.logs.is_dir():
        try:
            layout.logs.mkdir()
        except OSError as exc:
            raise ScheduleError(f"{layout.logs}: cannot create: {exc.strerror}") from None
        result.done.append(f"created {layout.logs}/ (the jobs log to logs/backup.log)")
    log.info("schedule installed (%s): %s", opts.kind, "; ".join(result.done) or "no change")
    return result


def _record(result: Outcome, path: Path, changed: bool) -> None:
    result.done.append(f"{'wrote' if changed else 'unchanged'} {path}")


def _install_units(
    root: Path, opts: Options, folder: Path, files: list[Rendered], result: Outcome
) -> None:
    units = [f for f in files if f.path is not None and f.path.parent == folder]
    for f in units:
        assert f.path is not None
        _claim(f.path, root, opts)
    wanted = {f.path.name for f in units if f.path is not None}
    # Units of this name and root that are no longer wanted (e.g. --drill off now).
    stale = [
        folder / n for n in unit_names(opts) if n not in wanted and _owner(folder / n) == str(root)
    ]
    why_not = _may_enable(opts, folder)
    timers = [f.path.name for f in units if f.enable and f.path is not None]
    stale_timers = [p.name for p in stale if p.suffix == ".timer"]
    if why_not is None and stale_timers:
        result.done.append("ran " + _systemctl(opts, "disable", "--now", *stale_timers))
    for f in units:
        assert f.path is not None
        _record(result, f.path, _write(f.path, f.text))
    for path in stale:
        _remove(path, result)
    if why_not is None:
        result.done.append("ran " + _systemctl(opts, "daemon-reload"))
        result.done.append("ran " + _systemctl(opts, "enable", "--now", *timers))
        if opts.user:
            result.notes.append(
                "user timers run only while you are logged in, unless lingering is on: "
                f"`loginctl enable-linger {current_user()}`"
            )
    else:
        flag = "--user " if opts.user else ""
        result.notes.append(
            f"{why_not}: enabling skipped; where systemd runs and loads {folder}, run "
            f"`systemctl {flag}daemon-reload && systemctl {flag}enable --now {' '.join(timers)}`"
        )


def _remove(path: Path, result: Outcome) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot remove: {exc.strerror}") from None
    result.done.append(f"removed {path}")
    # The link `systemctl enable` made, if it is left pointing at the removed file.
    link = path.parent / "timers.target.wants" / path.name
    if link.is_symlink() and not link.exists():
        target = Path(os.path.join(link.parent, os.readlink(link)))
        if os.path.normpath(target) == os.path.normpath(path):
            with contextlib.suppress(OSError):
                link.unlink()
                result.done.append(f"removed {link}")


def _install_cron(root: Path, opts: Options, block: Rendered, result: Outcome) -> None:
    if block.path is None:
        current = _read_crontab()
        new = splice_block(current, block.text, root, block.label)
        if new == current:
            result.done.append(f"unchanged {block.label}")
        else:
            _write_crontab(new)
            result.done.append(f"installed the itsup block in the {block.label}")
        return
    path = block.path
    result.notes.extend(_cron_file_notes(path))
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        data, mode = b"", UNIT_MODE
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read: {exc.strerror}") from None
    current = data.decode("utf-8", "surrogateescape")
    if current.strip() and not any(
        line.startswith("# BEGIN itsup (root: ") for line in current.splitlines()
    ):
        # A cron file someone else wrote (/etc/crontab, another package's cron.d
        # entry): itsup only ever edits files that hold its own blocks.
        raise ScheduleError(
            f"{path}: exists and was not written by itsup; left alone, nothing installed",
            hint="choose a file of its own, e.g. --cron-file /etc/cron.d/itsup, "
            "or leave out --cron-file to use your crontab",
        )
    _record(result, path, _write(path, splice_block(current, block.text, root, str(path)), mode))


def uninstall(layout: Layout, opts: Options) -> Outcome:
    """Remove what itsup installed for this root (marked files, its crontab block)."""
    root = layout.root
    _validate(opts)
    result = Outcome()
    if opts.kind == "systemd":
        _uninstall_units(root, opts, result)
    else:
        _uninstall_cron(root, opts, result)
    if opts.logrotate:
        path = logrotate_path(opts)
        owner = _owner(path)
        if owner == str(root):
            _remove(path, result)
        elif owner is not None:
            result.notes.append(f"{path}: not this root's (no itsup marker for {root}); kept")
    if not result.done:
        result.notes.append(f"nothing of itsup's was installed for {root} there")
    log.info("schedule removed (%s): %s", opts.kind, "; ".join(result.done) or "no change")
    return result


def _uninstall_units(root: Path, opts: Options, result: Outcome) -> None:
    folder = unit_dir(opts)
    ours: list[Path] = []
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError as exc:
        raise ScheduleError(f"{folder}: cannot list: {exc.strerror}") from None
    for path in entries:
        if path.suffix not in (".service", ".timer") or path.is_symlink() or not path.is_file():
            continue
        owner = _owner(path)
        if owner == str(root):
            ours.append(path)
        elif path.name in unit_names(opts):
            why = "written by itsup for " + owner if owner else "not written by itsup"
            result.notes.append(f"{path}: {why}; kept")
    why_not = _may_enable(opts, folder)
    timers = [p.name for p in ours if p.suffix == ".timer"]
    if why_not is None and timers:
        result.done.append("ran " + _systemctl(opts, "disable", "--now", *timers))
    for path in ours:
        _remove(path, result)
    if why_not is None and ours:
        result.done.append("ran " + _systemctl(opts, "daemon-reload"))
    elif ours:
        result.notes.append(f"{why_not}: nothing to disable")


def _uninstall_cron(root: Path, opts: Options, result: Outcome) -> None:
    if opts.cron_file is None:
        current = _read_crontab()
        new = splice_block(current, None, root, "crontab")
        if new != current:
            _write_crontab(new)
            result.done.append("removed the itsup block from the crontab")
        return
    path = Path(os.path.abspath(opts.cron_file))
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read: {exc.strerror}") from None
    current = data.decode("utf-8", "surrogateescape")
    new = splice_block(current, None, root, str(path))
    if new == current:
        return
    if new == "":  # the file held only itsup's block: it was itsup's file
        _remove(path, result)
        return
    _write(path, new, mode)
    result.done.append(f"removed the itsup block from {path}")
