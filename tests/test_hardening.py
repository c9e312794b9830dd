"""docs/hardening.md's CI check, as written, against jobs in the shape of
Nomad's API (api/tasks.go: Job.TaskGroups[].Tasks[].Secrets[] with Name,
Provider, Path, Env), which `nomad job run -output` prints."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "hardening.md"


def jq_filter() -> str:
    block = re.search(
        r"```sh\nnomad job run -output job\.nomad\.hcl \| jq -e '(.*?)'\n```", DOC.read_text(), re.S
    )
    assert block, "docs/hardening.md lost its jq check"
    return block.group(1)


def job(*secrets: dict[str, object]) -> dict[str, object]:
    task = {"Name": "app", "Driver": "docker", "Secrets": list(secrets)}
    return {"Job": {"ID": "web", "TaskGroups": [{"Name": "g", "Tasks": [task, {"Name": "no-secrets"}]}]}}


def secret(provider: str, env: dict[str, str] | None) -> dict[str, object]:
    return {"Name": "db", "Provider": provider, "Path": "prod/db", "Config": None, "Env": env}


@pytest.fixture(scope="module")
def jq() -> str:
    found = shutil.which("jq")
    if found is None:
        pytest.skip("needs jq: run scripts/setup as root, or apt-get install jq")
    return found


@pytest.mark.process
@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        (job(secret("aws", {"AWS_REGION": "us-east-2"})), True),
        (job(secret("aws", {"AWS_REGION": "x", "NOMAD_WORKLOAD_TOKEN": "${NOMAD_TOKEN_s}"})), True),
        (job(secret("aws", None)), True),
        (job(), True),
        (job(secret("nomad", None)), True),
        (job(secret("aws", {"LD_PRELOAD": "/alloc/x.so"})), False),
        (job(secret("openbao", {"AWS_REGION": "x", "TZ": "/tmp/fifo"})), False),
    ],
)
def test_the_documented_check_refuses_other_keys(jq: str, spec: dict[str, object], ok: bool) -> None:
    run = subprocess.run([jq, "-e", jq_filter()], input=json.dumps(spec), capture_output=True, text=True)
    assert (run.returncode == 0) is ok, run
    if not ok:
        assert "secret env keys not allowed:" in run.stderr
