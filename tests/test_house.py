"""The shape of the house: nomad_secrets has no import circle, and the
bootstrap (the zip's ``__main__``) is the ground floor: nothing imports it."""

from __future__ import annotations

import ast
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
    """The zip's __main__ is imported by no module, and trust and endings,
    which it needs before anything is unpacked, import none of ours."""
    edges = graph()
    assert [name for name, deps in edges.items() if "nomad_secrets.bootstrap" in deps] == []
    assert edges["nomad_secrets.process.trust"] == set()
    assert edges["nomad_secrets.process.endings"] == set()
    packages = {"nomad_secrets", "nomad_secrets.process"}  # their __init__ runs no code of ours
    # in the zip too:
    assert edges["nomad_secrets.process.cache"] - packages == {
        "nomad_secrets.process.trust",
        "nomad_secrets.process.endings",
    }


def test_no_module_stands_beside_a_package_of_its_name() -> None:
    """A package wins the import, so such a module is dead code that ships
    in the executable (the old backends/vault.py once came back that way)."""
    shadowed = [p for p in PACKAGE.rglob("*.py") if (p.parent / p.stem / "__init__.py").is_file()]
    assert shadowed == []
