"""Every command in the docs that sets up Vault or OpenBao runs as written
(each ```sh block of README.md and docs/*.md with a ``vault`` command, read
from the markdown, in order) against a fresh OpenBao server, with ``vault``
being the ``bao`` binary; then the plugin, configured as the docs say, reads
with each auth method they set up. Only what cannot exist here is replaced:
Nomad's JWKS address becomes a JWKS server on 127.0.0.1, /etc/nomad-secrets
a temporary directory, Vault's address the test server's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import ROOT
from support.jwt_issuer import new_issuer
from support.nomad import NomadClient, install_plugin
from support.openbao import JwksServer, start, toml

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOMAD_JWKS = "https://nomad.service.consul:4646/.well-known/jwks.json"
VAULT_ADDRESS = "https://vault.service.consul:8200"
ETC = "/etc/nomad-secrets/"


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for number, match in enumerate(re.finditer(rf"^```{language}\n(.*?)^```", text, re.M | re.S)):
            found.append((f"{doc.name}#{language}{number + 1}", match.group(1)))
    return found


def setup_blocks() -> list[tuple[str, str]]:
    return [
        (where, text) for where, text in blocks("sh") if re.search(r"^(\(umask 077; )?vault ", text, re.M)
    ]


def test_the_docs_vault_setup_runs_and_the_plugin_reads_with_it(
    bao_binary: str, tmp_path: Path, artifact: Path, decoder: Any
) -> None:
    etc, plugins = tmp_path / "etc", tmp_path / "plugins"
    for directory in (tmp_path / "server", tmp_path / "bin", etc):
        directory.mkdir()
    server = start(bao_binary, tmp_path / "server")
    (etc / "client-ca.pem").write_text(server.pki.client_ca_pem)
    issuer = new_issuer()
    jwks = JwksServer(issuer)
    try:
        (tmp_path / "bin" / "vault").symlink_to(bao_binary)
        env = {
            "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
            "VAULT_ADDR": server.address,
            "HOME": str(tmp_path),
        }
        printed = {}
        for where, script in setup_blocks():
            proc = subprocess.run(
                [
                    "bash",
                    "-euo",
                    "pipefail",
                    "-c",
                    script.replace(NOMAD_JWKS, jwks.url).replace(ETC, f"{etc}/"),
                ],
                env={**env, "VAULT_TOKEN": server.root},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, (where, proc.stderr)
            printed[where] = proc.stdout
        assert len(printed) >= 6, printed.keys()
        for path in ("app", "nomad/default/web/db", "nomad/default/api/db"):
            server.put_kv("secret", path, {"password": path})
        nomad = NomadClient(plugins, decoder)

        def fetch(vault: dict[str, Any], path: str, env: dict[str, str] | None = None) -> Any:
            keys = "".join(f"{key} = {toml(value)}\n" for key, value in vault.items())
            install_plugin(
                artifact, plugins, ["openbao"], f'[vault]\n{keys}[providers.openbao]\nstore = "vault"\n'
            )
            return nomad.fetch("openbao", path, env or {}, job_id="web")

        # The docs' token, AppRole and cert set-up, each reading as the policy allows.
        approle = next(where for where, text in setup_blocks() if "/role-id" in text)
        role_id = printed[approle].split()[-1]  # what `vault read -field=role_id` printed
        pki = server.pki
        for vault in (
            {"address": server.address, "token_file": etc / "vault-token"},
            {
                "address": server.address,
                "auth_method": "approle",
                "role_id": role_id,
                "secret_id_file": etc / "vault-secret-id",
            },
            {
                "address": server.tls_address,
                "auth_method": "cert",
                "role": "nomad-secrets",
                "ca_cert": pki.server_ca,
                "client_cert": pki.client_cert,
                "client_key": pki.client_key,
            },
        ):
            fetched = fetch(vault, "vault:secret/app")
            assert fetched.result == {"password": "app"}, (vault.get("auth_method"), fetched.plugin_error)
        # The docs' JWT config and role: job web reads its own secret, not job api's.
        config = next(text for _, text in blocks("toml") if 'auth_method = "jwt"' in text)
        install_plugin(
            artifact,
            plugins,
            ["openbao"],
            config.replace(VAULT_ADDRESS, server.address) + '[providers.openbao]\nstore = "vault"\n',
        )
        env_block = {"NOMAD_WORKLOAD_TOKEN": issuer.sign(nomad_namespace="default", nomad_job_id="web")}
        fetched = nomad.fetch("openbao", "vault:secret/nomad/default/web/db", env_block, job_id="web")
        assert fetched.result == {"password": "nomad/default/web/db"}, fetched.plugin_error
        denied = nomad.fetch("openbao", "vault:secret/nomad/default/api/db", env_block, job_id="web")
        assert "permission denied" in str(denied.plugin_error)
    finally:
        server.stop()
        jwks.close()
