"""A fresh node (a pytest plugin, loaded by conftest.py): builds of the
executable with a cache directory of their own, not made yet, each installed
as ``aws`` in its own plugin directory. The ``node`` fixture makes one build;
a test module that needs an upgrade names its builds with the ``node_builds``
mark (``name="version"``): they share the one cache, as on a node that
upgrades."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, build_artifact, put_secret

from nomad_secrets.process import cache as cache_module
from support.nomad import Fetched, NomadClient, PluginRun, install_plugin, nomad_env, run_plugin

SECRET = "node/db"  # the secret every build of the fixture's node fetches: "v"


@dataclass(frozen=True)
class Build:
    exe: Path
    plugins: Path  # its common_plugin_dir
    nomad: NomadClient


class Node:
    """One cache, and the builds installed on this node (``builds``: name ->
    version, "" for the version of the source tree). ``exe``, ``plugins``
    and ``nomad`` are the first build's."""

    def __init__(
        self,
        top: Path,
        config: str,
        decoder: Any,
        builds: dict[str, str] | None = None,
        cache: Path | None = None,
    ) -> None:
        self.cache = cache or top / "cache"
        self.decoder = decoder
        self.versions = builds or {"dist": ""}
        self.builds: dict[str, Build] = {}
        for name, version in self.versions.items():
            exe = build_artifact(
                top / name / "nomad-secrets", self.cache, *(["--version", version] if version else [])
            )
            plugins = top / name / "common_plugins"
            install_plugin(exe, plugins, ["aws"], config)
            self.builds[name] = Build(exe, plugins, NomadClient(plugins, decoder))
        first = next(iter(self.builds.values()))
        self.exe, self.plugins, self.nomad = first.exe, first.plugins, first.nomad

    def fetch(self, build: str | None = None, **kwargs: Any) -> Fetched:
        """The fixture's secret, fetched by ``build`` (the first one)."""
        return (self.builds[build].nomad if build else self.nomad).fetch("aws", SECRET, **kwargs)

    def sigterm_at(self, seconds: float) -> PluginRun:
        """A fetch that Nomad stops (SIGTERM) after ``seconds``, as it is."""
        env = nomad_env("fetch", {}, "web", "default")
        return run_plugin(self.nomad.executable("aws"), ["fetch", SECRET], env, seconds)

    def entries(self) -> list[Path]:
        """The unpack directories in the cache, by name."""
        if not self.cache.exists():
            return []
        return sorted(p for p in self.cache.iterdir() if cache_module.is_entry(p.name))

    def entry(self) -> Path:
        (entry,) = self.entries()
        return entry

    def unpacked(self) -> dict[str, Path]:
        """Build name -> its unpack directory in the cache, in the order of
        the directories' names: told by the version in its _version.py (a
        build of the source tree's version, "", is any directory's)."""
        found: dict[str, Path] = {}
        for entry in self.entries():
            text = (entry / "lib" / "nomad_secrets" / "_version.py").read_text()
            found |= {
                name: entry
                for name, version in self.versions.items()
                if f"'{version}'" in text or not version
            }
        return found

    def leftovers(self) -> list[str]:
        """Temporary directories of an unpack or a prune left in the cache."""
        if not self.cache.exists():  # stopped before it made the cache directory
            return []
        return sorted(n for n in os.listdir(self.cache) if n.startswith((".unpack-", ".prune-")))

    def install(self, build: str) -> subprocess.CompletedProcess[str]:
        """`install --force` of ``build`` into a plugin dir beside it."""
        exe = self.builds[build].exe
        return subprocess.run(
            [str(exe), "install", "--common-plugin-dir", str(exe.parent / "installed"), "--force"],
            capture_output=True,
            text=True,
            env={},
            timeout=120,
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node_builds(**builds): the node fixture's builds, name=version")


@pytest.fixture
def node(
    request: pytest.FixtureRequest, tmp_path: Path, moto_endpoint: str, decoder: Any, secretsmanager: Any
) -> Node:
    """A fresh node whose builds fetch ``SECRET``."""
    put_secret(secretsmanager, SECRET, "v")
    mark = request.node.get_closest_marker("node_builds")
    return Node(tmp_path, aws_config(moto_endpoint), decoder, mark.kwargs if mark else None)
