"""pyrage is imported in one place only, `itsup.agekeys.pyrage_module()`, which holds
SIGINT and SIGTERM back while the Rust extension initialises (a signal handled
then makes it panic: a traceback and exit 1 instead of exit 130)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import itsup

PACKAGE = Path(itsup.__file__).resolve().parent
GUARD = ("itsup/agekeys.py", "pyrage_module")


def _scopes(tree: ast.AST) -> list[tuple[ast.AST, str | None]]:
    """Every node with the name of the outermost function holding it (None: module level)."""
    found: list[tuple[ast.AST, str | None]] = []

    def walk(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = function
            if function is None and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            found.append((child, inner))
            walk(child, inner)

    walk(tree, None)
    return found


def _sources() -> list[tuple[str, ast.AST]]:
    return [
        (path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def _imports_pyrage(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "pyrage" or a.name.startswith("pyrage.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.level == 0 and (node.module or "").split(".")[0] == "pyrage"
    return False


def test_pyrage_is_imported_only_by_the_guard() -> None:
    found = [
        (name, node.lineno, function)
        for name, tree in _sources()
        for node, function in _scopes(tree)
        if _imports_pyrage(node)
    ]
    assert [(name, function) for name, _, function in found] == [GUARD], (
        "import pyrage only through itsup.agekeys.pyrage_module(): "
        + ", ".join(
            f"{name}:{line} (in {function or 'module level'})" for name, line, function in found
        )
    )


def test_nothing_loads_pyrage_at_import_time() -> None:
    """No module calls the guard at module level, so importing itsup never starts pyrage."""
    at_import = [
        f"{name}:{node.lineno}"
        for name, tree in _sources()
        for node, function in _scopes(tree)
        if function is None
        and isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "pyrage_module"
    ]
    assert not at_import, f"pyrage_module() called at import time: {at_import}"
    every = textwrap.dedent(
        """
        import importlib, pkgutil, sys, itsup
        for info in pkgutil.walk_packages(itsup.__path__, "itsup."):
            if info.name != "itsup.__main__":
                importlib.import_module(info.name)
        print("pyrage" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", every], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "importing itsup's modules loaded pyrage"


# A stand-in for pyrage whose initialisation is hit by a SIGINT: without the guard
# the KeyboardInterrupt lands inside it (the real one panics there).
FAKE_PYRAGE = """
import os, signal, time
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)  # a handled signal would raise here, in the middle of the import
INITIALISED = True
"""
DRIVER = """
import signal, sys
sys.path.insert(0, sys.argv[1])
from itsup.agekeys import pyrage_module
before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
try:
    pyrage_module()
except KeyboardInterrupt:
    module = sys.modules.get("pyrage")
    print("interrupted after the import" if getattr(module, "INITIALISED", False) else "inside it")
after = signal.pthread_sigmask(signal.SIG_BLOCK, set())
print("mask restored" if before == after else f"mask changed: {before} -> {after}")
"""


def test_a_signal_during_the_import_is_handled_after_it(tmp_path: Path) -> None:
    (tmp_path / "pyrage.py").write_text(FAKE_PYRAGE)
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert out.stdout.split("\n")[:2] == ["interrupted after the import", "mask restored"], (
        out.stdout + out.stderr
    )


def test_the_guard_gives_the_real_module() -> None:
    from itsup.agekeys import pyrage_module

    pyrage = pyrage_module()
    assert pyrage is pyrage_module()
    identity = pyrage.x25519.Identity.generate()
    assert pyrage.decrypt(pyrage.encrypt(b"x", [identity.to_public()]), [identity]) == b"x"
