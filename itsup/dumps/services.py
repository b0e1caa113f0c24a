"""Services stopped while their files are copied, and always started again.

`backup.yml`'s `stop:` lists services (a worker writing files, say) whose
files are only consistent while they are stopped. A service that was not
running before the run is left alone, and stays stopped after it.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from itsup.dumps.plan import ProjectPlan

log = logging.getLogger("itsup.backup")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def running(compose: list[str], folder: Path, service: str) -> bool:
    """Whether the service has a running container (compose v1 and v2 alike)."""
    ids = _run([*compose, "ps", "-q", service], folder).stdout.split()
    if not ids:
        return False
    states = _run(["docker", "inspect", "-f", "{{.State.Running}}", *ids], folder).stdout
    return "true" in states.split()


class StoppedServices:
    """Stop the `stop:` services on enter; `start_again` (idempotent) on the way out."""

    def __init__(self, plans: list[ProjectPlan]) -> None:
        self.wanted = [(p, s) for p in plans for s in p.stop if p.compose]
        self.stopped: list[tuple[ProjectPlan, str]] = []
        self.problems: list[str] = []

    def __enter__(self) -> StoppedServices:
        try:
            self._stop_all()
        except BaseException:  # SIGTERM while stopping: __exit__ would not run
            self.start_again()
            raise
        return self

    def _stop_all(self) -> None:
        for plan, service in self.wanted:
            assert plan.compose is not None
            if not running(plan.compose, plan.folder, service):
                log.info("%s/%s is not running: left as it is", plan.project, service)
                continue
            self.stopped.append((plan, service))
            done = _run([*plan.compose, "stop", service], plan.folder)
            if done.returncode != 0:
                self.problems.append(
                    f"{plan.project}/{service}: could not stop it: {done.stderr.strip()[-300:]}"
                )
            else:
                log.info("stopped %s/%s while its files are copied", plan.project, service)

    def start_again(self) -> None:
        while self.stopped:
            plan, service = self.stopped.pop()
            assert plan.compose is not None
            done = _run([*plan.compose, "start", service], plan.folder)
            if done.returncode != 0:
                message = f"{plan.project}/{service}: could not start it again: {done.stderr.strip()[-300:]}"
                log.error("%s", message)
                self.problems.append(message)
            else:
                log.info("started %s/%s again", plan.project, service)

    def __exit__(self, *exc: object) -> None:
        self.start_again()
