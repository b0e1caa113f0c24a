"""itsup's layers, read from the source: no upward or sideways import, no cycle.

Every module of the package is parsed (never imported: no side effects) and
given a layer from LAYERS, the table docs/design.md shows. A module may
import modules of its own layer or of a lower rank; pipeline/ and storage/
share a rank and may not import each other. Every import counts, also one
inside a function or under TYPE_CHECKING: each is a dependency of the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import itsup

PACKAGE = Path(itsup.__file__).resolve().parent

# Module name (or package prefix) -> layer; the longest matching prefix wins.
LAYERS = {
    "itsup.__main__": "cli",
    "itsup.cli": "cli",
    "itsup.actions": "actions",
    "itsup.actions.bucket": "actions",  # setup-bucket, doctor, iam-policy
    # generations: what reads and writes a target's objects as generations
    "itsup.host": "generations",
    "itsup.generation": "generations",
    "itsup.lifecycle": "generations",
    "itsup.index": "generations",
    "itsup.pipeline": "pipeline",
    "itsup.storage": "storage",
    "itsup.storage.s3bucket": "storage",  # a bucket's own configuration (setup-bucket, doctor)
    "itsup.dumps": "dumps",
    # domain: the host's things, knowing neither archives' bytes nor storage
    "itsup.manifest": "domain",
    "itsup.lock": "domain",
    "itsup.swap": "domain",
    "itsup.monitor": "domain",
    "itsup.metrics": "domain",
    "itsup.notify": "domain",
    "itsup.repos": "domain",
    "itsup.git": "domain",
    "itsup.compose": "domain",
    # base: imported by everything, importing only each other
    "itsup": "base",
    "itsup.config": "base",
    "itsup.dbconfig": "base",
    "itsup.configcheck": "base",
    "itsup.layout": "base",
    "itsup.errors": "base",
    "itsup.log": "base",
    "itsup.fsutil": "base",
    "itsup.durations": "base",
    "itsup.retention": "base",  # the policy: (name, time) pairs in, reasons out
    "itsup.agekeys": "base",
    "itsup.sops": "base",  # config decrypts secrets/itsup.enc.txt through it
}
RANK = {
    "cli": 6,
    "actions": 5,
    "generations": 4,
    "pipeline": 3,
    "storage": 3,
    "dumps": 3,
    "domain": 2,
    "base": 1,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["itsup", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = LAYERS.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported itsup module, line) for every import statement in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            # `import itsup.a.b` depends on itsup.a.b; a package importing its own
            # children is not a dependency of those children.
            if name in MODULES and name != module and not name.startswith(module + "."):
                found.append((name, node.lineno))
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"give these modules a layer in LAYERS (and docs/design.md): {missing}"


def violations(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    """`module:line: module (layer) -> dep (layer): upward|sideways` per import against the layers."""
    bad = []
    for module, deps in graph.items():
        mine = layer_of(module)
        for dep, line in deps:
            theirs = layer_of(dep)
            if mine is None or theirs is None or mine == theirs:
                continue
            if RANK[theirs] >= RANK[mine]:
                way = "sideways" if RANK[theirs] == RANK[mine] else "upward"
                where = MODULES[module].relative_to(PACKAGE.parent) if module in MODULES else module
                bad.append(f"{where}:{line}: {module} ({mine}) -> {dep} ({theirs}): {way}")
    return bad


def test_no_upward_or_sideways_import() -> None:
    bad = violations(GRAPH)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle() -> None:
    graph = {m: sorted({dep for dep, _ in deps}) for m, deps in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checks_catch_what_they_are_for() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
    assert layer_of("itsup.pipeline.codec") == "pipeline"
    assert layer_of("itsup.cli.restore") == "cli"
    assert layer_of("itsup") == "base"
    assert violations(
        {
            "itsup.pipeline.check": [("itsup.storage", 7), ("itsup.manifest", 8)],
            "itsup.config": [("itsup.pipeline.crypt", 9), ("itsup.errors", 10)],
            "itsup.actions.verify": [("itsup.actions.restore", 11)],
        }
    ) == [
        "itsup/pipeline/check.py:7: itsup.pipeline.check (pipeline) -> itsup.storage (storage): "
        "sideways",
        "itsup/config.py:9: itsup.config (base) -> itsup.pipeline.crypt (pipeline): upward",
    ]
