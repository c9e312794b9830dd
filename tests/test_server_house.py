"""The server stays out of the plugin: nothing outside nomad_secrets.serve
imports it but ``cli.operator_command``; the executable carries none of it;
and the executable's fetch, even with a config file that has server
sections, never imports the server, Starlette, uvicorn, anyio or PyJWT."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

from conftest import REGION, aws_config, interpreter, put_secret, write_config
from support.nomad import nomad_env
from test_house import PACKAGE, graph, module_name

SERVER_LIBRARIES = ("starlette", "uvicorn", "anyio", "jwt", "h11")


def test_only_the_cli_imports_the_server() -> None:
    importers = {
        name
        for name, deps in graph().items()
        if not name.startswith("nomad_secrets.serve")
        and any(d.startswith("nomad_secrets.serve") for d in deps)
    }
    assert importers == {"nomad_secrets.cli"}


def test_no_module_outside_the_server_imports_its_libraries() -> None:
    for path in PACKAGE.rglob("*.py"):
        if module_name(path).startswith("nomad_secrets.serve"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] in SERVER_LIBRARIES], (path, names)


def test_the_executable_carries_no_server(artifact: Path) -> None:
    with zipfile.ZipFile(artifact) as zf, zipfile.ZipFile(io.BytesIO(zf.read("lib.zip"))) as lib:
        names = lib.namelist()
    assert "lib/nomad_secrets/nomad/fetch.py" in names
    assert not [n for n in names if n.startswith("lib/nomad_secrets/serve/")]
    assert not [n for n in names if n.split("/")[1] in SERVER_LIBRARIES]


def test_fetch_imports_nothing_of_the_server(
    plugin_dir: Path, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Python's own import log (-X importtime) of a real fetch through the
    built executable, its stderr kept by the plugin's debug log."""
    put_secret(secretsmanager, "house/db", json.dumps({"password": "house-pw"}))
    log = tmp_path / "debug.log"
    shared = f"""
[plugin]
debug_log = "{log}"

[server]
listen = "0.0.0.0:8443"
plain_http = true

[drone]
secret_file = "/etc/nomad-secrets/drone-secret"

[[drone.policy]]
repo = "octocat/*"
allow = ["aws-sm:ci/{{repo}}/**"]
"""
    write_config(plugin_dir, aws_config(moto_endpoint) + shared)
    ran = subprocess.run(
        [
            interpreter(),
            "-X",
            "importtime",
            "-I",
            "-S",
            str(plugin_dir / "secrets" / "aws"),
            "fetch",
            "house/db",
        ],
        env=nomad_env("fetch", {"AWS_REGION": REGION}, "web", "default"),
        capture_output=True,
        timeout=60,
    )
    assert json.loads(ran.stdout) == {"result": {"password": "house-pw"}}
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in log.read_text().splitlines()
        if line.startswith("import time:")
    }
    assert (
        "nomad_secrets.stores.aws.secretsmanager" in imported and "botocore.client" in imported
    )  # the log works
    found = sorted(
        m for m in imported if m.startswith("nomad_secrets.serve") or m.split(".")[0] in SERVER_LIBRARIES
    )
    assert found == []
