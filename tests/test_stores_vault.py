"""Vault / OpenBao through the built executable, run as Nomad runs it, against
the real OpenBao server (tests/support/openbao.py): the shared store contract, then
Vault's own features. What the server saw is read from its audit log and
its token accessors, not from a double."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.backend_contract import CANARY, StoreContract
from support.nomad import NomadClient
from support.openbao import PROVIDER, ApiError, Vault, start, unique


class TestVaultContract(StoreContract):
    provider = PROVIDER
    label = "Vault"

    @pytest.fixture(autouse=True)
    def _vault(self, vault: Vault) -> None:
        self.vault, self.server = vault, vault.server

    @pytest.fixture
    def nomad(self, vault: Vault) -> NomadClient:
        return vault.nomad

    def put_text(self, name: str, text: str) -> str:
        """Vault holds maps: JSON object text is stored as its fields, other
        text as {"value": text}, which reads back the same way."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        self.server.put_kv("secret", name, data if isinstance(data, dict) else {"value": text})
        return f"vault:secret/{name}"

    def put_binary(self, name: str, data: bytes) -> None:
        return None  # Vault's values are JSON

    def text_key(self, name: str) -> str:
        return f"{name}_value"

    def put_versions(self, name: str, first: str, second: str) -> tuple[str, str]:
        self.server.put_kv("secret", name, {"value": first})
        self.server.put_kv("secret", name, {"value": second})
        return f"vault:secret/{name}?version=1", f"secret/{name}"  # no scheme: the provider's store

    def missing(self) -> str:
        return f"vault:secret/missing-{uuid.uuid4().hex[:8]}"

    def denied(self) -> str:
        self.server.put_kv("secret", "denied/x", {"value": "no"})
        return "vault:secret/denied/x"

    def point_at(self, nomad: NomadClient, url: str, extra: str = "") -> None:
        self.vault.configure(extra, address=url)


# --- KV, versions, engines ------------------------------------------------------------


def test_kv_v1_and_selectors(vault: Vault) -> None:
    name = unique()
    vault.server.put_kv("kv1", name, {"user": "u", "cfg": {"port": 1}})
    fetched, seen = vault.seen(f"vault:kv1/{name}")
    assert fetched.result == {"user": "u", "cfg": '{"port":1}'}
    assert seen == [f"read sys/internal/ui/mounts/kv1/{name}", f"read kv1/{name}"]
    assert vault.fetch(f"vault:kv1/{name}#/cfg/port").result == {"value": "1"}
    assert "the option 'version' applies to KV version 2 only; 'kv1' is a KV version 1 mount" in (
        vault.error(f"vault:kv1/{name}?version=1")
    )


def test_versions_deleted_and_destroyed(vault: Vault) -> None:
    name, server = unique(), vault.server
    for i in range(4):
        server.put_kv("secret", name, {"v": str(i), "password": CANARY})
    server.api("POST", f"secret/delete/{name}", {"versions": [2]})
    server.api("PUT", f"secret/destroy/{name}", {"versions": [1]})
    server.api("DELETE", f"secret/data/{name}")  # the latest, version 4
    assert vault.fetch(f"vault:secret/{name}?version=3").result == {"v": "2", "password": CANARY}
    latest = vault.error(f"vault:secret/{name}")
    assert latest == (
        f"'vault:secret/{name}' (Vault): version 4 of the secret was deleted;"
        " pin another version with ?version=N, or undelete it (vault kv undelete)"
    )
    assert "version 2 of the secret was deleted" in vault.error(f"vault:secret/{name}?version=2")
    destroyed = vault.error(f"vault:secret/{name}?version=1")
    assert "version 1 of the secret was destroyed" in destroyed and "undelete" not in destroyed
    assert f"not found at secret/data/{name} (version 9)" in vault.error(f"vault:secret/{name}?version=9")
    assert vault.error("vault:secret/nope") == (
        "'vault:secret/nope' (Vault): not found at secret/data/nope; check the mount and path"
    )
    assert "not found at kv1/nope" in vault.error("vault:kv1/nope")


def test_other_engines_give_their_data(vault: Vault) -> None:
    """pki and totp answer reads; a lease would be left alone (no sys/leases call)."""
    fetched, seen = vault.seen("ca = vault:pki/cert/ca\ncode = vault:totp/code/app\n")
    assert fetched.result["ca_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert fetched.result["code_code"].isdigit() and len(fetched.result["code_code"]) == 6
    assert not [line for line in seen if "sys/leases" in line]
    assert "'pki' is a 'pki' engine" in vault.error("vault:pki/cert/ca?version=2")


def test_options_are_checked_before_any_request(vault: Vault) -> None:
    for path, text in [
        ("vault:secret/a?version_stage=AWSCURRENT", "unknown option 'version_stage'; options here: version"),
        *[(f"vault:secret/a?version={bad}", "must be a positive integer") for bad in ("0", "-1", "1.5")],
    ]:
        mark = vault.server.audit_mark()
        assert text in vault.error(path)
        assert vault.server.audited(mark) == []


# --- mounts: detection, configuration, reserved names -------------------------------------


def test_preflight_once_per_mount_and_none_when_configured(vault: Vault) -> None:
    a, b = unique(), unique()
    vault.server.put_kv("secret", f"p/{a}", {"a": "1"})
    vault.server.put_kv("secret", f"p/{b}", {"b": "2"})
    vault.server.put_kv("kv1", a, {"c": "3"})
    fetched, seen = vault.seen(f"a = vault:secret/p/{a}\nb = vault:secret/p/{b}\nc = vault:kv1/{a}\n")
    assert fetched.result == {"a_a": "1", "b_b": "2", "c_c": "3"}  # read concurrently
    preflights = sorted(line for line in seen if "sys/internal/ui/mounts" in line)
    assert preflights[0] == f"read sys/internal/ui/mounts/kv1/{a}" and len(preflights) == 2
    vault.configure(kv_mounts={"secret": 2})
    fetched, seen = vault.seen(f"vault:secret/p/{a}")
    assert fetched.result == {"a": "1"}
    assert seen == [f"read secret/data/p/{a}"]


def test_the_longest_configured_mount_wins(vault: Vault) -> None:
    vault.server.mount("team/kv", "kv", options={"version": "2"})
    vault.server.put_kv("team/kv", "app", {"k": "nested"})
    vault.configure(token=vault.server.root, kv_mounts={"team": 1, "team/kv": 2})
    fetched, seen = vault.seen("vault:team/kv/app")
    assert fetched.result == {"k": "nested"} and seen == ["read team/kv/data/app"]
    vault.configure(token=vault.server.root)
    assert "'team/kv' is a mount; name a secret in it, team/kv/<path>" in vault.error("vault:team/kv")


@pytest.mark.parametrize(
    "path",
    [
        "vault:auth/token/lookup-self",
        "vault:sys/seal-status",
        "vault:cubbyhole/x",
        "vault:identity/entity/id",
        "vault:secret",
        "vault:secret//app",
        "vault:secret/../sys/mounts",
        "vault:/secret/app",
    ],
)
def test_vaults_own_apis_are_refused_without_a_request(vault: Vault, path: str) -> None:
    vault.configure(token=vault.server.root)  # even a root token reads nothing there
    mark = vault.server.audit_mark()
    assert vault.error(path).startswith(f"{path!r} (Vault): ")
    assert vault.server.audited(mark) == []


def test_vault_machinery_found_by_the_preflight_is_refused(vault: Vault) -> None:
    vault.configure(token=vault.server.root)
    fetched, seen = vault.seen("vault:ns1/auth/token/lookup-self")
    assert "'ns1/auth/token' is Vault's 'ns_token' mount, not a secrets engine" in str(fetched.plugin_error)
    assert seen == ["read sys/internal/ui/mounts/ns1/auth/token/lookup-self"]
    vault.server.mount("team/auth", "kv", options={"version": "2"})
    vault.server.put_kv("team/auth", "app", {"v": "ok"})
    refused = vault.error("vault:team/auth/app")
    assert "the mount 'team/auth' is named like Vault's own API (auth/)" in refused
    assert "the operator lists it in vault.kv_mounts" in refused
    vault.configure(token=vault.server.root, kv_mounts={"team/auth": 2})
    assert vault.fetch("vault:team/auth/app").result == {"v": "ok"}


# --- namespaces ---------------------------------------------------------------------------


def test_namespace_setting_and_namespace_in_the_path(vault: Vault) -> None:
    server = vault.server
    server.policy("reader", 'path "kv/data/app/*" { capabilities = ["read"] }', namespace="ns1")
    vault.configure(namespace="ns1", token=server.token("reader", namespace="ns1"))
    fetched, seen = vault.seen("vault:kv/app/db")
    assert fetched.result == {"where": "ns1"}
    assert seen == ["read ns1/sys/internal/ui/mounts/kv/app/db", "read ns1/kv/data/app/db"]
    assert "permission denied in namespace 'ns1'" in vault.error("vault:kv/other/x")
    vault.configure(token=server.root)  # no vault.namespace: the namespace written in the path
    assert vault.fetch("a = vault:ns1/kv/app/db\nb = vault:ns1/child/kv/app/db\n").result == {
        "a_where": "ns1",
        "b_where": "ns1/child",
    }


def test_a_child_namespace_under_the_configured_one(vault: Vault) -> None:
    """Finding 2 of issue #9: with namespace = "ns1", vault:child/kv/app/db
    reads ns1/child's kv mount, as `bao kv get -namespace=ns1 child/kv/app/db`
    does, with or without kv_mounts."""
    server = vault.server
    cli = json.loads(server.cli("kv", "get", "-namespace=ns1", "-format=json", "child/kv/app/db"))
    assert cli["data"]["data"] == {"where": "ns1/child"}
    # OpenBao 2.7's preflight answers for a child namespace only a token whose
    # policy grants "*" (its mount check uses the child's relative path); root here.
    vault.configure(namespace="ns1", token=server.root)
    fetched, seen = vault.seen("vault:child/kv/app/db")
    assert fetched.result == cli["data"]["data"]
    assert seen == ["read ns1/sys/internal/ui/mounts/child/kv/app/db", "read ns1/child/kv/data/app/db"]
    server.policy("child-reader", 'path "child/kv/data/*" { capabilities = ["read"] }', namespace="ns1")
    token = server.token("child-reader", namespace="ns1")
    vault.configure(namespace="ns1", token=token, kv_mounts={"child/kv": 2})
    fetched, seen = vault.seen("vault:child/kv/app/db")
    assert fetched.result == cli["data"]["data"] and seen == ["read ns1/child/kv/data/app/db"]


# --- auth methods ---------------------------------------------------------------------------


def test_token_file_is_never_revoked(vault: Vault) -> None:
    vault.server.put_kv("secret", "t/app", {"v": "1"})
    fetched, seen = vault.seen("vault:secret/t/app")
    assert fetched.result == {"v": "1"}
    assert not [line for line in seen if "revoke" in line]
    assert vault.server.api("GET", "auth/token/lookup-self", token=vault.bao.plugin_token)


def test_approle_logs_in_once_and_the_token_is_revoked_on_the_server(vault: Vault) -> None:
    names = [unique() for _ in range(4)]
    for name in names:
        vault.server.put_kv("secret", name, {"name": name})
    vault.approle()
    before = vault.server.accessors()
    fetched, seen = vault.seen("".join(f"r{i} = vault:secret/{n}\n" for i, n in enumerate(names)))
    assert fetched.result == {f"r{i}_name": n for i, n in enumerate(names)}
    assert seen.count("update auth/approle/login") == 1
    assert seen[-1] == "update auth/token/revoke-self"
    assert vault.server.accessors() == before  # the login's token is gone from the server
    vault.approle(revoke_token=False)
    before = vault.server.accessors()
    assert vault.fetch(f"vault:secret/{names[0]}").ok
    left = vault.server.accessors() - before
    assert len(left) == 1  # kept, as configured; its TTL ends it
    vault.server.api("POST", "auth/token/revoke-accessor", {"accessor": left.pop()})


def test_approle_failure(vault: Vault) -> None:
    vault.configure(
        auth_method="approle", role_id=vault.bao.role_id, secret_id_file=vault.file("sid", CANARY)
    )
    fetched, seen = vault.seen("a = vault:secret/a\nb = vault:secret/b\n")
    message = str(fetched.plugin_error)
    assert "login with the approle auth method at auth/approle/ failed" in message
    assert "(Vault said: invalid role or secret ID)" in message
    assert "check vault.role_id and vault.secret_id_file" in message
    assert CANARY not in message and vault.bao.role_id not in message
    assert seen == ["update auth/approle/login"]  # shared by both references, not retried


def test_jwt_login_with_the_workload_identity(vault: Vault) -> None:
    """Vault enforces per-job access: the role's templated policy lets job
    "web" read secret/nomad/default/web/*, nothing else."""
    vault.server.put_kv("secret", "nomad/default/web/db", {"password": "web-pw"})
    vault.server.put_kv("secret", "nomad/default/api/db", {"password": "api-pw"})
    vault.configure(auth_method="jwt", auth_mount="jwt-nomad", role="nomad-workloads")
    jwt = vault.bao.issuer.sign(nomad_namespace="default", nomad_job_id="web", sub="default:web")
    env = {"NOMAD_WORKLOAD_TOKEN": jwt}
    before = vault.server.accessors()
    fetched = vault.fetch("vault:secret/nomad/default/web/db", env, job_id="web")
    assert fetched.result == {"password": "web-pw"}
    assert vault.server.accessors() == before
    assert "permission denied" in vault.error("vault:secret/nomad/default/api/db", env, job_id="web")


def test_jwt_login_with_a_jwks_url(vault: Vault) -> None:
    name = unique()
    vault.server.put_kv("secret", name, {"k": "v"})
    vault.configure(auth_method="jwt", auth_mount="jwt-jwks", role="nomad-workloads")
    jwt = vault.bao.issuer.sign(nomad_namespace="default", nomad_job_id="api", sub="default:api")
    fetched, seen = vault.seen(f"vault:secret/{name}", {"NOMAD_WORKLOAD_TOKEN": jwt}, job_id="api")
    assert fetched.result == {"k": "v"} and seen[0] == "update auth/jwt-jwks/login"


def test_jwt_rejected_by_vault_and_another_jobs_token(vault: Vault) -> None:
    vault.configure(auth_method="jwt", auth_mount="jwt-nomad", role="nomad-workloads")
    other_ns = vault.bao.issuer.sign(nomad_namespace="prod", nomad_job_id="web", sub="prod:web")
    message = vault.error(
        "vault:secret/x", {"NOMAD_WORKLOAD_TOKEN": other_ns}, job_id="web", namespace="prod"
    )
    assert "login with the jwt auth method at auth/jwt-nomad/ failed (Vault said: " in message
    assert "check vault.role and the role's bound audiences and claims" in message
    stolen = vault.bao.issuer.sign(nomad_namespace="default", nomad_job_id="web", exp=int(time.time()) + 300)
    fetched, seen = vault.seen("vault:secret/x", {"NOMAD_WORKLOAD_TOKEN": stolen}, job_id="api")
    assert "nomad_job_id claim is not 'api'" in str(fetched.plugin_error) and seen == []
    for env, text in [
        ({}, "add an identity block"),
        ({"NOMAD_WORKLOAD_TOKEN": "${NOMAD_TOKEN_x}"}, "not a JWT"),
    ]:
        assert text in vault.error("vault:secret/x", env)


def test_cert_login_over_tls(vault: Vault) -> None:
    name = unique()
    vault.server.put_kv("secret", name, {"v": "over tls"})
    vault.cert(role="nomad")
    before = vault.server.accessors()
    fetched, seen = vault.seen(f"vault:secret/{name}")
    assert fetched.result == {"v": "over tls"}
    assert seen[0] == "update auth/cert/login" and seen[-1] == "update auth/token/revoke-self"
    assert vault.server.accessors() == before
    vault.cert(role="nobody")
    assert "login with the cert auth method at auth/cert/ failed (Vault said: " in vault.error(
        "vault:secret/x"
    )


def test_tls_is_always_verified(vault: Vault) -> None:
    """Without vault.ca_cert the system's trust store applies, which does not
    know the test CA; nothing a job sets can turn that off."""
    address = vault.server.tls_address
    vault.configure(address=address)
    mark = vault.server.audit_mark()
    message = vault.error("vault:secret/x")
    assert f"TLS with Vault at {address} failed" in message and "certificate verify failed" in message
    for env in ({"VAULT_SKIP_VERIFY": "true"}, {"VAULT_CACERT": str(vault.server.pki.server_ca)}):
        assert "does not read" in vault.error("vault:secret/x", env)
    assert vault.server.audited(mark) == []
    vault.configure(address=address, ca_cert=vault.server.pki.server_ca)
    assert "not found at secret/data/x" in vault.error("vault:secret/x")


# --- denials and outages ---------------------------------------------------------------------


def test_policy_denial_names_the_api_path(vault: Vault) -> None:
    name = unique()
    vault.server.put_kv("secret", name, {"password": CANARY})
    vault.server.policy("narrow", 'path "secret/data/other/*" { capabilities = ["read"] }')
    vault.configure(token=vault.server.token("narrow"), kv_mounts={"secret": 2})
    assert vault.error(f"vault:secret/{name}") == (
        f"'vault:secret/{name}' (Vault): permission denied;"
        f" the Vault policy of this token needs read on 'secret/data/{name}'"
    )


def test_a_dead_token_is_named_and_a_policy_denial_stays_one(vault: Vault) -> None:
    """Finding 1 of issue #9: OpenBao answers a revoked or unknown token with a
    bare 403 "permission denied", as it does a policy denial; the plugin tells
    them apart by asking once whether the token is alive."""
    server, name = vault.server, unique()
    server.put_kv("secret", name, {"k": "v"})
    revoked = server.token("plugin")
    server.api("POST", "auth/token/revoke", {"token": revoked})
    for token in (revoked, "s.unknown-token"):
        extras: list[dict[str, Any]] = [{}, {"kv_mounts": {"secret": 2}}]
        for extra in extras:  # the preflight's 403, then the read's
            vault.configure(token=token, **extra)
            message = vault.error(f"vault:secret/{name}")
            assert message == (
                f"'vault:secret/{name}' (Vault): Vault does not accept the plugin's token"
                " (invalid, expired or revoked); the operator renews the token in vault.token_file"
            ), message
            assert token not in message
    server.policy("kv1-only", 'path "kv1/*" { capabilities = ["read"] }')
    vault.configure(token=server.token("kv1-only"))
    assert f"permission denied looking up the mount of 'secret/{name}'" in vault.error(f"vault:secret/{name}")
    vault.configure(token=server.token("kv1-only"), kv_mounts={"secret": 2})
    assert "permission denied; the Vault policy of this token needs read on" in vault.error(
        f"vault:secret/{name}"
    )


def test_throttling_pauses_even_when_retry_after_is_zero(vault: Vault) -> None:
    """Finding 4 of issue #9: OpenBao's 429 says "Retry-After: 0", and the
    retries ran back to back and gave up in 0.1 s; the pause has a floor."""
    server = vault.server
    server.put_kv("throttled", "app", {"k": "v"})
    server.api("POST", "sys/quotas/config", {"enable_rate_limit_response_headers": True})
    quota = "sys/quotas/rate-limit/throttled"
    server.api("POST", quota, {"path": "throttled/", "rate": 1, "interval": "1s"})
    try:
        vault.configure(kv_mounts={"throttled": 2})
        server.api("GET", "throttled/data/app")  # this second's one request
        assert vault.fetch("vault:throttled/app").result == {"k": "v"}
        server.api("POST", quota, {"path": "throttled/", "rate": 1, "interval": "20s"})
        with contextlib.suppress(ApiError):
            server.api("GET", "throttled/data/app")
        # Retry-After (19 s) is beyond the deadline: no pause, the answer at once.
        message = vault.error("vault:throttled/app")
        assert "Vault rate-limited the request (Vault said: request path" in message
        assert "rate limit quota exceeded" in message
    finally:
        server.api("DELETE", quota)


def test_hints_point_the_right_way(vault: Vault) -> None:
    """Finding 5 of issue #9: five answers of a real server whose hints
    pointed elsewhere."""
    server, name = vault.server, unique()
    server.put_kv("secret", name, {"k": "v"})
    # A wrong auth_mount is a 403 (no auth method there), not a 404.
    vault.approle(auth_mount="no-such-approle")
    message = vault.error(f"vault:secret/{name}")
    assert "no auth method answers at auth/no-such-approle/ (HTTP 403)" in message
    assert "check vault.auth_mount" in message and "role_id" not in message
    # A path that needs a write (pki/issue/<role>) is a 405.
    vault.configure()
    message = vault.error("vault:pki/issue/web")
    assert "Vault serves pki/issue/web to writes only (HTTP 405)" in message
    assert "the plugin never writes" in message
    # pki/ca_chain answers PEM, not JSON: the path, not the address.
    message = vault.error("vault:pki/ca_chain")
    assert "Vault answered pki/ca_chain with application/pkix-cert, not JSON" in message
    assert "read the JSON form of the same data" in message and "vault.address" not in message
    # KV v2 read as v1 (a wrong kv_mounts): the 404 keeps Vault's warning.
    vault.configure(token=server.root, kv_mounts={"secret": 1})
    message = vault.error(f"vault:secret/{name}")
    assert (
        f"not found at secret/{name} (Vault said: Invalid path for a versioned K/V secrets engine" in message
    )
    # http:// to a TLS listener.
    vault.configure(address=server.tls_address.replace("https://", "http://"))
    message = vault.error(f"vault:secret/{name}")
    assert "this address speaks TLS: use https://" in message


def test_sealed_server(bao_binary: str, vault: Vault, tmp_path: Path) -> None:
    """On a server of its own: sealing the session's would stop every other test."""
    (tmp_path / "sealed").mkdir()
    server = start(bao_binary, tmp_path / "sealed")
    try:
        vault.configure(address=server.address, token=server.root)
        server.cli("operator", "seal")
        message = vault.error("vault:secret/app")
        assert "Vault is sealed or unavailable (Vault said: Vault is sealed)" in message
        assert "check the Vault cluster's status (vault status)" in message
    finally:
        server.stop()


def test_check_tries_the_vault_token(vault: Vault) -> None:
    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(vault.nomad.executable(PROVIDER)), "check"],
            capture_output=True,
            text=True,
            env={},
            timeout=60,
        )

    proc = check()
    assert proc.returncode == 0, proc.stdout
    assert "openbao -> Vault ([providers.openbao])" in proc.stdout and "the token is valid" in proc.stdout
    vault.approle()
    before = vault.server.accessors()
    proc = check()
    assert proc.returncode == 0 and "Vault" in proc.stdout, proc.stdout
    assert vault.server.accessors() == before  # the check's login token is revoked
    vault.configure(token="s.not-a-token")
    proc = check()
    assert proc.returncode == 1 and "PROBLEM  Vault" in proc.stdout and "s.not-a-token" not in proc.stdout


def test_policy_applies_to_vault_references(vault: Vault) -> None:
    vault.configure('[[policy]]\nnamespace = "payments"\nallow = ["vault:secret/payments/*"]\n')
    vault.server.put_kv("secret", "payments/key", {"k": "pay"})
    assert vault.fetch("vault:secret/payments/key", namespace="payments").result == {"k": "pay"}
    fetched, seen = vault.seen("vault:secret/other", namespace="payments")
    assert "does not let" in str(fetched.plugin_error) and seen == []


@pytest.mark.parametrize(
    ("vault_keys", "text"),
    [
        ({"address": "vault.example:8200"}, "vault.address must be an http:// or https:// URL"),
        ({"token_file": "/nonexistent/token"}, "vault.token_file /nonexistent/token: No such file"),
        ({"auth_method": "approle"}, "needs vault.role_id"),
        ({"auth_method": "approle", "role_id": "r"}, "needs vault.secret_id_file"),
        ({"auth_method": "cert"}, "https:// vault.address and vault.client_cert"),
        ({"ca_cert": "/nonexistent/ca.pem"}, "cannot read vault.ca_cert"),
    ],
)
def test_config_errors(vault: Vault, vault_keys: dict[str, str], text: str) -> None:
    vault.configure(**vault_keys)
    mark = vault.server.audit_mark()
    assert text in vault.error("vault:secret/x")
    assert vault.server.audited(mark) == []


def test_token_file_must_hold_one_token(vault: Vault) -> None:
    for text in (" \n", f"{CANARY}\n{CANARY}"):
        vault.configure(token_file=vault.file("bad-token", text))
        assert "does not hold a Vault token" in vault.error("vault:secret/x")


def test_no_message_carries_a_credential_or_value(vault: Vault, bao_binary: str) -> None:
    """Every failure above, once more, swept for the token, secret_id, JWT and values."""
    name, server = unique(), vault.server
    server.put_kv("secret", name, {"password": CANARY})
    server.put_kv("secret", name, {"password": CANARY + "-2"})
    server.api("DELETE", f"secret/data/{name}")
    server.put_kv("kv1", name, {"password": CANARY})
    for path in (
        f"vault:secret/{name}",
        f"vault:secret/{name}?version=7",
        f"vault:kv1/{name}?version=1",
        "vault:nomount/x",
        f"vault:secret/{name}?version=1#nope",
    ):
        assert CANARY not in vault.error(path)
    secret_id = vault.bao.secret_id()
    vault.configure(
        auth_method="approle", role_id=vault.bao.role_id, secret_id_file=vault.file("s", secret_id[:-1])
    )
    assert secret_id[:-1] not in vault.error(f"vault:secret/{name}")
    vault.configure(auth_method="jwt", auth_mount="jwt-nomad")
    jwt = vault.bao.issuer.sign(nomad_namespace="default", nomad_job_id="web", aud="other")
    message = vault.error(f"vault:secret/{name}", {"NOMAD_WORKLOAD_TOKEN": jwt}, job_id="web")
    assert jwt.split(".")[2] not in message
