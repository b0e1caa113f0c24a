"""`itsup backup list`: the generations on a target, newest first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsup.generation import Generation, location, scan
from itsup.host import Host


@dataclass
class GenerationRow:
    name: str
    time: str
    status: str  # "complete" | "partial" | "incomplete" | "damaged"
    archive_bytes: int | None
    source_bytes: int | None
    files: int | None
    encrypted: bool | None
    duration_seconds: float | None
    problem: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe(gen: Generation) -> GenerationRow:
    m = gen.manifest
    archive = next((o for s, o in gen.objects.items() if s.startswith("tar")), None)
    if m is None:
        status = "damaged" if gen.problem else "incomplete"
        return GenerationRow(
            gen.name,
            gen.time.isoformat(),
            status,
            archive.size if archive else None,
            None,
            None,
            None,
            None,
            gen.problem or "no manifest: the run did not finish",
        )
    return GenerationRow(
        gen.name,
        gen.time.isoformat(),
        "partial" if m.partial else "complete",
        m.archive.size,
        m.source_bytes,
        m.files,
        m.encrypted,
        m.duration_seconds,
        None,
    )


def list_generations(
    host: Host, target_choice: str | None = None
) -> tuple[str, list[GenerationRow]]:
    """The generations on the chosen target (without one: the first that answers)."""
    _name, target, prefix, found = host.first_answering(target_choice, scan)
    return location(target, prefix), [describe(g) for g in found]
