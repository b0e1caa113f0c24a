"""Durations as operators write them: 30s, 90m, 48h, 7d, 2w (and combinations like 1d12h)."""

from __future__ import annotations

import re

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(text: str) -> int:
    """Seconds in `text`; ValueError with a readable message when it is not a duration."""
    cleaned = text.strip().lower()
    pos = 0
    total = 0
    for m in _PART.finditer(cleaned):
        if cleaned[pos : m.start()].strip():
            break
        total += int(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
    if not cleaned or pos == 0 or cleaned[pos:].strip():
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 90m, 48h, 7d, 2w)")
    return total


def format_duration(seconds: float) -> str:
    """A short human form: 45s, 12m, 5h 3m, 3d 4h."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m" + (f" {s % 60}s" if s % 60 and s < 600 else "")
    if s < 86400:
        return f"{s // 3600}h" + (f" {s % 3600 // 60}m" if s % 3600 // 60 else "")
    return f"{s // 86400}d" + (f" {s % 86400 // 3600}h" if s % 86400 // 3600 else "")
