"""Step 4 of loading a YAML config (itsup.yml, a project's backup.yml): pydantic's
validation errors told as `FILE:LINE: key.path: message`, one per problem.

Unknown keys get the closest known one (`did you mean`) or the list of known
keys at that place; values that came from secrets print as `***`; long keys
and messages are cut so that one problem stays one line.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, Tag, ValidationError

from itsup.yamldoc import KeyPath, clip, dotted

Path_ = KeyPath
# Longest message shown in a problem line; longer ones are cut.
MAX_MESSAGE_SHOWN = 300
# A message for an unknown key at a special place (raw pydantic location, key path), or None.
Special = Callable[[tuple[Any, ...], Path_], str | None]


def edit_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (optimal string alignment) of a and b; `limit + 1`
    as soon as it is known to be larger than `limit` (a 1 MB key costs nothing)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        before, row = row, current
    return min(row[-1], limit + 1)


def _describe(error: Any, loc: Path_, model: type[BaseModel], special: Special | None) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        raw = tuple(error["loc"])
        told = special(raw, loc) if special is not None else None
        if told is not None:
            return told
        known = _known_keys(model, raw[:-1])
        close = difflib.get_close_matches(str(loc[-1]).lower(), known, n=1)
        if close:
            return f"unknown key (did you mean '{close[0]}'?)"
        return "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    return message[0].lower() + message[1:]


def _models_in(annotation: Any, tag: str | None = None) -> dict[str, type[BaseModel]]:
    """The models a field's type holds, by their union tag (else by class name)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {tag or annotation.__name__: annotation}
    if get_origin(annotation) is Annotated:
        inner, *meta = get_args(annotation)
        tags = [m.tag for m in meta if isinstance(m, Tag)]
        return _models_in(inner, tags[0] if tags else tag)
    return {t: m for arg in get_args(annotation) for t, m in _models_in(arg).items()}


def _is_mapping(annotation: Any) -> bool:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return get_origin(annotation) is dict


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the model at pydantic's location `loc` takes (tags and mapping keys skipped)."""
    current = model
    choices: dict[str, type[BaseModel]] = {}
    mapping = False
    for part in loc:
        if isinstance(part, int):
            continue
        if mapping:  # a key of a mapping of models (a target's name)
            mapping = False
            continue
        if part in choices:  # a union's tag
            current, choices = choices[part], {}
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        choices = _models_in(field.annotation)
        if not choices:
            return []
        mapping = _is_mapping(field.annotation)
        current = next(iter(choices.values()))
    return sorted(current.model_fields)


def _locate(loc: tuple[Any, ...], data: Any, missing: bool) -> Path_:
    """The key path an error is about, in the operator's document.

    pydantic's locations also hold union member tags and markers such as
    '[key]'; keep only the steps that exist in the document (and, for a
    missing key, the key itself).
    """
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            out.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif missing and i == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return tuple(out)


def report_problems(
    exc: ValidationError,
    data: Any,
    source: str,
    lines: dict[Path_, int],
    skip: set[Path_] | None = None,
    hidden: set[str] | None = None,
    *,
    model: type[BaseModel],
    special: Special | None = None,
) -> list[tuple[int, str]]:
    """One `(line, "FILE:LINE: key.path: message")` per problem pydantic found in
    `data` (validated against `model`); values in `hidden` print as `***`."""
    problems: dict[Path_, str] = {}
    for error in exc.errors():
        # An error may point below its field (`below`): a target name given twice.
        below = tuple((error.get("ctx") or {}).get("below", ()))
        loc = _locate(tuple(error["loc"]) + below, data, error["type"] == "missing")
        if any(loc[: len(s)] == s for s in skip or ()):
            continue  # already reported (an undefined placeholder)
        if loc not in problems:
            problems[loc] = _describe(error, loc, model, special)
    out = []
    for loc, text in problems.items():
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        where = f"{source}:{line}" if line else source
        key = dotted(loc) or "(top level)"
        shown = clip(_hide(text, hidden or set()), MAX_MESSAGE_SHOWN)
        out.append((line or 0, f"{where}: {key}: {shown}"))
    return out


def _hide(text: str, secrets: set[str]) -> str:
    """Replace secret values in a message by `***` (longest first)."""
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "***")
    return text
