"""Which generations a retention policy keeps: restic's `forget --keep-*` rules.

A pure function of (name, time) pairs: no storage, no manifests, no clock
unless one is given. The generations are taken newest first, and:

- `within`: every generation whose time is after (strictly) the newest
  generation's time minus the duration;
- `last N`: the N newest;
- `hourly`/`daily`/`weekly`/`monthly`/`yearly N`: a generation whose hour,
  day, ISO week (ISO year and week number), month or year, in the policy's
  time zone, differs from that of the generation kept before it by the same
  rule, until N have been kept: so the newest generation of each of the N
  most recent periods that hold one (an empty period counts for nothing);
- a rule whose count is not used up when it reaches the oldest generation
  keeps that one as well, as `oldest RULE` when its period already had its
  generation (restic 0.17 and later: the longest history the counts allow).

The rules are independent: a generation kept by several lists each of them.
A count of -1 is restic's `unlimited` (every period). The `within` reference
is the newest generation not later than `now` when `now` is given (restic
ignores generations from the future: a clock set wrong).

Sorting is the only step above linear: O(n log n) for n generations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from pydantic import BaseModel, ConfigDict, Field

UNLIMITED = -1
# The period rules, newest-first bucketing keys in local time, in restic's order.
PERIODS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
)
RULES = ("within", "last", *(name for name, _ in PERIODS))
EMPTY = "policy is empty"


class Policy(BaseModel):
    """Counts per rule (0: not used, -1: unlimited) and `keep_within` in seconds.

    The one definition of the rules: `backup.retention` in itsup.yml
    (`config.RetentionConfig`) is this model with the configuration's own
    parsing (`unlimited`, `2d`) and settings (time zone, prune after backup)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    # Everything newer than the newest generation minus this is kept.
    keep_within: int | None = Field(default=None, ge=1)

    def empty(self) -> bool:
        """Whether the policy keeps nothing at all (restic refuses to apply one)."""
        return not any(self.count(rule) for rule in RULES[1:]) and not self.keep_within

    def count(self, rule: str) -> int:
        return int(getattr(self, f"keep_{rule}"))

    @property
    def rules(self) -> Policy:
        """The rules alone, without what a subclass adds (configuration settings)."""
        return Policy(**{name: getattr(self, name) for name in Policy.model_fields})


@dataclass(frozen=True)
class Decision:
    """One generation and the rules that keep it (none: it goes)."""

    name: str
    time: datetime
    reasons: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def local_time(when: datetime, tz: tzinfo | None) -> datetime:
    """`when` on the wall clock of `tz`; None is this machine's local time (TZ, DST)."""
    return when.astimezone(tz) if tz is not None else when.astimezone()


def apply_policy(
    generations: Iterable[tuple[str, datetime]],
    policy: Policy,
    tz: tzinfo | None = None,
    now: datetime | None = None,
) -> list[Decision]:
    """Each generation, newest first, with the rules that keep it.

    `generations` are (name, aware time) pairs of complete generations only.
    An empty policy keeps everything ("policy is empty"), as restic does; the
    configuration refuses one before it gets here.
    """
    ordered = sorted(generations, key=lambda pair: pair[1], reverse=True)
    if policy.empty():
        return [Decision(name, when, (EMPTY,)) for name, when in ordered]
    cutoff = _within_cutoff(ordered, policy.keep_within, now)
    left = {name: policy.count(name) for name in ("last", *(p for p, _ in PERIODS))}
    previous: dict[str, object] = {}
    oldest = len(ordered) - 1
    decisions = []
    for nr, (name, when) in enumerate(ordered):
        reasons = []
        if cutoff is not None and when > cutoff:
            reasons.append("within")
        wall = local_time(when, tz)
        keys: list[tuple[str, object]] = [("last", nr)]
        keys += [(rule, key(wall)) for rule, key in PERIODS]
        for rule, value in keys:
            if left[rule] == 0:
                continue
            if value != previous.get(rule) or nr == oldest:
                # kept only for being the oldest: restic says so ("oldest daily")
                reasons.append(rule if value != previous.get(rule) else f"oldest {rule}")
                previous[rule] = value
                if left[rule] > 0:
                    left[rule] -= 1
        decisions.append(Decision(name, when, tuple(reasons)))
    return decisions


def _within_cutoff(
    ordered: list[tuple[str, datetime]], within: float | None, now: datetime | None
) -> datetime | None:
    """The time a generation must be after to be kept by `within`; None: no such rule."""
    if not within:
        return None
    newest = next((when for _, when in ordered if now is None or when < now), None)
    if newest is None:  # every generation is from the future: restic keeps them all
        return datetime.min.replace(tzinfo=ordered[0][1].tzinfo) if ordered else None
    return newest - timedelta(seconds=within)


LOCAL = "local"


def time_zone(name: str) -> tzinfo | None:
    """The zone `name` (an IANA name such as Europe/Amsterdam), or None for `local`.

    ValueError naming the closest known zone when there is no such zone.
    """
    if name == LOCAL:
        return None
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        import difflib

        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"'{name}' is not a time zone: give `local` or an IANA name such as "
            f"Europe/Amsterdam{hint}"
        ) from None
