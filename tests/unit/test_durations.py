"""Durations as operators write them (`--older-than 90d`, `--max-age 48h`)."""

from __future__ import annotations

import pytest

from itsup.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("90m", 5400), ("48h", 172800), ("7d", 604800), ("2w", 1209600),
     ("1d12h", 129600), (" 1D 2H ", 93600)],
)  # fmt: skip
def test_parses_what_operators_write(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10", "10x", "1d garbage", "-5d", "1.5h"])
def test_refuses_anything_else_with_a_readable_message(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_formats_back_compactly() -> None:
    assert [format_duration(s) for s in (45, 150, 3 * 3600 + 120, 3 * 86400 + 7200)] == [
        "45s", "2m 30s", "3h 2m", "3d 2h",
    ]  # fmt: skip
