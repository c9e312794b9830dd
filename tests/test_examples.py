"""Every example the docs show works as written.

- every operator config (examples/config/*.toml and each ```toml block of
  README.md and docs/*.md) parses and validates;
- every job (examples/jobs/*.hcl and each ```hcl block of README.md and
  docs/*.md that has a `secret` block): each secret block's provider, path
  and env run through the built executable, as Nomad would run them,
  against moto's server or the real OpenBao server seeded with the example
  data below; and every ${secret.<block>.<key>} the job uses is among the keys
  the plugin returns.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from conftest import ROOT, aws_config, put_secret
from support.nomad import NomadClient, install_plugin
from support.openbao import Session

from nomad_secrets.core import config
from nomad_secrets.core.schemes import SCHEMES

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced(language: str) -> list[tuple[str, str]]:
    """(where, text) of each ```language block in the docs."""
    blocks = []
    for doc in DOCS:
        for number, match in enumerate(
            re.finditer(rf"^```{language}\n(.*?)^```", doc.read_text(), re.M | re.S)
        ):
            blocks.append((f"{doc.name}#{language}{number + 1}", match.group(1)))
    return blocks


CONFIGS = [(p.name, p.read_text()) for p in sorted((ROOT / "examples" / "config").glob("*.toml"))] + fenced(
    "toml"
)
JOBS = [(p.name, p.read_text()) for p in sorted((ROOT / "examples" / "jobs").glob("*.hcl"))] + [
    (where, text) for where, text in fenced("hcl") if re.search(r'^\s*secret\s+"', text, re.M)
]


@pytest.mark.parametrize(("where", "text"), CONFIGS, ids=[w for w, _ in CONFIGS])
def test_config_examples_parse_and_validate(where: str, text: str) -> None:
    parsed = config.parse(text.encode(), where)
    for name in parsed.providers:
        assert parsed.provider(name).store in SCHEMES
    if where.endswith(".toml"):  # a whole file, not a block of docs: it must say who reads what
        config.require_policy(parsed)


def test_there_are_examples_of_each_kind() -> None:
    assert len(CONFIGS) >= 8 and len(JOBS) >= 8
    assert {p.name for p in (ROOT / "examples" / "jobs").glob("*.hcl")} >= {
        "one-key.nomad.hcl",
        "json-secret.nomad.hcl",
        "multi-line.nomad.hcl",
        "ssm-prefix.nomad.hcl",
        "vault-kv2-version.nomad.hcl",
        "workload-identity.nomad.hcl",
        "template-file.nomad.hcl",
    }


# --- the job examples -----------------------------------------------------------


def hcl_string(raw: Any) -> str:
    """python-hcl2 keeps a string's quotes and heredocs' markers; undo both."""
    text = str(raw)
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    heredoc = re.match(r"<<(-?)([A-Za-z_]+)\n(.*)\n[ \t]*\2\Z", text, re.S)
    if heredoc:
        body = heredoc.group(3) + "\n"
        return textwrap.dedent(body) if heredoc.group(1) else body
    return text.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def secret_blocks(node: Any, job: str = "") -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(job name, block name, block) for every secret block, at any depth."""
    if isinstance(node, list):
        for item in node:
            yield from secret_blocks(item, job)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "job":
                for item in value:
                    for name, body in item.items():
                        yield from secret_blocks(body, hcl_string(name))
            elif key == "secret":
                for item in value:
                    for name, body in item.items():
                        yield job, hcl_string(name), body
            else:
                yield from secret_blocks(value, job)


@pytest.fixture(scope="module")
def vault(bao: Session) -> Session:
    """OpenBao with the example data; its JWT role (jwt-nomad/nomad-workloads)
    lets a job read secret/nomad/<namespace>/<job>/*."""
    for path, data in [
        ("app/signing", {"key": "old-signing-key"}),
        ("app/signing", {"key": "signing-key-v2"}),
        ("app/db", {"username": "app", "password": "pw"}),
        ("web/db", {"password": "web-pw"}),
        ("nomad/default/web/db", {"password": "web-pw"}),
        ("payments/key", {"key": "pay"}),
    ]:
        bao.server.put_kv("secret", path, data)
    return bao


@pytest.fixture(scope="module")
def aws_data(secretsmanager: Any, ssm: Any) -> None:
    """The AWS data the examples read."""
    secrets = {
        "my-aws-secret": {"username": "app", "password": "pw"},
        "prod/db": {"username": "app", "password": "pw", "host": "db.internal", "port": 5432},
        "prod/api": {"token": "api-token"},
        "nomad/default/web/db": {"password": "web-pw"},
    }
    for name, value in secrets.items():
        put_secret(secretsmanager, name, json.dumps(value))
    for name, value in {
        "/prod/app/feature-flags": "a,b",
        "/prod/app/db/password": "pw",
        "/prod/app/db/user": "app",
    }.items():
        ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)


def plugin_for(
    provider: str,
    uses_identity: bool,
    tmp_path: Path,
    artifact: Path,
    moto_endpoint: str,
    vault: Session,
) -> Path:
    """The plugin installed as ``provider``, its config naming moto's server
    and OpenBao (a path may mix stores)."""
    plugins = tmp_path / provider
    token = tmp_path / "vault-token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(vault.plugin_token)
    token.chmod(0o600)
    auth = (
        'auth_method = "jwt"\nauth_mount = "jwt-nomad"\nrole = "nomad-workloads"\n'
        if uses_identity
        else f'token_file = "{token}"\n'
    )
    text = aws_config(moto_endpoint) + f'[vault]\naddress = "{vault.server.address}"\n{auth}'
    if provider not in config.BUILTIN_PROVIDERS:
        text += f'[providers.{provider}]\nstore = "vault"\n'
    install_plugin(artifact, plugins, [provider], text)
    return plugins


@pytest.mark.parametrize(("where", "text"), JOBS, ids=[w for w, _ in JOBS])
def test_job_examples_fetch_what_they_use(
    where: str,
    text: str,
    tmp_path: Path,
    artifact: Path,
    decoder: Any,
    moto_endpoint: str,
    aws_data: None,
    vault: Session,
) -> None:
    parsed = hcl2.loads(text)
    blocks = list(secret_blocks(parsed))
    assert blocks, f"{where}: no secret block found"
    used = set(re.findall(r"\$\{secret\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\}", text))
    returned: dict[str, set[str]] = {}
    for job, name, body in blocks:
        provider, path = hcl_string(body["provider"]), hcl_string(body["path"])
        env = {  # python-hcl2 adds __is_block__ and __comments__ keys
            k: hcl_string(v) for item in body.get("env", []) for k, v in item.items() if k[:2] != "__"
        }
        job_id = job or "web"
        for key, value in env.items():  # Nomad interpolates the task's identity token (1.11.3+)
            if re.fullmatch(r"\$\{NOMAD_TOKEN_[A-Za-z0-9_]+\}", value):
                env[key] = vault.issuer.sign(
                    nomad_namespace="default", nomad_job_id=job_id, sub=f"default:{job_id}"
                )
        plugins = plugin_for(
            provider, "NOMAD_WORKLOAD_TOKEN" in env, tmp_path / name, artifact, moto_endpoint, vault
        )
        fetched = NomadClient(plugins, decoder).fetch(provider, path, env, job_id=job_id)
        assert fetched.ok, (where, name, fetched.plugin_error)
        returned[name] = set(fetched.result)
    for block, key in used:
        assert block in returned, f"{where}: ${{secret.{block}.{key}}} names no secret block"
        assert key in returned[block], (
            f"{where}: ${{secret.{block}.{key}}}: the plugin gives {returned[block]}"
        )
