"""The Docker engine, Compose and the registry-free database images the docker tests use.

    python tests/dockerenv.py up      install what is missing, start a daemon if none answers,
                                      build the stand-in images
    python tests/dockerenv.py down    stop the daemon `up` started (never one it did not start)
    python tests/dockerenv.py images  build the stand-in images only (skipped when up to date)

`make test` runs `up` before pytest and `down` after it, whatever pytest's result.

No image registry is reachable from the test machines, so the images are built
here with `docker import` from a busybox root file system, and tagged with the
names of the official images (`postgres:15`, `mariadb:10.11`, `redis:7`) so that
anything that recognises those names recognises them. Each carries an entry
point that behaves like the official image's: it reads the same environment
(POSTGRES_PASSWORD, MARIADB_ROOT_PASSWORD, ...), sets the engine up on first
start as the engine's own user, then `exec`s the engine as PID 1. The engines'
binaries are the host's, bind-mounted read-only (`SYSTEM_MOUNTS`, added to every
service by tests/dockerstack.py); `up` installs the Debian packages that hold
them when they are missing. The host's users (postgres, mysql, redis) come
with those packages and reach the containers through the read-only
/etc/passwd and /etc/group mounts.

An image is rebuilt only when its content (busybox, the entry point, the
image settings) changed: the hash of that content is its `itsup.standin`
label, so a warm `up` takes a fraction of a second. A real image of the same name (on
a developer's machine) is replaced: it would not work with the host mounts.

The daemon: when `docker info` does not answer, `up` starts
`dockerd --iptables=false --bridge=none` (no default bridge network, no
firewall rules) in the background and waits up to 60 s for it. What it started
is recorded in a state folder (the pid file and the daemon's log), and every
`up` leaves a lease named after its caller's process (the shell that runs
`up`, pytest and `down` in one recipe line); `down` drops its own lease and
stops the daemon (SIGTERM, then SIGKILL) only when `up` started it and no live
lease remains, so two test runs sharing a daemon do not pull it from under
each other, and a daemon someone else started is never stopped.

DOCKER_HOST=unix:///some/dir/docker.sock makes all of this use a daemon of its
own: one started here listens on that socket and keeps its data, run state,
pid file and log in that folder (a second, isolated daemon next to the
machine's). Otherwise the state folder is itsup-dockerenv in the temporary
folder, and a daemon started here uses Docker's default socket and data root.

Installing needs root (apt-get, dockerd); without root, `sudo -n` is used
when present.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from itsup.swap import pid_alive  # the same liveness check as the restore journal's

DAEMON_ARGS = ("--iptables=false", "--bridge=none")
DAEMON_TIMEOUT = 60.0
DEFAULT_SOCKET = "/var/run/docker.sock"
LABEL = "itsup.standin"

# Debian packages: the engine and compose, then the host binaries the stand-ins run.
TOOLS = {"docker": "docker.io", "dockerd": "docker.io", "docker-compose": "docker-compose"}
ENGINE_FILES = {
    "/usr/lib/postgresql/15/bin/postgres": "postgresql-15",
    "/usr/lib/postgresql/15/bin/pg_isready": "postgresql-client-15",
    "/usr/sbin/mariadbd": "mariadb-server-core",
    "/usr/bin/mariadb": "mariadb-client-core",
    "/usr/bin/mariadb-dump": "mariadb-client",
    "/usr/bin/redis-server": "redis-server",
    "/usr/bin/redis-cli": "redis-tools",
}

# Read-only host mounts every stand-in service needs: the engines' binaries and
# libraries, and the users they run as.
SYSTEM_MOUNTS = (
    "/usr:/usr:ro",
    "/lib:/lib:ro",
    "/lib64:/lib64:ro",
    "/etc/passwd:/etc/passwd:ro",
    "/etc/group:/etc/group:ro",
)

# busybox applets linked in /bin: what the entry points and tests use even
# before the host's /usr is mounted over the image's.
APPLETS = (
    *("sh", "ls", "cat", "sleep", "env", "mkdir", "su", "chown", "chmod", "rm", "mv", "cp"),
    *("test", "[", "tr", "grep", "sed", "head", "tail", "wc", "ps", "kill", "id", "echo"),
    *("printf", "true", "false", "mktemp", "touch", "ln", "dirname", "basename", "hostname"),
    *("find", "xargs", "cut", "sort", "uniq", "expr", "date", "stat", "timeout", "awk", "du"),
    *("df", "readlink", "nproc"),
)

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Entry points: the official images' behaviour, with busybox `su` in place of gosu.
# `su -p -s /bin/sh -c 'exec "$0" "$@"' -- USER "$0" "$@"` re-runs the script as
# USER with the same arguments and environment; without the `--`, busybox su
# would take the engine's own options (postgres's -c, redis's --port) for its.
POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# Stand-in for the official postgres image's docker-entrypoint.sh.
set -e
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 2777 /var/run/postgresql
    exec /bin/su -p -s /bin/sh -c 'exec "$0" "$@"' -- postgres "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}"
    : "${POSTGRES_DB:=$POSTGRES_USER}"
    auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth" != trust ]; then
        echo "Error: Database is uninitialized and superuser password is not specified." >&2
        echo "       Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)." >&2
        exit 1
    fi
    pwfile=
    if [ -n "$POSTGRES_PASSWORD" ]; then
        pwfile=$(umask 077 && mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    fi
    initdb -D "$PGDATA" --username="$POSTGRES_USER" ${pwfile:+--pwfile="$pwfile"} \
        --auth-local=trust --auth-host="$auth" --no-sync $POSTGRES_INITDB_ARGS >/dev/null
    [ -z "$pwfile" ] || rm -f "$pwfile"
    printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        printf 'CREATE DATABASE "%s"\n' "$POSTGRES_DB" \
            | postgres --single -D "$PGDATA" -c fsync=off postgres >/dev/null
    fi
    echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
"""

MARIADB_ENTRYPOINT = r"""#!/bin/sh
# Stand-in for the official mariadb image's docker-entrypoint.sh.
set -e
if [ "${1#-}" != "$1" ]; then set -- mariadbd "$@"; fi
if [ "$1" != mariadbd ] && [ "$1" != mysqld ]; then exec "$@"; fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p /var/lib/mysql /run/mysqld
    chown mysql:mysql /var/lib/mysql /run/mysqld
    exec /bin/su -p -s /bin/sh -c 'exec "$0" "$@"' -- mysql "$0" "$@"
fi
if [ ! -d /var/lib/mysql/mysql ]; then
    root_password=${MARIADB_ROOT_PASSWORD:-$MYSQL_ROOT_PASSWORD}
    database=${MARIADB_DATABASE:-$MYSQL_DATABASE}
    user=${MARIADB_USER:-$MYSQL_USER}
    password=${MARIADB_PASSWORD:-$MYSQL_PASSWORD}
    root_host=${MARIADB_ROOT_HOST:-%}
    if [ -z "$root_password" ] && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD$MYSQL_ALLOW_EMPTY_PASSWORD" ]; then
        echo "error: database is uninitialized and password option is not specified" >&2
        echo "  You need to specify one of MARIADB_ROOT_PASSWORD or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" >&2
        exit 1
    fi
    quote() { printf "'%s'" "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")"; }
    mariadb-install-db --datadir=/var/lib/mysql --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve --skip-log-bin >/dev/null
    {
        echo "FLUSH PRIVILEGES;"
        echo "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';"
        echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname, '\\'');"
        echo "SET PASSWORD FOR root@localhost = PASSWORD($(quote "$root_password"));"
        if [ "$root_host" != localhost ]; then
            echo "CREATE USER root@$(quote "$root_host") IDENTIFIED BY $(quote "$root_password");"
            echo "GRANT ALL ON *.* TO root@$(quote "$root_host") WITH GRANT OPTION;"
        fi
        if [ -n "$database" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`$database\`;"
        fi
        if [ -n "$user" ] && [ -n "$password" ]; then
            echo "CREATE USER $(quote "$user")@'%' IDENTIFIED BY $(quote "$password");"
            if [ -n "$database" ]; then
                echo "GRANT ALL ON \`$database\`.* TO $(quote "$user")@'%';"
            fi
        fi
    } | mariadbd --bootstrap --datadir=/var/lib/mysql --skip-networking --skip-log-bin \
        --log-warnings=0 >/dev/null
    echo "MariaDB init process done. Ready for start up."
fi
exec "$@"
"""

MARIADB_CONFIG = """# The official image's /etc/mysql/conf.d/docker.cnf, plus the paths it sets.
[client-server]
socket = /run/mysqld/mysqld.sock

[mariadbd]
datadir = /var/lib/mysql
skip-host-cache
skip-name-resolve
"""

REDIS_ENTRYPOINT = r"""#!/bin/sh
# Stand-in for the official redis image's docker-entrypoint.sh.
set -e
case "$1" in -* | *.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    chown -R redis:redis .
    exec /bin/su -p -s /bin/sh -c 'exec "$0" "$@"' -- redis "$0" "$@"
fi
exec "$@"
"""

# name -> (entry point, extra files, `docker import --change` settings)
STANDINS: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "postgres:15": (
        POSTGRES_ENTRYPOINT,
        {},
        (
            f"ENV PATH=/usr/lib/postgresql/15/bin:{BASE_PATH}",
            "ENV PG_MAJOR=15",
            "ENV PGDATA=/var/lib/postgresql/data",
            "ENV LANG=C.UTF-8",
            "VOLUME /var/lib/postgresql/data",
            "EXPOSE 5432",
            'CMD ["postgres"]',
        ),
    ),
    "mariadb:10.11": (
        MARIADB_ENTRYPOINT,
        {"etc/mysql/my.cnf": MARIADB_CONFIG},
        (f"ENV PATH={BASE_PATH}", "VOLUME /var/lib/mysql", "EXPOSE 3306", 'CMD ["mariadbd"]'),
    ),
    "redis:7": (
        REDIS_ENTRYPOINT,
        {},
        (
            f"ENV PATH={BASE_PATH}",
            "VOLUME /data",
            "WORKDIR /data",
            "EXPOSE 6379",
            'CMD ["redis-server"]',
        ),
    ),
}
IMAGES = tuple(STANDINS)


class DockerEnvError(RuntimeError):
    """Something the docker tests need could not be installed, started or built."""


def log(message: str) -> None:
    print(f"dockerenv: {message}", file=sys.stderr, flush=True)


# -- state ------------------------------------------------------------------------------


def own_socket() -> Path | None:
    """The socket of a daemon of our own, when DOCKER_HOST names a non-default unix socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host.startswith("unix://"):
        return None
    path = host.removeprefix("unix://")
    return None if path in (DEFAULT_SOCKET, "/run/docker.sock") else Path(path)


def state_dir() -> Path:
    socket = own_socket()
    folder = socket.parent if socket else Path(tempfile.gettempdir()) / "itsup-dockerenv"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pidfile() -> Path:
    """Holds the pid of the daemon `up` started; absent when it started none."""
    return state_dir() / "started-dockerd.pid"


def daemon_log() -> Path:
    return state_dir() / "dockerd.log"


def lease_dir() -> Path:
    folder = state_dir() / "leases"
    folder.mkdir(exist_ok=True)
    return folder


# -- running things ---------------------------------------------------------------------


def as_root(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo", "-n", *argv]
    raise DockerEnvError(f"{argv[0]} needs root, and there is no sudo")


def docker_answers(timeout: float = 20.0) -> bool:
    """True when `docker info` reaches a daemon."""
    if not shutil.which("docker"):
        return False
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


@functools.cache
def compose_command() -> list[str]:
    """`docker compose` (v2) when it works, else `docker-compose` (v1)."""
    if shutil.which("docker"):
        try:
            v2 = subprocess.run(
                ["docker", "compose", "version"], capture_output=True, timeout=30
            ).returncode
        except subprocess.TimeoutExpired:
            v2 = 1
        if v2 == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise DockerEnvError("neither `docker compose` nor `docker-compose` works: run dockerenv.py up")


# -- installing -------------------------------------------------------------------------


def is_static(path: str) -> bool:
    """True when the ELF file at `path` has no program interpreter (is statically linked)."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        fmt = "<" if header[5] == 1 else ">"
        phoff = struct.unpack_from(fmt + "Q", header, 32)[0]
        phentsize, phnum = struct.unpack_from(fmt + "HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(
        struct.unpack_from(fmt + "I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def busybox_path() -> str | None:
    """A statically linked busybox (a dynamic one would not run in a bare image)."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and os.path.exists(candidate) and is_static(candidate):
            return candidate
    return None


def missing_packages() -> list[str]:
    missing = [pkg for cmd, pkg in TOOLS.items() if not shutil.which(cmd)]
    if busybox_path() is None:
        missing.append("busybox-static")
    missing += [pkg for path, pkg in ENGINE_FILES.items() if not os.path.exists(path)]
    return sorted(set(missing))


def install_missing() -> None:
    missing = missing_packages()
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    quiet = ["env", "DEBIAN_FRONTEND=noninteractive"]  # through sudo too
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", *missing],
    ):
        done = subprocess.run(as_root([*quiet, *argv]), capture_output=True, text=True)
        if done.returncode != 0:
            raise DockerEnvError(f"{' '.join(argv[:2])} failed:\n{done.stdout}{done.stderr}")
    still = missing_packages()
    if still:
        raise DockerEnvError(f"still missing after apt-get install: {' '.join(still)}")


# -- the daemon -------------------------------------------------------------------------


def started_pid() -> int | None:
    """The pid of a daemon `up` started that is still running."""
    try:
        pid = int(pidfile().read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return None
    return pid if b"dockerd" in command else None  # not a process that reused the pid


def start_daemon(timeout: float = DAEMON_TIMEOUT) -> int:
    """Start dockerd in the background and wait until `docker info` answers; its pid."""
    argv = ["dockerd", *DAEMON_ARGS]
    socket = own_socket()
    if socket is not None:
        folder = socket.parent
        argv += [
            f"--host=unix://{socket}",
            f"--data-root={folder / 'data'}",
            f"--exec-root={folder / 'run'}",
            f"--pidfile={folder / 'dockerd.pid'}",
        ]
    log_path = daemon_log()
    log(f"starting {' '.join(argv)} (log: {log_path})")
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            as_root(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile().write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pidfile().unlink(missing_ok=True)
            raise DockerEnvError(
                f"dockerd exited with {process.returncode}; its log:\n{tail(log_path)}"
            )
        if docker_answers(timeout=5):
            return process.pid
        time.sleep(0.5)
    stop_pid(process.pid)
    pidfile().unlink(missing_ok=True)
    raise DockerEnvError(
        f"dockerd did not answer within {timeout:.0f} s; its log:\n{tail(log_path)}"
    )


def wait_answer(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_answers(timeout=5):
            return True
        time.sleep(0.5)
    return False


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # started through sudo
        subprocess.run(as_root(["kill", f"-{sig.name.removeprefix('SIG')}", str(pid)]))


def stop_pid(pid: int, grace: float = 20.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)  # our own child when started in-process
        except ChildProcessError:
            reaped = 0
        if reaped == pid or not pid_alive(pid):
            return
        time.sleep(0.2)
    log(f"dockerd {pid} still runs after {grace:.0f} s: SIGKILL")
    send(pid, signal.SIGKILL)


def caller() -> int:
    """The process a lease belongs to: the shell that runs `up`, the tests and `down`."""
    return os.getppid()


def take_lease() -> None:
    (lease_dir() / str(caller())).write_text(f"{Path(__file__).resolve().parent.parent}\n")


def drop_lease() -> list[int]:
    """Drop this caller's lease and stale ones; the pids of the leases still held."""
    (lease_dir() / str(caller())).unlink(missing_ok=True)
    held = []
    for lease in lease_dir().iterdir():
        try:
            pid = int(lease.name)
        except ValueError:
            continue
        if pid_alive(pid):
            held.append(pid)
        else:
            lease.unlink(missing_ok=True)
    return held


# -- images -----------------------------------------------------------------------------


def _add(
    tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.linkname = link
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def rootfs(entrypoint: str, files: dict[str, str], busybox: bytes) -> bytes:
    """The image's root file system as a tar: busybox, its applets, the entry point."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for folder, mode in (
            ("bin", 0o755),
            ("etc", 0o755),
            ("run", 0o755),
            ("tmp", 0o1777),
            ("var", 0o755),
            ("var/lib", 0o755),
        ):
            _add(tar, folder, tarfile.DIRTYPE, mode)
        _add(tar, "bin/busybox", tarfile.REGTYPE, 0o755, busybox)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        _add(tar, "var/run", tarfile.SYMTYPE, 0o777, link="../run")
        # Replaced by the host's files when mounted (SYSTEM_MOUNTS); enough for root alone.
        _add(tar, "etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tar, "etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n")
        for name, text in sorted(files.items()):
            parent = os.path.dirname(name)
            if parent != "etc":
                _add(tar, parent, tarfile.DIRTYPE, 0o755)
            _add(tar, name, tarfile.REGTYPE, 0o644, text.encode())
        _add(tar, "docker-entrypoint.sh", tarfile.REGTYPE, 0o755, entrypoint.encode())
    return buffer.getvalue()


def content_hash(name: str, busybox: bytes) -> str:
    entrypoint, files, changes = STANDINS[name]
    spec = json.dumps([name, APPLETS, entrypoint, files, changes], sort_keys=True)
    return hashlib.sha256(hashlib.sha256(busybox).digest() + spec.encode()).hexdigest()[:20]


def image_label(name: str) -> str | None:
    """The stand-in label of the image called `name`, "" for another image, None if absent."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", name],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout.strip() or "null") or {}
    return str(labels.get(LABEL, ""))


def stale_images() -> list[str]:
    """The stand-in images that are missing or not the current build."""
    path = busybox_path()
    if path is None:
        return list(IMAGES)
    busybox = Path(path).read_bytes()
    return [name for name in IMAGES if image_label(name) != content_hash(name, busybox)]


def build_images() -> list[str]:
    """Build the stand-in images that are missing or out of date; the names built."""
    path = busybox_path()
    if path is None:
        raise DockerEnvError("no statically linked busybox: run dockerenv.py up")
    busybox = Path(path).read_bytes()
    built = []
    for name in stale_images():
        entrypoint, files, changes = STANDINS[name]
        digest = content_hash(name, busybox)
        label = image_label(name)
        if label == "":
            log(f"replacing the image {name}: not a stand-in")
        previous = image_id(name) if label else ""
        argv = ["docker", "import"]
        for change in (
            *changes,
            f"LABEL {LABEL}={digest}",
            'ENTRYPOINT ["/docker-entrypoint.sh"]',
        ):
            argv += ["--change", change]
        argv += ["-", name]
        done = subprocess.run(argv, input=rootfs(entrypoint, files, busybox), capture_output=True)
        if done.returncode != 0:
            raise DockerEnvError(
                f"docker import {name} failed: {done.stderr.decode(errors='replace')}"
            )
        built.append(name)
        if previous:  # an older stand-in, now untagged (kept while a container uses it)
            subprocess.run(["docker", "image", "rm", previous], capture_output=True)
    return built


def image_id(name: str) -> str:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else ""


# -- commands ---------------------------------------------------------------------------


def up() -> None:
    """Everything the docker tests need, ready: packages, a daemon that answers, the images."""
    install_missing()
    take_lease()
    with open(state_dir() / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one `up` at a time starts the daemon, builds
        if not docker_answers():
            pid = started_pid()
            if pid is None:
                start_daemon()
            elif not wait_answer(DAEMON_TIMEOUT):  # started by another `up`, still starting
                raise DockerEnvError(
                    f"the dockerd started earlier (pid {pid}) does not answer; "
                    f"its log:\n{tail(daemon_log())}"
                )
        compose = compose_command()
        started = time.monotonic()
        built = build_images()
    if built:
        log(f"built {', '.join(built)} in {time.monotonic() - started:.1f} s")
    log(f"ready: {' '.join(compose)}, images {', '.join(IMAGES)}")


def down() -> None:
    """Stop the daemon `up` started, once no other caller of `up` holds it."""
    held = drop_lease()
    pid = started_pid()
    if pid is None:
        pidfile().unlink(missing_ok=True)
        return
    if held:
        log(f"leaving dockerd {pid} running: still used by {', '.join(map(str, held))}")
        return
    log(f"stopping dockerd {pid}")
    stop_pid(pid)
    pidfile().unlink(missing_ok=True)


def images() -> None:
    """Build the stand-in images that are missing or out of date, on a daemon that answers."""
    if not docker_answers():
        raise DockerEnvError("the Docker daemon does not answer `docker info`: run dockerenv.py up")
    built = build_images()
    log(f"built {', '.join(built)}" if built else f"up to date: {', '.join(IMAGES)}")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "images": images}
    if len(argv) != 1 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[0]]()
    except DockerEnvError as e:
        log(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
