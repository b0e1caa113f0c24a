"""`itsup backup schedule`: systemd units and cron lines, checked with the real tools.

The generated units go through `systemd-analyze verify`; the cron line is cut
out of the installed crontab file and run by `sh -c` with cron's bare
environment, and must really make a backup generation and log it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers import Result, make_host, run_itsup, write_config

MARK = "# Managed by itsup backup schedule (root: {root})"
UNITS = ("backup", "drill", "check")


def host(tmp_path: Path, name: str = "host") -> Path:
    root = make_host(tmp_path / name, volumes=False)
    write_config(root, "backup:\n  include_volumes: false\n")
    return root


def schedule(root: Path, *args: str | os.PathLike[str], expect: int = 0, **kw: object) -> Result:
    res = run_itsup("backup", "schedule", *args, root=root, **kw)  # type: ignore[arg-type]
    assert res.code == expect, f"schedule {args}: exit {res.code}\n{res.out}\n{res.err}"
    assert "Traceback" not in res.out + res.err
    return res


def tree(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def verify(files: list[Path], user: bool = False, runtime: Path | None = None) -> None:
    """`systemd-analyze verify`: nothing it says may concern our units."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, (
        "systemd-analyze is not installed: install Debian's 'systemd' package; "
        "this test verifies the generated units with it"
    )
    env = dict(os.environ)
    if runtime is not None:
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    cmd = [analyze, *(["--user"] if user else []), "verify", *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    ours = [ln for ln in lines if any(f.name in ln or str(f.parent) in ln for f in files)]
    assert not ours, "systemd-analyze verify objects to our units:\n" + "\n".join(lines)
    assert proc.returncode == 0 or lines, f"verify failed silently (exit {proc.returncode})"


# -- systemd ------------------------------------------------------------------------------


def test_print_writes_nothing(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    shutil.rmtree(root / "logs")
    units, cron = tmp_path / "units", tmp_path / "cron.d" / "itsup"
    res = schedule(root, "--systemd", "--unit-dir", units, "--check", "--logrotate")
    for name in (f"itsup-{u}.{s}" for u in UNITS for s in ("service", "timer")):
        assert f"# --- {units / name} ---" in res.out
    assert res.out.count(MARK.format(root=root)) == 7  # six units and the logrotate stanza
    assert "nothing written" in res.err
    res = schedule(root, "--cron", "--cron-file", cron)
    assert f"# BEGIN itsup (root: {root})" in res.out
    assert not units.exists() and not cron.parent.exists() and not (root / "logs").exists()


def test_systemd_units_verify_install_idempotent(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    shutil.rmtree(root / "logs")
    units = tmp_path / "units"
    rotate = tmp_path / "logrotate" / "itsup"
    args = ("--systemd", "--unit-dir", units, "--check", "--logrotate-file", rotate, "--install")
    res = schedule(root, *args)
    assert "enabling skipped" in res.err  # systemd is not init here, the folder was explicit
    names = sorted(tree(units))
    assert names == sorted(f"itsup-{u}.{s}" for u in UNITS for s in ("service", "timer"))
    for name in names:
        path = units / name
        assert path.read_text().splitlines()[0] == MARK.format(root=root)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (root / "logs").is_dir()  # the jobs' log folder is created on install

    backup = (units / "itsup-backup.service").read_text()
    exec_start = next(ln for ln in backup.splitlines() if ln.startswith("ExecStart="))
    binary = exec_start.split("=", 1)[1].split()[0]
    assert os.path.isabs(binary) and os.access(binary, os.X_OK)
    assert exec_start.endswith(f"--root {root} backup")
    for line in ("Type=oneshot", f"WorkingDirectory={root}", f'Environment="ITSUP_ROOT={root}"'):
        assert line in backup.splitlines()
    assert "logs/backup.log" in backup
    timer = (units / "itsup-backup.timer").read_text().splitlines()
    for line in ("OnCalendar=*-*-* 03:00:00", "RandomizedDelaySec=30m", "Persistent=true"):
        assert line in timer
    assert "OnCalendar=*-*-01 04:30:00" in (units / "itsup-drill.timer").read_text()
    check = (units / "itsup-check.service").read_text()
    assert "backup check --max-age 48h" in check
    assert "OnCalendar=hourly" in (units / "itsup-check.timer").read_text()
    verify([units / n for n in names])

    stanza = rotate.read_text()
    assert stanza.splitlines()[0] == MARK.format(root=root)
    assert all(w in stanza for w in ("weekly", "rotate 8", "compress", "missingok", "notifempty"))
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    assert os.access(logrotate, os.X_OK), "logrotate is not installed (Debian: logrotate)"
    (root / "logs" / "backup.log").write_text("a line\n")
    proc = subprocess.run(
        [logrotate, "-d", "-s", str(tmp_path / "state"), str(rotate)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), proc.stderr
    assert f"considering log {root}/logs/backup.log" in proc.stderr

    before = tree(units) | {"rotate": rotate.read_bytes()}
    res = schedule(root, *args)
    assert (tree(units) | {"rotate": rotate.read_bytes()}) == before
    assert "wrote" not in res.out and res.out.count("unchanged") == 7


def test_user_units_verify(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    units = tmp_path / "user-units"
    schedule(root, "--user", "--unit-dir", units, "--at", "01:15", "--drill", "weekly", "--install")
    service = (units / "itsup-backup.service").read_text()
    assert "network-online" not in service  # user managers cannot see system targets
    assert "OnCalendar=Sun *-*-* 02:45:00" in (units / "itsup-drill.timer").read_text()
    verify(sorted(units.iterdir()), user=True, runtime=tmp_path / "runtime")


def test_uninstall_removes_only_marked_files(tmp_path: Path, isolated_home: Path) -> None:
    root, other = host(tmp_path), host(tmp_path, "other")
    units = tmp_path / "units"
    units.mkdir()
    foreign = units / "nginx-renew.service"
    foreign.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    schedule(root, "--unit-dir", units, "--install")
    ours = set(tree(units)) - {foreign.name}

    # A second root may not take over the first one's units; with --name it gets its own.
    before = tree(units)
    res = schedule(other, "--unit-dir", units, "--install", expect=1)
    assert "another host root" in res.err and "--name" in res.err
    assert tree(units) == before
    schedule(other, "--unit-dir", units, "--name", "other", "--install")
    theirs = set(tree(units)) - ours - {foreign.name}
    assert theirs == {
        f"itsup-other-{u}.{s}" for u in ("backup", "drill") for s in ("service", "timer")
    }

    # A look-alike without the marker is neither overwritten nor removed.
    impostor = units / "itsup-check.service"
    impostor.write_text("[Service]\nExecStart=/bin/true\n")
    res = schedule(root, "--unit-dir", units, "--check", "--install", expect=1)
    assert "not written by itsup" in res.err
    assert impostor.read_text() == "[Service]\nExecStart=/bin/true\n"

    res = schedule(root, "--unit-dir", units, "--uninstall")
    assert set(tree(units)) == theirs | {foreign.name, impostor.name}
    assert f"{impostor}: not written by itsup; kept" in res.err
    assert foreign.read_text() == "[Service]\nType=oneshot\nExecStart=/bin/true\n"
    schedule(other, "--unit-dir", units, "--uninstall")
    assert set(tree(units)) == {foreign.name, impostor.name}


def test_options_shape_the_units(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    res = schedule(root, "--systemd", "--unit-dir", tmp_path / "u", "--drill", "off")
    assert "itsup-drill" not in res.out and "itsup-check" not in res.out
    shaped = ("--on-calendar", "Mon..Fri 02:30", "--randomized-delay", "1h30m")
    res = schedule(root, "--unit-dir", tmp_path / "u", *shaped, "--check", "--max-age", "3d")
    assert "OnCalendar=Mon..Fri 02:30" in res.out
    assert "RandomizedDelaySec=1h 30m" in res.out
    assert "backup check --max-age 3d" in res.out

    # Reinstalling without drill removes the drill units it installed before.
    units = tmp_path / "units"
    schedule(root, "--unit-dir", units, "--install")
    assert (units / "itsup-drill.timer").exists()
    res = schedule(root, "--unit-dir", units, "--drill", "off", "--install")
    assert f"removed {units / 'itsup-drill.timer'}" in res.out
    assert set(tree(units)) == {"itsup-backup.service", "itsup-backup.timer"}


@pytest.mark.parametrize(
    "args",
    [
        ("--at", "25:00"),
        ("--at", "12:60"),
        ("--at", "noon"),
        ("--at", "03:00", "--on-calendar", "daily"),
        ("--systemd", "--on-calendar", "every tuesday-ish"),
        ("--cron", "--on-calendar", "daily"),
        ("--randomized-delay", "soon"),
        ("--name", "../etc"),
        ("--install", "--uninstall"),
        ("--cron", "--unit-dir", "/srv/units"),
    ],
)
def test_bad_input_is_a_usage_error(
    tmp_path: Path, isolated_home: Path, args: tuple[str, ...]
) -> None:
    root = host(tmp_path)
    where = "--cron-file" if "--cron" in args else "--unit-dir"
    res = schedule(root, *args, where, tmp_path / "x", expect=2)
    assert "itsup: error:" in res.err or "Error:" in res.err
    assert not (tmp_path / "x").exists()


def test_not_a_host_root(tmp_path: Path, isolated_home: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = schedule(tmp_path / "empty", "--systemd", "--unit-dir", tmp_path / "u", expect=4)
    assert "not an itsup host root" in res.err


def test_systemd_install_needs_systemd_or_a_unit_dir(tmp_path: Path, isolated_home: Path) -> None:
    if Path("/run/systemd/system").is_dir():
        pytest.fail("this test needs a machine where systemd is not init (it would enable timers)")
    root = host(tmp_path)
    res = schedule(root, "--systemd", "--install", expect=2)
    assert "systemd is not running" in res.err and "--unit-dir" in res.err


# -- cron ---------------------------------------------------------------------------------

FOREIGN_HEAD = b'SHELL=/bin/sh\nMAILTO=""\n# rotate certificates \xe9t\xe9 (latin-1 byte kept)\r\n'
FOREIGN_TAIL = b"15 1 * * * root /usr/local/bin/renew-certs\n"


def block_of(text: str, root: Path) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"# BEGIN itsup (root: {root})")
    return lines[start : lines.index(f"# END itsup (root: {root})") + 1]


def test_cron_file_block_is_replaced_and_removed(tmp_path: Path, isolated_home: Path) -> None:
    root, other = host(tmp_path), host(tmp_path, "other")
    cron = tmp_path / "cron.d" / "itsup"
    cron.parent.mkdir()
    # A cron file someone else wrote is never appended to.
    foreign = tmp_path / "cron.d" / "other-package"
    foreign.write_bytes(FOREIGN_HEAD + FOREIGN_TAIL)
    res = schedule(root, "--cron-file", foreign, "--check", "--install", expect=1)
    assert "was not written by itsup" in res.err
    assert foreign.read_bytes() == FOREIGN_HEAD + FOREIGN_TAIL

    schedule(root, "--cron-file", cron, "--check", "--install")
    cron.chmod(0o600)
    schedule(root, "--cron-file", cron, "--check", "--install")
    text = cron.read_bytes()
    assert text.startswith(f"# BEGIN itsup (root: {root})".encode())
    assert stat.S_IMODE(cron.stat().st_mode) == 0o600  # the file's own mode is kept
    block = block_of(text.decode("utf-8", "surrogateescape"), root)
    jobs = [ln for ln in block if not ln.startswith("#")]
    assert len(jobs) == 3
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    for line in jobs:
        fields = line.split(None, 6)
        assert fields[5] == user  # cron.d lines carry a user field
        assert f"ITSUP_ROOT={root} " in line and line.endswith(f">> {root}/logs/backup.log 2>&1")
    assert jobs[0].startswith("0 3 * * * ")
    assert jobs[0].endswith(f"--root {root} backup >> {root}/logs/backup.log 2>&1")
    assert jobs[1].startswith("30 4 1 * * ") and " backup drill " in jobs[1]
    assert " backup check --max-age 48h " in jobs[2]

    # Another root's block and lines after ours are left alone; reinstall replaces ours.
    schedule(other, "--cron-file", cron, "--drill", "off", "--install")
    with cron.open("ab") as fh:
        fh.write(b"# appended by hand\n")
    snapshot = cron.read_bytes()
    schedule(root, "--cron-file", cron, "--at", "02:10", "--drill", "off", "--install")
    text2 = cron.read_bytes().decode("utf-8", "surrogateescape")
    assert text2.count(f"# BEGIN itsup (root: {root})") == 1
    new_jobs = [ln for ln in block_of(text2, root) if not ln.startswith("#")]
    assert len(new_jobs) == 1 and new_jobs[0].startswith("10 2 * * *")
    old_block = "\n".join(block_of(snapshot.decode("utf-8", "surrogateescape"), root)) + "\n"
    new_block = "\n".join(block_of(text2, root)) + "\n"
    assert text2 == snapshot.decode("utf-8", "surrogateescape").replace(old_block, new_block)
    res = schedule(root, "--cron-file", cron, "--at", "02:10", "--drill", "off", "--install")
    assert res.out.strip() == f"unchanged {cron}"

    schedule(root, "--cron-file", cron, "--uninstall")
    rest = cron.read_bytes()
    assert f"(root: {root})".encode() not in rest
    other_block = "\n".join(block_of(snapshot.decode("utf-8", "surrogateescape"), other)) + "\n"
    assert rest == other_block.encode() + b"# appended by hand\n"
    schedule(other, "--cron-file", cron, "--uninstall")
    assert cron.read_bytes() == b"# appended by hand\n"

    # A file that held only itsup's block was itsup's file: uninstall removes it.
    alone = tmp_path / "cron.d" / "itsup-alone"
    schedule(root, "--cron-file", alone, "--install")
    schedule(root, "--cron-file", alone, "--uninstall")
    assert not alone.exists()


def test_broken_markers_are_refused(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    cron = tmp_path / "crontab"
    broken = f"# BEGIN itsup (root: {root})\n0 3 * * * root /bin/true\n".encode()
    cron.write_bytes(broken)
    res = schedule(root, "--cron-file", cron, "--install", expect=1)
    assert "without" in res.err
    assert cron.read_bytes() == broken


def test_installed_cron_line_really_backs_up(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    shutil.rmtree(root / "logs")  # the install creates it: the line's redirect needs it
    cron = tmp_path / "cron.d" / "itsup"
    cron.parent.mkdir()
    schedule(root, "--cron-file", cron, "--drill", "off", "--install")
    assert (root / "logs").is_dir()
    line = next(ln for ln in cron.read_text().splitlines() if ln and not ln.startswith("#"))
    command = line.split(None, 6)[6]  # after the 5 time fields and the user field
    log_file = root / "logs" / "backup.log"
    log_file.write_text("earlier run\n")
    # cron's own environment: a bare PATH, HOME, SHELL and LOGNAME, nothing else.
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(isolated_home), "SHELL": "/bin/sh"}
    cron_env["LOGNAME"] = subprocess.run(
        ["id", "-un"], capture_output=True, text=True
    ).stdout.strip()
    proc = subprocess.run(
        ["sh", "-c", command],
        env=cron_env,
        cwd=str(isolated_home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifests = sorted((root / "backups" / "itsup").glob("backup-*.manifest.json"))
    assert len(manifests) == 1
    generation = manifests[0].name.removesuffix(".manifest.json")
    logged = log_file.read_text()
    assert logged.startswith("earlier run\n")  # appended, not truncated
    assert generation in logged
    assert "Traceback" not in logged


def test_user_crontab_without_crontab_program(tmp_path: Path, isolated_home: Path) -> None:
    root = host(tmp_path)
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    res = schedule(root, "--cron", "--install", env={"PATH": str(empty_path)}, expect=1)
    assert "crontab program is not installed" in res.err and "--cron-file" in res.err
    res = schedule(root, "--cron", env={"PATH": str(empty_path)})  # printing needs no crontab
    assert f"# BEGIN itsup (root: {root})" in res.out
    assert f"\n0 3 * * * ITSUP_ROOT={root} nice -n 19 " in res.out  # no user field
