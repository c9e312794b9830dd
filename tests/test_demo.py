"""scripts/demo: the file it builds is the one `scripts/build` makes (or it
builds elsewhere and says so), and it runs to the end without Go, showing
the raw output with a note."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from support import gocheck

pytestmark = pytest.mark.process  # every test here runs a process (the unit tier: conftest.py)


def demo(*args: str, go: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if not go:
        env["GOCHECK_GO"] = "/nonexistent"  # a machine without Go (gocheck.find_go)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def documented_build(output: Path) -> Path:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build"), "--output", str(output)],
        check=True,
        capture_output=True,
    )
    return output


def test_without_go_the_demo_runs_and_shows_the_raw_output(tmp_path: Path) -> None:
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("needs /usr/bin/python3, scripts/build's default interpreter")
    run = demo("--output", str(tmp_path / "demo" / "nomad-secrets"), go=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "note: no Go here, so the output below is the plugin's raw stdout" in run.stdout
    assert 'stdout: {"result": {"username": "app", "password": "' in run.stdout
    assert "(raw: Nomad would decode it with Go's encoding/json and go-version)" in run.stdout
    assert run.stdout.rstrip().endswith("demo: OK (raw output: no Go here to decode it)")
    # the same file as the documented build: same shebang, same bytes
    built = (tmp_path / "demo" / "nomad-secrets").read_bytes()
    assert built.startswith(b"#!/usr/bin/python3 -IS\n")
    assert built == documented_build(tmp_path / "documented" / "nomad-secrets").read_bytes()


def test_with_go_the_demo_shows_what_nomad_decodes(tmp_path: Path) -> None:
    try:
        gocheck.find_go()
    except gocheck.GoMissing as missing:
        pytest.skip(str(missing))
    run = demo("--output", str(tmp_path / "nomad-secrets"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "node attribute (Go decoded it): plugins.secrets.aws.version = " in run.stdout
    assert "no Go here" not in run.stdout and run.stdout.rstrip().endswith("demo: OK")


def test_without_a_node_interpreter_the_demo_builds_elsewhere_and_says_so(tmp_path: Path) -> None:
    output = tmp_path / "dist" / "nomad-secrets"
    run = demo("--output", str(output), "--node-python", str(tmp_path / "no-python3"), go=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        f"note: {tmp_path / 'no-python3'} does not exist here, so this demo runs its own build" in run.stdout
    )
    assert f"do not ship it. {output} is not written" in run.stdout
    assert not output.exists()
