"""The retention policy (itsup/retention.py): restic's `forget --keep-*` rules,
table-driven, plus the configuration that feeds it (`backup.retention`)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itsup.config import load_config
from itsup.errors import ConfigError
from itsup.generation import generation_name
from itsup.layout import Layout
from itsup.retention import PERIODS, Policy, apply_policy, local_time, time_zone

AMS = ZoneInfo("Europe/Amsterdam")
NYC = ZoneInfo("America/New_York")


def at(text: str, tz: ZoneInfo | None = None) -> datetime:
    """`2026-01-15 03:00` as an aware time: UTC, or wall-clock time in `tz`."""
    naive = datetime.strptime(text, "%Y-%m-%d %H:%M")
    return naive.replace(tzinfo=tz or UTC).astimezone(UTC)


def ats(*texts: str) -> list[datetime]:
    return [at(text) for text in texts]


def pairs(*times: datetime) -> list[tuple[str, datetime]]:
    return [(generation_name(t), t) for t in times]


@dataclass
class Case:
    id: str
    times: list[datetime]
    policy: Policy
    kept: dict[datetime, tuple[str, ...]]  # time -> reasons; every other time is removed
    tz: ZoneInfo | None = UTC
    now: datetime | None = None
    extra: dict[str, object] = field(default_factory=dict)


def sundays() -> list[datetime]:
    start = at("2019-09-01 11:00")
    return [start + timedelta(weeks=n) for n in range(12)]


def daily(first: str, last: str, hour: str = "03:00") -> list[datetime]:
    day, end = at(f"{first} {hour}"), at(f"{last} {hour}")
    out = []
    while day <= end:
        out.append(day)
        day += timedelta(days=1)
    return out


# Same instants, three wall clocks: A, B, C, D (see test_time_zones_bucket_differently).
A, B, C, D = (
    at("2026-01-15 20:00"),
    at("2026-01-15 23:30"),
    at("2026-01-16 04:00"),
    at("2026-01-16 12:00"),
)

CASES = [
    # restic's documentation: a backup every Sunday for 12 weeks, --keep-daily 4
    # keeps the last four Sundays.
    Case(
        "restic-docs-sundays",
        sundays(),
        Policy(keep_daily=4),
        {t: ("daily",) for t in sundays()[-4:]},
    ),
    Case(
        "keep-last",
        daily("2026-01-01", "2026-01-05"),
        Policy(keep_last=3),
        {t: ("last",) for t in daily("2026-01-03", "2026-01-05")},
    ),
    # A day without a backup is not a period: the 4 most recent days THAT HOLD one.
    Case(
        "gap-days-do-not-count",
        [at(f"2026-01-0{d} 03:00") for d in (1, 2, 3, 5, 6)],
        Policy(keep_daily=4),
        {at(f"2026-01-0{d} 03:00"): ("daily",) for d in (2, 3, 5, 6)},
    ),
    Case(
        "gap-weeks-do-not-count",
        [at("2026-03-02 03:00"), at("2026-02-02 03:00"), at("2026-01-05 03:00")],
        Policy(keep_weekly=2),
        {at("2026-03-02 03:00"): ("weekly",), at("2026-02-02 03:00"): ("weekly",)},
    ),
    # Several generations in one bucket: the newest of each wins.
    Case(
        "newest-in-bucket-wins",
        [
            at("2026-01-02 01:00"),
            at("2026-01-02 12:00"),
            at("2026-01-02 23:00"),
            at("2026-01-01 10:00"),
            at("2026-01-01 20:00"),
        ],
        Policy(keep_daily=2),
        {at("2026-01-02 23:00"): ("daily",), at("2026-01-01 20:00"): ("daily",)},
    ),
    # A count not used up at the oldest generation keeps it too (restic 0.17+).
    Case(
        "oldest-kept-while-counts-left",
        [at("2026-01-02 12:00"), at("2026-01-01 20:00"), at("2026-01-01 10:00")],
        Policy(keep_daily=5),
        {
            at("2026-01-02 12:00"): ("daily",),
            at("2026-01-01 20:00"): ("daily",),
            at("2026-01-01 10:00"): ("oldest daily",),
        },
    ),
    Case(
        "unlimited-monthly",
        ats(
            "2026-03-20 03:00",
            "2026-03-01 03:00",
            "2026-02-10 03:00",
            "2026-01-31 03:00",
            "2026-01-02 03:00",
        ),
        Policy(keep_monthly=-1),
        {
            at("2026-03-20 03:00"): ("monthly",),
            at("2026-02-10 03:00"): ("monthly",),
            at("2026-01-31 03:00"): ("monthly",),
            at("2026-01-02 03:00"): ("oldest monthly",),
        },
    ),
    # ISO weeks: 2020-12-31 (Thu) and 2021-01-01 (Fri) are both in 2020-W53;
    # 2021-01-04 opens 2021-W01, 2020-12-27 (Sun) closes 2020-W52. Years are
    # calendar years.
    Case(
        "iso-week-53",
        ats("2020-12-27 12:00", "2020-12-31 12:00", "2021-01-01 12:00", "2021-01-04 12:00"),
        Policy(keep_weekly=3, keep_yearly=2),
        {
            at("2021-01-04 12:00"): ("weekly", "yearly"),
            at("2021-01-01 12:00"): ("weekly",),
            at("2020-12-31 12:00"): ("yearly",),
            at("2020-12-27 12:00"): ("weekly",),
        },
    ),
    Case(
        "iso-week-53-two-weeks",
        ats("2020-12-27 12:00", "2020-12-31 12:00", "2021-01-01 12:00", "2021-01-04 12:00"),
        Policy(keep_weekly=2),
        {at("2021-01-04 12:00"): ("weekly",), at("2021-01-01 12:00"): ("weekly",)},
    ),
    # keep_within counts back from the newest generation, not from now; a generation
    # exactly on the boundary is not kept (restic: strictly newer).
    Case(
        "within-from-newest",
        ats("2026-01-10 12:00", "2026-01-08 13:00", "2026-01-08 12:00", "2026-01-01 12:00"),
        Policy(keep_within=2 * 86400),
        {at("2026-01-10 12:00"): ("within",), at("2026-01-08 13:00"): ("within",)},
    ),
    # A generation from the future (a clock set wrong) is kept, and the newest one
    # not in the future is what keep_within counts from.
    Case(
        "within-ignores-the-future",
        ats("2026-01-10 12:00", "2026-01-08 12:00", "2026-01-07 13:00", "2026-01-05 12:00"),
        Policy(keep_within=86400),
        {
            at("2026-01-10 12:00"): ("within",),
            at("2026-01-08 12:00"): ("within",),
            at("2026-01-07 13:00"): ("within",),
        },
        now=at("2026-01-09 00:00"),
    ),
    # Rules are independent; each one that keeps a generation is listed.
    Case(
        "combined-daily-backups",
        daily("2025-01-01", "2026-01-15"),
        Policy(keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=3, keep_yearly=2),
        {
            at("2026-01-15 03:00"): ("last", "daily", "weekly", "monthly", "yearly"),
            at("2026-01-14 03:00"): ("last", "daily"),
            **{t: ("daily",) for t in daily("2026-01-12", "2026-01-13")},
            at("2026-01-11 03:00"): ("daily", "weekly"),
            **{t: ("daily",) for t in daily("2026-01-09", "2026-01-10")},
            at("2026-01-04 03:00"): ("weekly",),
            at("2025-12-31 03:00"): ("monthly", "yearly"),
            at("2025-12-28 03:00"): ("weekly",),
            at("2025-11-30 03:00"): ("monthly",),
        },
    ),
    Case(
        "within-and-counts",
        daily("2026-01-01", "2026-01-10"),
        Policy(keep_last=1, keep_within=3 * 86400 + 1),
        {
            at("2026-01-10 03:00"): ("within", "last"),
            **{t: ("within",) for t in daily("2026-01-07", "2026-01-09")},
        },
    ),
    Case(
        "hourly",
        ats(
            "2026-01-01 10:05",
            "2026-01-01 10:55",
            "2026-01-01 11:00",
            "2026-01-01 13:59",
            "2026-01-01 09:00",
        ),
        Policy(keep_hourly=3),
        {
            at("2026-01-01 13:59"): ("hourly",),
            at("2026-01-01 11:00"): ("hourly",),
            at("2026-01-01 10:55"): ("hourly",),
        },
    ),
    Case(
        "empty-policy-keeps-everything",
        daily("2026-01-01", "2026-01-03"),
        Policy(),
        {t: ("policy is empty",) for t in daily("2026-01-01", "2026-01-03")},
    ),
    Case("no-generations", [], Policy(keep_daily=3), {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy(case: Case) -> None:
    shuffled = pairs(*case.times)
    random.Random(case.id).shuffle(shuffled)  # input order does not matter
    decisions = apply_policy(shuffled, case.policy, case.tz, case.now)
    assert [d.time for d in decisions] == sorted(case.times, reverse=True)
    got = {d.time: d.reasons for d in decisions if d.keep}
    assert got == case.kept
    assert all(d.name == generation_name(d.time) for d in decisions)


def kept_times(times: list[datetime], policy: Policy, tz: ZoneInfo | None) -> set[datetime]:
    return {d.time for d in apply_policy(pairs(*times), policy, tz) if d.keep}


def test_time_zones_bucket_differently() -> None:
    """The same four instants, keep_daily 2: each wall clock has its own days.

    UTC:       A 20:00, B 23:30 on the 15th; C 04:00, D 12:00 on the 16th.
    Amsterdam: A 21:00 on the 15th; B 00:30, C 05:00, D 13:00 on the 16th.
    New York:  A 15:00, B 18:30, C 23:00 on the 15th; D 07:00 on the 16th.
    """
    policy = Policy(keep_daily=2)
    assert kept_times([A, B, C, D], policy, UTC) == {D, B}
    assert kept_times([A, B, C, D], policy, AMS) == {D, A}
    assert kept_times([A, B, C, D], policy, NYC) == {D, C}


def test_dst_days_of_25_and_23_hours() -> None:
    """Amsterdam's 2026-10-25 has 25 hours and 2026-03-29 has 23: 00:30 and 23:30
    local on each are one day there, two days in UTC."""
    for day, before in (("2026-10-25", "2026-10-24"), ("2026-03-29", "2026-03-28")):
        early, late = at(f"{day} 00:30", AMS), at(f"{day} 23:30", AMS)
        previous = at(f"{before} 12:00", AMS)
        assert early.date() != late.date()  # in UTC they are two days
        times = [previous, early, late]
        assert kept_times(times, Policy(keep_daily=2), AMS) == {late, previous}
        assert kept_times(times, Policy(keep_daily=2), UTC) == {late, early}
        assert late - early == timedelta(hours=24 if day.endswith("25") else 22)


def test_dst_repeated_hour_is_one_bucket() -> None:
    """02:00-03:00 happens twice on 2026-10-25 in Amsterdam: both are hour 02 on the
    wall clock, so one hourly bucket (restic's hour of the local time)."""
    first, second, after = at("2026-10-25 00:30"), at("2026-10-25 01:30"), at("2026-10-25 02:30")
    assert local_time(first, AMS).hour == local_time(second, AMS).hour == 2
    decisions = apply_policy(pairs(first, second, after), Policy(keep_hourly=3), AMS)
    assert [d.reasons for d in decisions] == [("hourly",), ("hourly",), ("oldest hourly",)]
    decisions = apply_policy(pairs(first, second, after), Policy(keep_hourly=3), UTC)
    assert [d.reasons for d in decisions] == [("hourly",)] * 3


def test_local_time_zone_follows_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    """`timezone: local` is this machine's zone, DST included (TZ is honoured)."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert time_zone("local") is None
        assert kept_times([A, B, C, D], Policy(keep_daily=2), None) == {D, C}
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_thousands_of_generations_stay_linear_enough() -> None:
    """Hourly backups for a year: the plan is one sort and one pass."""
    start = at("2025-01-01 00:00")
    times = [start + timedelta(hours=n) for n in range(24 * 365)]
    decisions = apply_policy(
        pairs(*times), Policy(keep_hourly=24, keep_daily=7, keep_weekly=4, keep_monthly=12), UTC
    )
    kept = [d for d in decisions if d.keep]
    # 24 hours (all on the newest day), 6 more days, 2 more weeks (the newest two
    # are inside the days), 11 more months; every count is used up before the oldest.
    assert len(decisions) == 24 * 365
    assert len(kept) == 24 + 6 + 2 + 11


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 3 * 365 * 24 * 60), min_size=1, max_size=60, unique=True),
    count=st.integers(1, 8),
    rule=st.sampled_from([name for name, _ in PERIODS]),
    zone=st.sampled_from(["UTC", "Europe/Amsterdam", "America/New_York"]),
)
def test_each_period_rule_matches_its_definition(
    offsets: list[int], count: int, rule: str, zone: str
) -> None:
    tz = ZoneInfo(zone)
    start = at("2019-06-01 00:00")
    times = [start + timedelta(minutes=m) for m in offsets]
    key = dict(PERIODS)[rule]
    got = kept_times(times, Policy(**{f"keep_{rule}": count}), tz)  # type: ignore[arg-type]
    want = reference_rule(times, count, lambda t: key(t.astimezone(tz)))
    assert got == want


def reference_rule(times: list[datetime], count: int, key: object) -> set[datetime]:
    buckets: dict[object, list[datetime]] = {}
    for t in times:
        buckets.setdefault(key(t), []).append(t)  # type: ignore[operator]
    recent = sorted(buckets, key=lambda k: max(buckets[k]), reverse=True)[:count]
    kept = {max(buckets[k]) for k in recent}
    if len(kept) < count:  # the count is not used up by the time the oldest comes
        kept.add(min(times))
    return kept


# -- backup.retention in itsup.yml --------------------------------------------------------


def load(tmp_path: Path, retention: str) -> object:
    (tmp_path / "projects").mkdir(exist_ok=True)
    (tmp_path / "projects" / "itsup.yml").write_text(f"backup:\n  retention:{retention}\n")
    return load_config(Layout(tmp_path), environ={}, secrets={}).backup.retention


def test_config_reads_a_policy(tmp_path: Path) -> None:
    retention = load(
        tmp_path,
        "\n    keep_last: 7\n    keep_daily: unlimited\n    keep_within: 2d\n"
        "    timezone: Europe/Amsterdam\n    prune_after_backup: true\n",
    )
    assert retention is not None
    assert retention.rules == Policy(keep_last=7, keep_daily=-1, keep_within=2 * 86400)  # type: ignore[attr-defined]
    assert retention.prune_after_backup  # type: ignore[attr-defined]
    assert time_zone(retention.timezone) == AMS  # type: ignore[attr-defined]


def test_no_retention_section_is_no_policy(tmp_path: Path) -> None:
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / "itsup.yml").write_text("backup: {}\n")
    assert load_config(Layout(tmp_path), environ={}, secrets={}).backup.retention is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "backup.retention: keeps nothing"),
        (" {}", "backup.retention: keeps nothing"),
        ("\n    keep_daily: 0\n    keep_last: 0\n", "backup.retention: keeps nothing"),
        ("\n    prune_after_backup: true\n", "backup.retention: keeps nothing"),
        ("\n    keep_daily: -2\n", "backup.retention.keep_daily: must be 0 or more, or unlimited"),
        ("\n    keep_daily: lots\n", "backup.retention.keep_daily:"),
        ("\n    keep_within: 0\n", "backup.retention.keep_within:"),
        ("\n    keep_daily: 1\n    timezone: Europe/Amsterdm\n", "did you mean 'Europe/Amsterdam'"),
        ("\n    keep_dayly: 1\n", "did you mean 'keep_daily'"),
    ],
)
def test_config_refuses(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in caught.value.message
    assert re.search(r"projects/itsup\.yml:\d+: backup\.retention", caught.value.message)
