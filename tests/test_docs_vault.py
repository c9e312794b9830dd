"""Every command in the docs that sets up Vault or OpenBao runs as written
(each ```sh block of README.md and docs/*.md with a ``vault`` command, read
from the markdown) against a fresh OpenBao server, with ``vault`` being the
``bao`` binary; then the plugin, configured as the docs say, reads with what
they set up. Only what cannot exist here is replaced: Nomad's JWKS address
becomes a JWKS server on 127.0.0.1, Vault's address the test server's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import ROOT
from jwt_issuer import new_issuer
from nomad import NomadClient, install_plugin
from openbao import JwksServer, start

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOMAD_JWKS = "https://nomad.service.consul:4646/.well-known/jwks.json"
VAULT_ADDRESS = "https://vault.service.consul:8200"


def blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for number, match in enumerate(
            re.finditer(rf"^```{language}\n(.*?)^```", doc.read_text(), re.M | re.S)
        ):
            found.append((f"{doc.name}#{language}{number + 1}", match.group(1)))
    return found


def setup_blocks() -> list[tuple[str, str]]:
    return [(where, text) for where, text in blocks("sh") if re.search(r"^vault ", text, re.M)]


def test_the_docs_set_up_vault_commands() -> None:
    assert [where for where, _ in setup_blocks()] == ["policy.md#sh1", "policy.md#sh2"]


def test_the_docs_vault_setup_runs_and_the_plugin_reads_with_it(
    bao_binary: str, tmp_path: Path, artifact: Path, decoder: Any
) -> None:
    (tmp_path / "server").mkdir()
    server = start(bao_binary, tmp_path / "server")
    issuer = new_issuer()
    jwks = JwksServer(issuer)
    try:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "vault").symlink_to(bao_binary)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VAULT_ADDR": server.address, "VAULT_TOKEN": server.root}
        for where, script in setup_blocks():
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script.replace(NOMAD_JWKS, jwks.url)],
                env={**env, "HOME": str(tmp_path)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, (where, proc.stderr)
        for job in ("web", "api"):
            server.put_kv("secret", f"nomad/default/{job}/db", {"password": f"{job}-pw"})
        config = next(text for _, text in blocks("toml") if 'auth_method = "jwt"' in text)
        plugins = tmp_path / "plugins"
        install_plugin(
            artifact,
            plugins,
            ["openbao"],
            config.replace(VAULT_ADDRESS, server.address) + '[providers.openbao]\nstore = "vault"\n',
        )
        env_block = {"NOMAD_WORKLOAD_TOKEN": issuer.sign(nomad_namespace="default", nomad_job_id="web")}
        nomad = NomadClient(plugins, decoder)
        fetched = nomad.fetch("openbao", "vault:secret/nomad/default/web/db", env_block, job_id="web")
        assert fetched.result == {"password": "web-pw"}, fetched.plugin_error
        denied = nomad.fetch("openbao", "vault:secret/nomad/default/api/db", env_block, job_id="web")
        assert "permission denied" in str(denied.plugin_error)
    finally:
        server.stop()
        jwks.close()
