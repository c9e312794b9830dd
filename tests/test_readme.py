"""README's first screen, followed literally (issue 24): what it is, the two
commands, the status, the install lines, a minimal job with the answer it
shows, and the inner loop's commands, each run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
from conftest import ROOT, doc_block, put_secret
from support.nomad import NomadClient
from test_examples import fenced, hcl_string, secret_blocks

from nomad_secrets._version import __version__

README = (ROOT / "README.md").read_text()
FIRST_SCREEN = README[: README.index("## For job authors")]


def commands(block: str) -> list[str]:
    """The block's command lines, comments after `#` taken off."""
    return [re.sub(r"\s+#.*", "", line) for line in block.splitlines() if line.strip()]


def test_one_sentence_of_what_it_is_above_the_two_commands() -> None:
    title, sentence, block = FIRST_SCREEN.split("\n\n")[:3]
    assert title == "# nomad-secrets"
    assert sentence.startswith("A secret provider plugin for HashiCorp Nomad") and sentence.count(". ") == 0
    assert commands(block.removeprefix("```sh\n").removesuffix("\n```")) == [
        "./scripts/demo",
        "./scripts/test",
    ]


def test_the_status_is_the_version_and_no_release() -> None:
    words = " ".join(FIRST_SCREEN.split())
    assert __version__.startswith("0.1")
    assert "**Status**: version 0.1, no release yet: no tag, no published executable or package." in words


def test_the_install_lines_run_as_written(artifact: Path, tmp_path: Path) -> None:
    """The node's two lines after the build (the build is scripts/build's,
    tests/test_demo.py), with the common plugin dir moved under tmp_path."""
    build, install, check = commands(doc_block(ROOT / "README.md", "--as aws", "sh"))
    assert build == "scripts/setup && .venv/bin/python scripts/build"
    common = tmp_path / "common_plugins"
    env = {"PATH": "/usr/bin:/bin"}
    here = shlex.split(install.replace("/opt/nomad/data/common_plugins", str(common)))
    assert here[0] == "./nomad-secrets"
    installed = subprocess.run(
        [str(artifact), *here[1:]], capture_output=True, text=True, env=env, timeout=60
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    checked = subprocess.run(
        shlex.split(check.replace("/opt/nomad/data/common_plugins", str(common))),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (
        checked.stderr == ""
        and "config file " + str(common / "secrets" / "nomad-secrets.toml") in checked.stdout
    )
    # no store answers here (loopback only): the one form of check's last line says so
    assert re.fullmatch(
        r"result: (OK|NOT OK): \d+ problems?, \d+ warnings?( \(.*\))?", checked.stdout.splitlines()[-1]
    )


def test_the_minimal_job_shows_the_answer_nomad_gets(nomad: NomadClient, secretsmanager: Any) -> None:
    where, job = fenced("hcl")[0]
    assert where == "README.md#hcl1" and job in FIRST_SCREEN
    ((_, block, body),) = secret_blocks(hcl2.loads(job))
    secret = {"username": "app", "password": "pw", "host": "db.internal", "port": 5432}
    assert f"`{json.dumps(secret)}`" in " ".join(FIRST_SCREEN.split())  # the secret, as the README says
    put_secret(secretsmanager, hcl_string(body["path"]), json.dumps(secret))
    env = {k: hcl_string(v) for item in body["env"] for k, v in item.items() if k[:2] != "__"}
    fetched = nomad.fetch(hcl_string(body["provider"]), hcl_string(body["path"]), env)
    shown = json.loads(doc_block(ROOT / "README.md", '{"result": ', "json"))
    assert fetched.ok and {"result": fetched.result} == shown
    assert block == "db" and "${secret.db.password}" in job
    assert f"the task starts with `DB_PASSWORD={fetched.result['password']}`" in " ".join(
        FIRST_SCREEN.split()
    )


@pytest.mark.long
@pytest.mark.process
def test_the_inner_loop_runs_as_written(tmp_path: Path) -> None:
    """`scripts/lint`, one test, one file and the unit tier, from the
    README's lines, in a checkout whose .venv is set up (these tests run
    from it)."""
    lines = commands(doc_block(ROOT / "README.md", "scripts/lint", "sh"))
    assert lines[0] == "scripts/lint" and lines[-1] == "scripts/test --unit" and len(lines) == 4
    env = dict(os.environ, PYTEST_ADDOPTS=f"--basetemp={tmp_path / 'inner'}")  # not this run's temp root
    for line in lines:
        if "--unit" in line:  # the tier's tests of one file: this suite runs every one of them already
            env["PYTEST_ADDOPTS"] += " tests/test_policy.py"
        run = subprocess.run(
            shlex.split(line), cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
        )
        assert run.returncode == 0, (line, run.stdout[-2000:], run.stderr[-2000:])
        if "--unit" in line:  # pytest's summary, then the script's own time
            summary = run.stdout.splitlines()[-2]
            assert re.search(r"\b\d{2,} passed\b", summary) and "failed" not in summary, run.stdout[-500:]
        elif "pytest" in line:
            assert re.search(r"\b1 passed\b", run.stdout.splitlines()[-1]), run.stdout[-500:]
        else:
            assert "All checks passed!" in run.stdout and "Success: no issues found" in run.stdout
