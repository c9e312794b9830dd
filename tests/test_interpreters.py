"""The one executable on every CPython this machine has: 3.10 and newer
answer fingerprint and fetch; older ones refuse clearly.

Interpreters are found where distributions and pyenv put them; the test's
own interpreter is always among them.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, build_artifact
from support.nomad import NomadClient, install_plugin, nomad_env, run_plugin

from nomad_secrets.launch import UNPACK_LOCK

PATTERNS = [
    "/usr/bin/python3.[0-9]*",
    "/usr/local/bin/python3.[0-9]*",
    os.path.expanduser("~/.pyenv/versions/3.*/bin/python3.[0-9]*"),
]


def interpreters() -> dict[tuple[int, int], str]:
    """One interpreter per minor version, with its version."""
    found: dict[tuple[int, int], str] = {}
    candidates = [os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    for pattern in PATTERNS:
        candidates += sorted(p for p in glob.glob(pattern) if not p.endswith("-config"))
    for path in candidates:
        try:
            out = subprocess.run(
                [path, "-I", "-S", "-c", "import sys; print(*sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if len(out) == 2:
            found.setdefault((int(out[0]), int(out[1])), path)
    return found


FOUND = interpreters()
SUPPORTED = {v: p for v, p in FOUND.items() if v >= (3, 10)}
TOO_OLD = {v: p for v, p in FOUND.items() if (3, 8) <= v < (3, 10)}


@pytest.mark.parametrize("python", sorted(SUPPORTED.values()), ids=lambda p: p)
def test_supported_interpreter(
    python: str,
    tmp_path: Path,
    moto_endpoint: str,
    secretsmanager: Any,
    decoder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOMAD_SECRETS_TEST_PYTHON", python)
    exe = build_artifact(tmp_path / "nomad-secrets", tmp_path / "cache")
    install_plugin(exe, tmp_path / "plugins", ["aws"], aws_config(moto_endpoint))
    nomad = NomadClient(tmp_path / "plugins", decoder)
    assert nomad.fingerprint("aws").ok
    name = "interp-" + Path(python).name
    if name not in [s["Name"] for s in secretsmanager.list_secrets()["SecretList"]]:
        secretsmanager.create_secret(Name=name, SecretString=json.dumps({"k": "v", "n": 1}))
    assert nomad.fetch("aws", name, {"AWS_REGION": "us-east-2"}).result == {"k": "v", "n": "1"}
    assert "not found" in str(nomad.fetch("aws", "missing-x", {"AWS_REGION": "us-east-2"}).plugin_error)
    (entry,) = [name for name in os.listdir(tmp_path / "cache") if name != UNPACK_LOCK]
    assert entry.endswith("-cpython-" + "".join(python.rsplit("python", 1)[1].split(".")))


@pytest.mark.parametrize("python", sorted(TOO_OLD.values()), ids=lambda p: p)
def test_older_interpreter_refuses_clearly(
    python: str, tmp_path: Path, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMAD_SECRETS_TEST_PYTHON", python)
    exe = build_artifact(tmp_path / "nomad-secrets", tmp_path / "cache")
    fingerprint = run_plugin(exe, ["fingerprint"], {"CPI_OPERATION": "fingerprint"})
    assert fingerprint.returncode == 1  # Nomad logs a failed fingerprint and skips the plugin
    fetch = run_plugin(exe, ["fetch", "x"], nomad_env("fetch", {}, "j", "default"))
    assert fetch.returncode == 0 and fetch.stderr == b""
    assert "needs Python 3.10 or newer" in json.loads(fetch.stdout)["error"]


def test_the_running_interpreter_is_among_those_tested() -> None:
    assert (sys.version_info[0], sys.version_info[1]) in SUPPORTED
