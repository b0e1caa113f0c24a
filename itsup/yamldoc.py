"""YAML as itsup.yml needs it: safe, bounded, and with the line of every key.

`parse_yaml` returns the document and a map from key paths to line numbers,
so that every problem can be reported as `FILE:LINE: key.path: message`. It
refuses what would cost unbounded time or memory (numbers of thousands of
digits) and keys given twice, which YAML itself silently lets the last win.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from itsup.errors import ConfigError

KeyPath = tuple[str | int, ...]
# Longest key shown in a problem line; longer ones are cut.
MAX_KEY_SHOWN = 80
# Longest number YAML may hold: Python's int() refuses over 4300 digits, and a
# YAML 1.1 base-60 number (`1:2:3:...`) costs time quadratic in its length.
MAX_NUMBER_CHARS = 1000


def clip(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters: a 1 MB key or value must not make a 1 MB line."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...({len(text)} characters)"


def dotted(path: KeyPath) -> str:
    """A key path as `backup.s3.bucket`; odd keys quoted so a message stays one line."""
    parts = (clip(str(p), MAX_KEY_SHOWN) for p in path)
    return ".".join(p if re.fullmatch(r"[\w-]+", p) else json.dumps(p) for p in parts)


def _line_index(node: yaml.Node, path: KeyPath = ()) -> Iterator[tuple[KeyPath, int]]:
    seen: set[int] = set()

    def walk(node: yaml.Node, path: KeyPath) -> Iterator[tuple[KeyPath, int]]:
        yield path, node.start_mark.line + 1
        if id(node) in seen:  # an alias of a node already indexed (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value)
                yield (*path, key), key_node.start_mark.line + 1
                for sub_path, line in walk(value_node, (*path, key)):
                    if sub_path != (*path, key):
                        yield sub_path, line
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                yield from walk(item, (*path, i))

    yield from walk(node, path)


def _duplicates(node: yaml.Node, source: str, sections: tuple[str, ...]) -> list[tuple[int, str]]:
    """Keys given twice at the top level or anywhere inside `sections`."""
    found: list[tuple[int, str]] = []

    def check(node: yaml.Node, path: KeyPath, deep: bool, seen: set[int]) -> None:
        if not isinstance(node, yaml.MappingNode) or id(node) in seen:
            return
        seen.add(id(node))
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                where = f"{source}:{line}: {dotted((*path, key))}"
                found.append((line, f"{where}: duplicate key (first given at line {first[key]})"))
            else:
                first[key] = line
            if deep or key in sections:
                check(value_node, (*path, key), True, seen)

    check(node, (), False, set())
    return found


class _NumberTooLarge(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader, refusing numbers longer than MAX_NUMBER_CHARS."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> Any:
        text = str(node.value)
        if len(text) > MAX_NUMBER_CHARS:
            raise _NumberTooLarge(
                None, None, f"a number of {len(text)} characters is too large", node.start_mark
            )
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _safe_load(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_yaml(
    text: str, source: str, sections: tuple[str, ...] = ()
) -> tuple[Any, dict[KeyPath, int]]:
    """The document and the line of each key path; duplicate keys are refused at the
    top level and anywhere inside `sections` (other tools' sections are theirs)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = _safe_load(text)
    except _NumberTooLarge as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ConfigError(f"{source}{f':{line}' if line else ''}: {exc.problem}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        context = ""
        if exc.context and exc.context_mark and exc.context_mark is not mark:
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: broken YAML: {exc.problem or exc}{context}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"{source}:{line}: broken YAML: {exc.reason} character {exc.character!r}"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: broken YAML: {' '.join(str(exc).split())}") from None
    if node is None:
        return data, {}
    duplicates = _duplicates(node, source, sections)
    if duplicates:
        raise ConfigError([text for _, text in sorted(duplicates)])
    return data, dict(_line_index(node))
