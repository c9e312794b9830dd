"""The shape of the house: nomad_secrets has no import circle, the
bootstrap (the zip's ``__main__``) is the ground floor: nothing imports it,
and tests/ holds only tests beside their support package."""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nomad_secrets"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every nomad_secrets module ``path`` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in known}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_circle() -> None:
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_bootstrap_is_the_ground_floor() -> None:
    """The zip's __main__ is imported by no module, and trust, which it
    needs before anything is unpacked, imports none of ours."""
    edges = graph()
    assert [name for name, deps in edges.items() if "nomad_secrets.bootstrap" in deps] == []
    assert edges["nomad_secrets.process.trust"] == set()
    packages = {"nomad_secrets", "nomad_secrets.process"}  # their __init__ runs no code of ours
    # in the zip too:
    assert edges["nomad_secrets.process.cache"] - packages == {"nomad_secrets.process.trust"}


def test_no_module_stands_beside_a_package_of_its_name() -> None:
    """A package wins the import, so such a module is dead code that ships
    in the executable (the old backends/vault.py once came back that way)."""
    shadowed = [p for p in PACKAGE.rglob("*.py") if (p.parent / p.stem / "__init__.py").is_file()]
    assert shadowed == []


TESTS = Path(__file__).resolve().parent


def strays(tests: Path) -> list[str]:
    """Every file of ``tests`` that is neither conftest.py, a test_*.py
    module nor under support/: a helper left beside the tests."""
    found = []
    for path in tests.rglob("*"):
        rel = path.relative_to(tests)
        if path.is_dir() or "__pycache__" in rel.parts or rel.parts[0] == "support":
            continue
        if len(rel.parts) == 1 and (rel.name == "conftest.py" or fnmatch(rel.name, "test_*.py")):
            continue
        found.append(rel.as_posix())
    return sorted(found)


def test_tests_hold_only_tests_beside_support() -> None:
    """Helpers (fixtures' machinery, the servers' starters, the doubles, the
    Go programs) live in tests/support/, so tests/ reads as the list of tests."""
    assert strays(TESTS) == []


def test_a_helper_beside_the_tests_is_a_stray(tmp_path: Path) -> None:
    for name in ("conftest.py", "test_a.py", "support/nomad.py", "support/gocheck/main.go", "helper.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "gocheck").mkdir()
    (tmp_path / "gocheck" / "main.go").touch()
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "test_b.py").touch()
    assert strays(tmp_path) == ["deep/test_b.py", "gocheck/main.go", "helper.py"]
