"""Vault / OpenBao through the built executable, against the Vault HTTP API
simulator (tests/vault_sim.py, a test double: no Vault binary installs
here): the shared store contract, then Vault's own features."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_contract import StoreContract
from jwt_issuer import Issuer, new_issuer
from nomad import NomadClient
from pki import Pki, make_pki
from vault_sim import JwtRole, VaultSimulator

TOKEN = "hvs.plugin-token-" + uuid.uuid4().hex
POLICY = {
    "secret/data/*": ["read"],
    "kv1/*": ["read"],
    "database/creds/*": ["read"],
    "secret/data/denied/*": ["deny"],
}


@pytest.fixture(scope="module")
def vault() -> Iterator[VaultSimulator]:
    with VaultSimulator() as sim:
        sim.enable_kv("secret", 2)
        sim.enable_kv("kv1", 1)
        sim.enable_engine(
            "database",
            lambda sub: {"username": "v-app-1", "password": "generated"} if sub == "creds/app" else None,
            engine_type="database",
        )
        sim.add_token(TOKEN, POLICY)
        yield sim


def vault_config(address: str, token_file: Path, extra: str = "", vault_extra: str = "") -> str:
    return (
        f'[vault]\naddress = "{address}"\ntoken_file = "{token_file}"\n{vault_extra}'
        '[providers.openbao]\nstore = "vault"\n' + extra
    )


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def openbao(
    plugin_dir: Path, decoder: Any, artifact: Path, vault: VaultSimulator, token_file: Path
) -> NomadClient:
    """The plugin installed as `openbao` (and nothing else), a provider
    whose store is Vault."""
    (plugin_dir / "secrets" / "aws").unlink()
    (plugin_dir / "secrets" / "openbao").symlink_to(artifact)
    nomad = NomadClient(plugin_dir, decoder)
    write(nomad, vault_config(vault.address, token_file))
    return nomad


def write(nomad: NomadClient, text: str) -> None:
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    path.write_text(text)
    path.chmod(0o600)


class TestVaultContract(StoreContract):
    provider = "openbao"
    label = "Vault"

    @pytest.fixture(autouse=True)
    def _vault(self, vault: VaultSimulator, token_file: Path, openbao: NomadClient) -> None:
        self.sim, self.token_file = vault, token_file

    @pytest.fixture
    def nomad(self, openbao: NomadClient) -> NomadClient:  # the contract's client is `openbao`
        return openbao

    def put_text(self, name: str, text: str) -> str:
        """Vault holds maps: JSON object text is stored as its fields, other
        text as {"value": text}, which reads back the same way."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        self.sim.put_kv("secret", name, data if isinstance(data, dict) else {"value": text})
        return f"vault:secret/{name}"

    def put_binary(self, name: str, data: bytes) -> None:
        return None  # Vault's values are JSON

    def text_key(self, name: str) -> str:
        return f"{name}_value"

    def put_versions(self, name: str, first: str, second: str) -> tuple[str, str]:
        self.sim.put_kv("secret", name, {"value": first})
        self.sim.put_kv("secret", name, {"value": second})
        return f"vault:secret/{name}?version=1", f"secret/{name}"  # no scheme: the provider's store

    def missing(self) -> str:
        return f"vault:secret/missing-{uuid.uuid4().hex[:8]}"

    def denied(self) -> str:
        self.sim.put_kv("secret", "denied/x", {"value": "no"})
        return "vault:secret/denied/x"

    def point_at(self, nomad: NomadClient, url: str, extra: str = "") -> None:
        write(nomad, vault_config(url, self.token_file, extra))


# --- Vault's own features ----------------------------------------------------------


def fetch(nomad: NomadClient, path: str, env: dict[str, str] | None = None, **kw: Any) -> Any:
    return nomad.fetch("openbao", path, env or {}, **kw)


def error_of(fetched: Any) -> str:
    assert fetched.run.returncode == 0 and not fetched.ok and fetched.result == {}, fetched
    assert TOKEN not in str(fetched.plugin_error)
    return str(fetched.plugin_error)


def test_kv_v1_and_selectors(openbao: NomadClient, vault: VaultSimulator) -> None:
    vault.put_kv("kv1", "app", {"user": "u", "cfg": {"port": 1}})
    assert fetch(openbao, "vault:kv1/app").result == {"user": "u", "cfg": '{"port":1}'}
    assert fetch(openbao, "vault:kv1/app#/cfg/port").result == {"value": "1"}
    assert "KV version 2 only" in error_of(fetch(openbao, "vault:kv1/app?version=1"))


def test_deleted_and_destroyed_versions_read_as_not_found(
    openbao: NomadClient, vault: VaultSimulator
) -> None:
    name = "versions-" + uuid.uuid4().hex[:6]
    for i in range(3):
        vault.put_kv("secret", name, {"v": str(i)})
    vault.delete_kv_version("secret", name, 2)
    vault.destroy_kv_version("secret", name, 1)
    assert fetch(openbao, f"vault:secret/{name}").result == {"v": "2"}
    assert "version 2 of the secret was deleted" in error_of(fetch(openbao, f"vault:secret/{name}?version=2"))
    assert "version 1 of the secret was destroyed" in error_of(
        fetch(openbao, f"vault:secret/{name}?version=1")
    )


def test_other_engines_return_their_data(openbao: NomadClient) -> None:
    assert fetch(openbao, "vault:database/creds/app").result == {
        "username": "v-app-1",
        "password": "generated",
    }


def test_preflight_once_per_mount_and_none_when_configured(
    openbao: NomadClient, vault: VaultSimulator, token_file: Path
) -> None:
    vault.put_kv("secret", "p/a", {"a": "1"})
    vault.put_kv("secret", "p/b", {"b": "2"})
    vault.clear_requests()
    assert fetch(openbao, "a = vault:secret/p/a\nb = vault:secret/p/b\n").result == {"a_a": "1", "b_b": "2"}
    assert len([r for r in vault.requests if "sys/internal/ui/mounts" in r.path]) == 1
    write(openbao, vault_config(vault.address, token_file, vault_extra="kv_mounts = { secret = 2 }\n"))
    vault.clear_requests()
    assert fetch(openbao, "vault:secret/p/a").result == {"a": "1"}
    assert [r.path for r in vault.requests] == ["/v1/secret/data/p/a"]


@pytest.mark.parametrize(
    "path",
    ["vault:auth/token/lookup-self", "vault:sys/seal-status", "vault:cubbyhole/x", "vault:secret/../sys/x"],
)
def test_vaults_own_apis_are_refused_without_a_request(
    openbao: NomadClient, vault: VaultSimulator, path: str
) -> None:
    vault.clear_requests()
    error_of(fetch(openbao, path))
    assert vault.requests == []


def test_sealed(openbao: NomadClient, vault: VaultSimulator) -> None:
    vault.sealed = True
    try:
        assert "sealed" in error_of(fetch(openbao, "vault:secret/anything"))
    finally:
        vault.sealed = False


def test_namespace_header(openbao: NomadClient, vault: VaultSimulator, tmp_path: Path) -> None:
    vault.create_namespace("team-a")
    vault.enable_kv("secret", 2, namespace="team-a")
    vault.put_kv("secret", "app", {"ns": "team-a"}, namespace="team-a")
    vault.add_token("hvs.team-a-token", POLICY, namespace="team-a")
    team_token = tmp_path / "team-token"
    team_token.write_text("hvs.team-a-token")
    team_token.chmod(0o600)
    write(openbao, vault_config(vault.address, team_token, vault_extra='namespace = "team-a"\n'))
    assert fetch(openbao, "vault:secret/app").result == {"ns": "team-a"}
    assert all(r.headers.get("x-vault-namespace") == "team-a" for r in vault.requests_to("secret/data/app"))


def test_approle_login_and_revoke(openbao: NomadClient, vault: VaultSimulator, tmp_path: Path) -> None:
    secret_id = tmp_path / "secret-id"
    secret_id.write_text("approle-secret-" + uuid.uuid4().hex)
    secret_id.chmod(0o600)
    vault.enable_approle("nomad", "role-123", secret_id.read_text(), {"secret/data/*": ["read"]})
    vault.put_kv("secret", "approle-app", {"k": "v"})
    write(
        openbao,
        f'[vault]\naddress = "{vault.address}"\nauth_method = "approle"\nrole_id = "role-123"\n'
        f'secret_id_file = "{secret_id}"\n[providers.openbao]\nstore = "vault"\n',
    )
    before = len(vault.revoked_tokens)
    fetched = fetch(openbao, "vault:secret/approle-app")
    assert fetched.result == {"k": "v"}
    assert len(vault.revoked_tokens) == before + 1  # the login's token is revoked at the end
    assert secret_id.read_text().encode() not in fetched.run.stdout


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return new_issuer()


def jwt_config(vault: VaultSimulator, issuer: Issuer, extra: str = "") -> str:
    if "jwt-nomad" not in getattr(vault, "_test_jwt_mounts", set()):
        role = JwtRole(
            bound_claims={"nomad_namespace": "default"},
            user_claim="nomad_job_id",
            policies={"secret/data/{{claims.nomad_job_id}}/*": ["read"]},
        )
        vault.enable_jwt(
            mount="jwt-nomad",
            jwks=issuer.jwks(),
            bound_audiences=["vault.io"],
            roles={"nomad-workloads": role},
        )
        vault._test_jwt_mounts = {"jwt-nomad"}  # type: ignore[attr-defined]
    return (
        f'[vault]\naddress = "{vault.address}"\nauth_method = "jwt"\nauth_mount = "jwt-nomad"\n'
        f'role = "nomad-workloads"\n[providers.openbao]\nstore = "vault"\n' + extra
    )


def test_workload_identity_jwt_login(openbao: NomadClient, vault: VaultSimulator, issuer: Issuer) -> None:
    """Vault enforces per-job access: the JWT role's templated policy lets
    job "web" read secret/web/*, nothing else."""
    write(openbao, jwt_config(vault, issuer))
    vault.put_kv("secret", "web/db", {"password": "web-pw"})
    vault.put_kv("secret", "api/db", {"password": "api-pw"})
    token = issuer.sign(nomad_namespace="default", nomad_job_id="web", sub="default:web")
    env = {"NOMAD_WORKLOAD_TOKEN": token}
    assert fetch(openbao, "vault:secret/web/db", env, job_id="web").result == {"password": "web-pw"}
    message = error_of(fetch(openbao, "vault:secret/api/db", env, job_id="web"))
    assert "permission denied" in message and token not in message


def test_another_jobs_token_is_refused_before_login(
    openbao: NomadClient, vault: VaultSimulator, issuer: Issuer
) -> None:
    write(openbao, jwt_config(vault, issuer))
    stolen = issuer.sign(nomad_namespace="default", nomad_job_id="web", exp=int(time.time()) + 300)
    vault.clear_requests()
    message = error_of(fetch(openbao, "vault:secret/web/db", {"NOMAD_WORKLOAD_TOKEN": stolen}, job_id="api"))
    assert "nomad_job_id claim is not 'api'" in message
    assert vault.requests == []


def test_policy_applies_to_vault_references(
    openbao: NomadClient, vault: VaultSimulator, token_file: Path
) -> None:
    policy = '[[policy]]\nnamespace = "payments"\nallow = ["vault:secret/payments/*"]\n'
    write(openbao, vault_config(vault.address, token_file, extra=policy))
    vault.put_kv("secret", "payments/key", {"k": "pay"})
    assert fetch(openbao, "vault:secret/payments/key", namespace="payments").result == {"k": "pay"}
    vault.clear_requests()
    assert "does not let" in error_of(fetch(openbao, "vault:secret/other", namespace="payments"))
    assert vault.requests == []


def test_check_tries_the_vault_token(openbao: NomadClient, vault: VaultSimulator, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(openbao.executable("openbao")), "check"], capture_output=True, text=True, env={}, timeout=60
    )
    assert proc.returncode == 0, proc.stdout
    assert "openbao -> Vault ([providers.openbao])" in proc.stdout and "the token is valid" in proc.stdout
    bad = tmp_path / "bad-token"
    bad.write_text("hvs.not-a-token")
    bad.chmod(0o600)
    write(openbao, vault_config(vault.address, bad))
    proc = subprocess.run(
        [str(openbao.executable("openbao")), "check"], capture_output=True, text=True, env={}, timeout=60
    )
    assert proc.returncode == 1 and "PROBLEM  Vault" in proc.stdout and "hvs.not-a-token" not in proc.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_client_certificate_login(openbao: NomadClient, pki: Pki) -> None:
    """TLS trust and the client certificate come from the operator config."""
    with VaultSimulator(tls=pki.server) as sim:
        sim.enable_kv("secret", 2)
        sim.put_kv("secret", "tls-app", {"v": "over tls"})
        sim.enable_cert(certs={"nomad": (pki.client_ca_pem, {"secret/data/*": ["read"]})})
        tls = (
            f'ca_cert = "{pki.server_ca}"\nclient_cert = "{pki.client_cert}"\n'
            f'client_key = "{pki.client_key}"\nauth_method = "cert"\nrole = "nomad"\n'
        )
        write(openbao, f'[vault]\naddress = "{sim.address}"\n{tls}[providers.openbao]\nstore = "vault"\n')
        assert sim.address.startswith("https://")
        assert fetch(openbao, "vault:secret/tls-app").result == {"v": "over tls"}
        assert len(sim.requests_to("auth/cert/login", "POST")) == 1
        assert len(sim.revoked_tokens) == 1  # the login's token, at the end of the fetch


def test_tls_is_always_verified(openbao: NomadClient, pki: Pki, token_file: Path) -> None:
    """Without vault.ca_cert the system's trust store applies, which does not
    know the test CA: the fetch fails; nothing a job sets can turn that off."""
    with VaultSimulator(tls=pki.server) as sim:
        sim.enable_kv("secret", 2)
        sim.put_kv("secret", "tls-app", {"v": "over tls"})
        write(openbao, vault_config(sim.address, token_file))
        message = error_of(fetch(openbao, "vault:secret/tls-app"))
        assert f"TLS with Vault at {sim.address} failed" in message and "certificate verify failed" in message
        for env in ({"VAULT_SKIP_VERIFY": "true"}, {"VAULT_CACERT": str(pki.server_ca)}):
            assert "does not read" in error_of(fetch(openbao, "vault:secret/tls-app", env))
        assert sim.requests_to("secret/data/tls-app") == []
