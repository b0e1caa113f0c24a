"""`itsup backup plan`: what the next backup dumps, from where, with which commands.

Nothing is run against the engines: the plan is read from each project's
backup.yml, or discovered in its compose file, with credentials resolved
(and shown only as where they come from) and commands printed with secrets
as `***`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from itsup.dumps.plan import ProjectPlan, plan_dumps
from itsup.host import Host


@dataclass
class PlannedDump:
    adapter: str
    name: str  # the service, path, or host:port
    where: str  # "container" | "host" | "file"
    credentials: list[str]
    commands: list[str]


@dataclass
class PlannedProject:
    project: str
    source: str
    dumped: bool
    dumps: list[PlannedDump] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def describe_plan(host: Host) -> list[PlannedProject]:
    cfg = host.config.backup
    plans = plan_dumps(
        host.layout, host.secrets, cfg.databases, cfg.dump_idle_timeout, explain=True
    )
    return [_describe(plan) for plan in plans if plan.jobs or plan.notes or plan.stop]


def _describe(plan: ProjectPlan) -> PlannedProject:
    dumped = not plan.source.startswith("discovered (")
    out = PlannedProject(plan.project, plan.source, dumped, stop=list(plan.stop))
    shown = [p for p in plan.excludes if not p.endswith(("-wal", "-shm", "-journal"))]
    out.excluded = shown if dumped else []
    out.notes = list(plan.notes)
    for job in plan.jobs:
        engine = job.engine
        where = (
            "file"
            if job.adapter == "sqlite"
            else ("container" if engine.client.in_container else "host")
        )
        commands = [engine.client.shown(step.command) for step in engine.plan()]
        if job.adapter == "sqlite":
            commands = [f"SQLite online backup of upstream/{plan.project}/{engine.db.path}"]
        out.dumps.append(PlannedDump(job.adapter, job.label, where, job.credentials, commands))
    return out
