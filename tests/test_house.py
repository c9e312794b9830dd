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


def private_reaches(path: Path, known: set[str]) -> list[str]:
    """Where ``path`` takes another module's private (``_x``) name: by
    ``from nomad_secrets... import _x``, or as ``module._x`` on a module it
    imported (``import nomad_secrets.a as m`` or ``from nomad_secrets import a``)."""
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}  # local name -> the nomad_secrets module it is
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nomad_secrets":
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                if f"{node.module}.{alias.name}" in known:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            found.append(f"line {node.lineno}: {modules[node.value.id]}.{node.attr}")
    return sorted(found, key=lambda said: int(said.split(":")[0].split()[1]))


def test_no_module_takes_another_modules_private_name() -> None:
    """A name with a leading underscore is its module's own: another module
    that needs it gets a public name for it (config's build_settings,
    reject_unknown and require_trusted were private once)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    found = {name: private_reaches(path, known) for name, path in files.items()}
    assert {name: reaches for name, reaches in found.items() if reaches} == {}


def test_the_private_name_finder_finds_both_forms(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from nomad_secrets.core.config import _table\n"
        "from nomad_secrets.core import config as c\n"
        "import nomad_secrets.core.reference as ref\n"
        "c._build(1)\nref._NAME\nc.parse\nc.__doc__\n"
    )
    known = {"nomad_secrets.core.config", "nomad_secrets.core.reference"}
    assert private_reaches(source, known) == [
        "line 1: from nomad_secrets.core.config import _table",
        "line 4: nomad_secrets.core.config._build",
        "line 5: nomad_secrets.core.reference._NAME",
    ]


def test_each_failure_class_is_defined_once() -> None:
    """A failure is matched by its class, so each name in process/errors.py
    is that class alone: the server's fetchjson once had its own
    ``Unreachable``, which read like the store kind and was not."""
    errors = PACKAGE / "process" / "errors.py"
    kinds = {node.name for node in ast.parse(errors.read_text()).body if isinstance(node, ast.ClassDef)}
    elsewhere = {
        f"{module_name(path)}.{node.name}"
        for path in PACKAGE.rglob("*.py")
        if path != errors
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.name in kinds
    }
    assert "Unreachable" in kinds and elsewhere == set()


def test_the_design_shows_the_house_the_code_draws() -> None:
    """docs/design.md's picture is scripts/house.py's, drawn from the code's
    imports now: at most 9 floors, no import running back up, at most six
    modules directly in nomad_secrets/ (the entry and the package's own)."""
    import house  # scripts/house.py, on pytest's pythonpath

    drawn = house.picture()
    assert "RUNS BACK UP" not in drawn, drawn
    assert house.documented() == drawn, "run: .venv/bin/python scripts/house.py, and put it in docs/design.md"
    floors = house.floors(house.graph())[0]
    assert max(floors.values()) <= 9, drawn
    assert len(list(PACKAGE.glob("*.py"))) <= 6, drawn


def test_the_house_finds_an_import_that_runs_back_up() -> None:
    import house

    floor, up = house.floors({"low": {"high"}, "high": {"low"}, "top": {"high"}})
    assert up == [("low", "high")] or up == [("high", "low")]
    assert floor["top"] > floor["high"]
