"""Several stores of a kind: a `[providers.NAME]` with its own store settings
(docs/configuration.md, "Several clusters or accounts"), run as written
through the built executable, as Nomad runs it."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REGION, ROOT, aws_client, doc_block, moto_process, put_secret
from support.nomad import NomadClient, install_plugin
from support.openbao import OpenBao, start

from nomad_secrets.core import config
from nomad_secrets.process.errors import ConfigError

DOC = ROOT / "docs" / "configuration.md"


def check_json(executable: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [str(executable), "check", "--format", "json"], capture_output=True, text=True, env={}, timeout=60
    )
    assert proc.stderr == ""
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def other_account() -> Iterator[str]:
    """A second moto server, in its own process: another AWS account."""
    with moto_process() as endpoint:
        yield endpoint


def test_an_aws_account_per_team_as_the_docs_show(
    tmp_path: Path, artifact: Path, decoder: Any, moto_endpoint: str, other_account: str
) -> None:
    put_secret(aws_client(moto_endpoint, "secretsmanager"), "team/db", '{"password": "account-a"}')
    put_secret(aws_client(other_account, "secretsmanager"), "team/db", '{"password": "account-b"}')
    aws_client(other_account, "ssm").put_parameter(
        Name="/team-b/flag", Value="b", Type="String", Overwrite=True
    )
    # The docs' example, pointed at the two servers; team-a gets test keys
    # instead of the node's chain (no credential chain runs in a test).
    text = doc_block(DOC, "[providers.team-b]")
    text = text.replace(
        "[aws]\n",
        f'[aws]\nendpoint_url = "{moto_endpoint}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n',
    )
    text = text.replace("[providers.team-b]", f'[providers.team-b]\nendpoint_url = "{other_account}"', 1)
    install_plugin(artifact, tmp_path, ["team-a", "team-b"], text)
    nomad = NomadClient(tmp_path, decoder)
    assert nomad.fetch("team-a", "team/db").result == {"password": "account-a"}
    assert nomad.fetch("team-b", "team/db").result == {"password": "account-b"}
    # aws-ssm: through team-b is team-b's account too, in the inherited region
    assert nomad.fetch("team-b", "aws-ssm:/team-b/flag").result == {"value": "b"}
    missing = nomad.fetch("team-a", "aws-ssm:/team-b/flag")
    assert not missing.ok and f"not found in {REGION}" in (missing.plugin_error or "")

    code, report = check_json(tmp_path / "secrets" / "team-b")
    assert code == 0, report
    team_b = report["providers"]["team-b"]
    assert team_b["set_by_provider"] == ["access_key_id", "endpoint_url", "secret_access_key"]
    assert team_b["settings"]["aws"]["region"] == REGION  # inherited
    assert team_b["settings"]["aws"]["endpoint_url"] == other_account
    assert team_b["settings"]["aws"]["secret_access_key"] == "(set, not shown)"
    assert "team-b-secret-access-key" not in json.dumps(report)
    assert report["providers"]["team-a"]["settings"]["aws"]["endpoint_url"] == moto_endpoint
    probes = [i["message"] for i in report["items"] if i["section"] == "stores"]
    assert len(probes) == 2, probes  # one probe per account, each naming its provider
    assert any(m.startswith("AWS for team-a:") for m in probes)
    assert any(m.startswith("AWS for team-b:") for m in probes)


@pytest.fixture(scope="module")
def two_clusters(bao_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, OpenBao]]:
    """Two real OpenBao servers, each with its own value at secret/app/db."""
    servers: dict[str, OpenBao] = {}
    try:
        for name in ("prod", "shared"):
            server = start(bao_binary, tmp_path_factory.mktemp(f"openbao-{name}"))
            servers[name] = server
            server.policy("reader", 'path "secret/data/*" { capabilities = ["read"] }')
            server.put_kv("secret", "app/db", {"password": f"{name}-password"})
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _clusters_config(tmp_path: Path, clusters: dict[str, OpenBao], text: str) -> str:
    for name, server in clusters.items():
        token = tmp_path / f"{name}-vault-token"
        token.write_text(server.token("reader"))
        token.chmod(0o600)
        text = text.replace(f"https://vault.{name}.internal:8200", server.address)
        text = text.replace(f"/etc/nomad-secrets/{name}-vault-token", str(token))
    return text


@pytest.mark.parametrize("doc", [DOC, ROOT / "README.md"], ids=["configuration.md", "README.md"])
def test_two_vault_clusters_as_the_docs_show(
    doc: Path, tmp_path: Path, artifact: Path, decoder: Any, two_clusters: dict[str, OpenBao]
) -> None:
    text = _clusters_config(tmp_path, two_clusters, doc_block(doc, "[providers.shared-vault]"))
    plugins = tmp_path / "plugins"
    install_plugin(artifact, plugins, ["openbao", "shared-vault"], text)
    nomad = NomadClient(plugins, decoder)
    for path in ("vault:secret/app/db#password", "secret/app/db#password"):
        assert nomad.fetch("openbao", path).result == {"value": "prod-password"}, path
        assert nomad.fetch("shared-vault", path).result == {"value": "shared-password"}, path

    code, report = check_json(plugins / "secrets" / "shared-vault")
    assert code == 0, report
    shared = report["providers"]["shared-vault"]
    assert shared["settings"]["vault"]["address"] == two_clusters["shared"].address
    assert shared["settings"]["vault"]["kv_mounts"] == {"secret": 2}  # inherited from [vault]
    assert report["providers"]["openbao"]["settings"]["vault"]["address"] == two_clusters["prod"].address
    valid = [i["message"] for i in report["items"] if i["message"].endswith("the token is valid")]
    assert len(valid) == 2 and any(m.startswith("Vault for shared-vault: ") for m in valid)
    assert report["warnings"] == 1  # no [[policy]]


def test_a_provider_borrowing_the_other_clusters_token_is_warned(
    tmp_path: Path, artifact: Path, two_clusters: dict[str, OpenBao]
) -> None:
    text = _clusters_config(tmp_path, two_clusters, doc_block(DOC, "[providers.shared-vault]"))
    text = re.sub(r'token_file = ".*shared-vault-token"\n', "", text)
    install_plugin(artifact, tmp_path, ["shared-vault"], text)
    proc = subprocess.run(
        [str(tmp_path / "secrets" / "shared-vault"), "check"], capture_output=True, text=True, env={}
    )
    assert (
        "WARNING  shared-vault: [providers.shared-vault] sets its own address but takes token_file"
        f" from [vault]: those credentials would go to {two_clusters['shared'].address}"
    ) in proc.stdout
    # and the text report shows where each setting comes from
    assert (
        f"vault.address = '{two_clusters['shared'].address}'  (from [providers.shared-vault])" in proc.stdout
    )
    assert "vault.token_file = " in proc.stdout and "(from [vault])" in proc.stdout


def test_provider_keys_inherit_and_are_checked() -> None:
    parsed = config.parse(
        b'[aws]\nregion = "us-east-2"\nendpoint_url = "http://a"\n'
        b'[vault]\naddress = "https://prod"\nrevoke_token = false\n'
        b'[providers.b]\nstore = "aws-ssm"\nendpoint_url = "http://b"\n'
        b'[providers.v]\nstore = "vault"\naddress = "https://shared"\nauth_method = "approle"\n'
        b'role_id = "r"\n',
        "f",
    )
    b, v, aws = parsed.provider("b"), parsed.provider("v"), parsed.provider("aws")
    assert (b.aws.region, b.aws.endpoint_url, b.own_keys) == ("us-east-2", "http://b", ("endpoint_url",))
    assert (aws.aws.endpoint_url, aws.vault.address) == ("http://a", "https://prod")  # built-in name
    assert (v.vault.address, v.vault.auth_method, v.vault.revoke_token) == (
        "https://shared",
        "approle",
        False,
    )
    assert v.aws == parsed.aws and b.vault == parsed.vault
    assert parsed.vault.auth_method == "token"  # the top level is untouched


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "[providers.x]\nstore = 'aws-sm'\naddress = 'https://v'\n",
            r"providers.x.address in f is a \[vault\] key, and providers.x reads aws-sm",
        ),
        (
            "[providers.x]\nstore = 'vault'\nregion = 'us-east-2'\n",
            r"providers.x.region in f is an \[aws\] key, and providers.x reads vault",
        ),
        ("[providers.x]\nstore = 'vault'\nadress = 'https://v'\n", "unknown key 'providers.x.adress' in f"),
        ("[providers.x]\nstore = 'aws-sm'\nregion = 2\n", "providers.x.region in f must be a string"),
        ("[providers.x]\nstore = 'vault'\nauth_method = 'ldap'\n", "providers.x.auth_method in f is 'ldap'"),
        ("[providers.x]\nstore = 'vault'\nkv_mounts = { a = 3 }\n", "providers.x.kv_mounts.a in f is 3"),
        ("[providers.x]\nregion = 'us-east-2'\n", "providers.x in f has no store"),
    ],
)
def test_provider_key_errors_name_the_key_and_the_file(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config.parse(text.encode(), "f")


def test_a_providers_token_file_is_held_to_the_trust_rules(
    tmp_path: Path, artifact: Path, decoder: Any
) -> None:
    token = tmp_path / "shared-token"
    token.write_text("t")
    token.chmod(0o666)
    install_plugin(
        artifact,
        tmp_path / "plugins",
        ["shared"],
        f'[providers.shared]\nstore = "vault"\naddress = "http://127.0.0.1:9"\ntoken_file = "{token}"\n',
    )
    fetched = NomadClient(tmp_path / "plugins", decoder).fetch("shared", "secret/x")
    assert not fetched.ok
    assert f"the file of providers.shared.token_file {token} is writable by group or others" in (
        fetched.plugin_error or ""
    )


def test_the_node_agent_keeps_each_accounts_client_apart(
    tmp_path: Path, artifact: Path, decoder: Any, moto_endpoint: str, other_account: str
) -> None:
    """The agent's warm clients are keyed by each provider's own settings:
    team-b's fetch never gets team-a's client."""
    import uuid

    from support.agent_process import AgentProcess

    put_secret(aws_client(moto_endpoint, "secretsmanager"), "team/db", '{"password": "account-a"}')
    put_secret(aws_client(other_account, "secretsmanager"), "team/db", '{"password": "account-b"}')
    top = Path("/tmp") / f"ns-teams-{uuid.uuid4().hex[:8]}"  # a socket path stays short
    top.mkdir(mode=0o755)
    text = doc_block(DOC, "[providers.team-b]")
    text = text.replace(
        "[aws]\n",
        f'[aws]\nendpoint_url = "{moto_endpoint}"\n'
        'access_key_id = "testing"\nsecret_access_key = "testing"\n',
    )
    text = text.replace("[providers.team-b]", f'[providers.team-b]\nendpoint_url = "{other_account}"', 1)
    install_plugin(artifact, tmp_path, ["team-a", "team-b"], text + f'[agent]\nsocket = "{top / "a.sock"}"\n')
    nomad = NomadClient(tmp_path, decoder)
    agent = AgentProcess(nomad.executable("team-a"))
    try:
        agent.wait_for("listening")
        for _ in range(2):  # the second round is served by warm clients
            assert nomad.fetch("team-a", "team/db").result == {"password": "account-a"}
            assert nomad.fetch("team-b", "team/db").result == {"password": "account-b"}
        agent.wait_answered(4)
    finally:
        assert agent.stop() == 0
        for child in top.iterdir():
            child.unlink()
        top.rmdir()
