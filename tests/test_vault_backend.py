"""The Vault backend against the Vault simulator (tests/vault_sim.py).

Unit level: ``Vault`` is built directly, as open_backend does. A small
scripted HTTP server stands in where the simulator has no switch (429,
malformed answers). Credentials and secret values are canaries, and every
failure message is checked not to contain any of them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt_issuer import Issuer
from netutil import HangingServer, dead_port_url
from pki import Pki, make_pki
from vault_sim import JwtRole, VaultSimulator

from nomad_secrets.backends.vault import Vault
from nomad_secrets.config import VaultSettings
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import (
    AccessDenied,
    ConfigError,
    NotFound,
    PluginError,
    RequestError,
    StoreError,
    Throttled,
    TimedOut,
    Unreachable,
)
from nomad_secrets.reference import Reference, parse_reference
from nomad_secrets.request import JobOptions

TOKEN = "hvs.CANARY-TOKEN-7f3a9c"
SECRET_ID = "CANARY-SECRET-ID-51c2e8"
ROLE_ID = "CANARY-ROLE-ID-0b44d1"
VALUE = "CANARY-VALUE-9d8e7f"
READ_ALL = {"secret/*": ["read"], "kv/*": ["read"], "database/*": ["read"], "team/*": ["read"]}
PREFLIGHT = "sys/internal/ui/mounts/"


# -- helpers -------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[VaultSimulator]:
    with VaultSimulator() as vault:
        vault.enable_kv("secret", 2)
        vault.enable_kv("kv", 1, explicit_version=False)
        vault.add_token(TOKEN, READ_ALL)
        yield vault


def write(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def make(
    tmp_path: Path,
    address: str,
    *,
    deadline: float = 5.0,
    options: JobOptions | None = None,
    **settings: Any,
) -> Vault:
    """A Vault backend; token auth with TOKEN unless told otherwise."""
    if settings.get("auth_method", "token") == "token":
        settings.setdefault("token_file", write(tmp_path / "token", TOKEN + "\n"))
    return Vault(
        VaultSettings(address=address, **settings),
        options or JobOptions(),
        Deadline(deadline),
    )


def ref(text: str) -> Reference:
    return parse_reference(text)


def failure(backend: Vault, text: str) -> PluginError:
    with pytest.raises(PluginError) as caught:
        backend.read(ref(text))
    return caught.value


def assert_clean(message: str, *canaries: str) -> None:
    for canary in (TOKEN, SECRET_ID, ROLE_ID, VALUE, "CANARY", *canaries):
        assert canary not in message, message
    assert "Traceback" not in message


def preflights(sim: VaultSimulator) -> list[str]:
    return [r.api_path for r in sim.requests if r.api_path.startswith(PREFLIGHT)]


# -- KV ------------------------------------------------------------------------


def test_kv2_latest_version_and_headers(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "app/db", {"password": "old"})
    sim.put_kv("secret", "app/db", {"password": VALUE, "port": 5432})
    backend = make(tmp_path, sim.address)
    assert backend.read(ref("vault:secret/app/db")) == {"password": VALUE, "port": 5432}
    read = sim.requests_to("secret/data/app/db", "GET")
    assert len(read) == 1
    assert read[0].query == {}
    for request in sim.requests:
        assert request.headers["x-vault-token"] == TOKEN
        assert request.headers["x-vault-request"] == "true"
        assert "x-vault-namespace" not in request.headers


def test_kv2_pinned_version(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "app/db", {"password": "first"})
    sim.put_kv("secret", "app/db", {"password": "second"})
    backend = make(tmp_path, sim.address)
    assert backend.read(ref("vault:secret/app/db?version=1")) == {"password": "first"}
    assert sim.requests_to("secret/data/app/db")[0].query == {"version": "1"}


def test_kv1(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("kv", "app/db", {"password": VALUE})
    backend = make(tmp_path, sim.address)
    assert backend.read(ref("vault:kv/app/db")) == {"password": VALUE}
    assert len(sim.requests_to("kv/app/db", "GET")) == 1
    assert not sim.requests_to("kv/data/app/db")


def test_configured_mounts_skip_the_preflight(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "a", {"k": "2"})
    sim.put_kv("kv", "b", {"k": "1"})
    sim.enable_kv("team/kv", 2)
    sim.put_kv("team/kv", "app", {"k": "nested"})
    backend = make(tmp_path, sim.address, kv_mounts={"secret": 2, "kv": 1, "team": 1, "team/kv": 2})
    assert backend.read(ref("vault:secret/a")) == {"k": "2"}
    assert backend.read(ref("vault:kv/b")) == {"k": "1"}
    # The longest configured mount wins: team/kv (v2), not team (v1).
    assert backend.read(ref("vault:team/kv/app")) == {"k": "nested"}
    assert sim.requests_to("team/kv/data/app")
    assert preflights(sim) == []


def test_preflight_once_per_mount_under_concurrency(sim: VaultSimulator, tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        sim.put_kv("secret", f"app/{name}", {"name": name})
    sim.put_kv("kv", "x", {"name": "x"})
    sim.latency = 0.1  # keep the readers overlapping
    backend = make(tmp_path, sim.address)
    texts = ["vault:secret/app/a", "vault:secret/app/b", "vault:secret/app/c", "vault:kv/x"]
    with ThreadPoolExecutor(len(texts)) as pool:
        results = list(pool.map(lambda t: backend.read(ref(t)), texts))
    assert results == [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "x"}]
    found = sorted(preflights(sim))
    assert len(found) == 2
    assert found[0] == PREFLIGHT + "kv/x"
    assert found[1].startswith(PREFLIGHT + "secret/app/")
    # A later reference to a known mount asks no preflight at all.
    backend.read(ref("vault:secret/app/d"))
    assert len(preflights(sim)) == 2


def test_deleted_and_destroyed_versions(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "app", {"v": VALUE})
    sim.put_kv("secret", "app", {"v": VALUE + "2"})
    sim.delete_kv_version("secret", "app", 2)
    backend = make(tmp_path, sim.address)
    deleted = failure(backend, "vault:secret/app")
    assert isinstance(deleted, NotFound)
    assert "'vault:secret/app' (Vault): version 2 of the secret was deleted" in deleted.message
    assert "?version=N" in deleted.message and "undelete" in deleted.message
    assert backend.read(ref("vault:secret/app?version=1")) == {"v": VALUE}
    sim.destroy_kv_version("secret", "app", 1)
    destroyed = failure(backend, "vault:secret/app?version=1")
    assert isinstance(destroyed, NotFound)
    assert "version 1 of the secret was destroyed" in destroyed.message
    assert "undelete" not in destroyed.message
    assert_clean(deleted.message)
    assert_clean(destroyed.message)


def test_not_found(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "app", {"v": VALUE})
    backend = make(tmp_path, sim.address)
    missing = failure(backend, "vault:secret/nope")
    assert isinstance(missing, NotFound)
    assert missing.message == (
        "'vault:secret/nope' (Vault): not found at secret/data/nope; check the mount and path"
    )
    pinned = failure(backend, "vault:secret/app?version=9")
    assert isinstance(pinned, NotFound)
    assert "not found at secret/data/app (version 9)" in pinned.message
    kv1 = failure(backend, "vault:kv/nope")
    assert isinstance(kv1, NotFound) and "not found at kv/nope" in kv1.message


# -- denials and outages ----------------------------------------------------------


def test_policy_denial_names_the_api_path(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "app/db", {"password": VALUE})
    sim.add_token("hvs.CANARY-narrow", {"secret/data/other/*": ["read"]})
    backend = make(tmp_path, sim.address, token_file=write(tmp_path / "narrow", "hvs.CANARY-narrow"))
    denied = failure(backend, "vault:secret/app/db")
    assert isinstance(denied, AccessDenied)
    assert denied.message == (
        "'vault:secret/app/db' (Vault): permission denied;"
        " the Vault policy of this token needs read on 'secret/data/app/db'"
    )
    assert_clean(denied.message, "hvs.CANARY-narrow")


def test_preflight_denial(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.add_token("hvs.CANARY-kvonly", {"kv/*": ["read"]})
    backend = make(tmp_path, sim.address, token_file=write(tmp_path / "t", "hvs.CANARY-kvonly"))
    denied = failure(backend, "vault:secret/app")
    assert isinstance(denied, AccessDenied)
    assert "permission denied looking up the mount of 'secret/app'" in denied.message
    assert "vault.kv_mounts" in denied.message
    assert not sim.requests_to("secret/data/app")
    assert_clean(denied.message)


def test_invalid_token(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "app", {"v": VALUE})
    sim.expire_token(TOKEN)
    denied = failure(make(tmp_path, sim.address, kv_mounts={"secret": 2}), "vault:secret/app")
    assert isinstance(denied, AccessDenied)
    assert "Vault rejected the plugin's token as invalid or expired" in denied.message
    assert "vault.token_file" in denied.message
    assert_clean(denied.message)


def test_sealed(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.sealed = True
    sealed = failure(make(tmp_path, sim.address), "vault:secret/app")
    assert isinstance(sealed, Unreachable)
    assert "Vault is sealed or unavailable (Vault said: Vault is sealed)" in sealed.message


def test_slow_server_is_timed_out_by_the_deadline(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.latency = 5.0
    backend = make(tmp_path, sim.address, deadline=0.5)
    started = time.monotonic()
    slow = failure(backend, "vault:secret/app")
    assert time.monotonic() - started < 3.0  # did not hang
    assert isinstance(slow, TimedOut)
    assert "no answer from Vault within the plugin's 0.5 s deadline" in slow.message


def test_hanging_server(tmp_path: Path) -> None:
    with HangingServer() as server:
        backend = make(tmp_path, server.url, deadline=0.5, kv_mounts={"secret": 2})
        started = time.monotonic()
        assert isinstance(failure(backend, "vault:secret/app"), TimedOut)
        assert time.monotonic() - started < 3.0


def test_server_down(tmp_path: Path) -> None:
    address = dead_port_url()
    down = failure(make(tmp_path, address), "vault:secret/app")
    assert isinstance(down, Unreachable)
    assert f"cannot connect to Vault at {address}" in down.message
    assert "check vault.address" in down.message


# -- other engines, namespaces, options ---------------------------------------------


def test_generic_engine_lease_is_left_alone(sim: VaultSimulator, tmp_path: Path) -> None:
    def creds(sub: str) -> dict[str, Any] | None:
        return {"username": "v-app", "password": VALUE} if sub == "creds/app" else None

    sim.enable_engine("database", creds)
    backend = make(tmp_path, sim.address)
    assert backend.read(ref("vault:database/creds/app")) == {"username": "v-app", "password": VALUE}
    assert len(sim.requests_to("database/creds/app", "GET")) == 1
    missing = failure(backend, "vault:database/creds/other")
    assert isinstance(missing, NotFound)
    pinned = failure(backend, "vault:database/creds/app?version=2")
    assert isinstance(pinned, RequestError)
    assert "'database' is a 'database' engine" in pinned.message
    backend.close()
    assert sim.revoked_leases == []
    assert not [r for r in sim.requests if "leases" in r.api_path or "renew" in r.api_path]


def test_namespace_header(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.enable_kv("secret", 2, namespace="team1")
    sim.put_kv("secret", "app", {"v": "in-team1"}, namespace="team1")
    sim.put_kv("secret", "app", {"v": "in-root"})
    sim.add_token("hvs.CANARY-ns", READ_ALL, namespace="team1")
    backend = make(
        tmp_path, sim.address, namespace="team1", token_file=write(tmp_path / "t", "hvs.CANARY-ns")
    )
    assert backend.read(ref("vault:secret/app")) == {"v": "in-team1"}
    assert sim.requests
    for request in sim.requests:
        assert request.headers["x-vault-namespace"] == "team1"
        assert request.namespace == "team1"
    sim.add_token("hvs.CANARY-narrow-ns", {"secret/data/x": ["read"]}, namespace="team1")
    narrow = make(
        tmp_path, sim.address, namespace="team1", token_file=write(tmp_path / "n", "hvs.CANARY-narrow-ns")
    )
    denied = failure(narrow, "vault:secret/app")
    assert "permission denied in namespace 'team1'" in denied.message


def test_options_are_checked_before_any_request(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("kv", "app", {"v": VALUE})
    backend = make(tmp_path, sim.address)
    unknown = failure(backend, "vault:secret/app?version_stage=AWSCURRENT")
    assert isinstance(unknown, RequestError)
    assert "unknown option 'version_stage'; options here: version" in unknown.message
    for bad in ("0", "-1", "abc", "1.5", "12345678901"):
        wrong = failure(backend, f"vault:secret/app?version={bad}")
        assert isinstance(wrong, RequestError)
        assert "the option version must be a positive integer" in wrong.message
    assert sim.requests == []
    kv1 = failure(backend, "vault:kv/app?version=1")
    assert isinstance(kv1, RequestError)
    assert "the option 'version' applies to KV version 2 only; 'kv' is a KV version 1 mount" in kv1.message


@pytest.mark.parametrize(
    "text",
    [
        "vault:auth/token/lookup-self",
        "vault:sys/internal/ui/resultant-acl",
        "vault:cubbyhole/x",
        "vault:identity/entity/id",
        "vault:secret",
        "vault:secret/",
        "vault:secret//app",
        "vault:secret/../sys/mounts",
        "vault:/secret/app",
    ],
)
def test_refused_locators(sim: VaultSimulator, tmp_path: Path, text: str) -> None:
    sim.add_root_token(TOKEN)
    refused = failure(make(tmp_path, sim.address), text)
    assert isinstance(refused, RequestError)
    assert refused.message.startswith(f"{text!r} (Vault): ")
    assert sim.requests == []


def test_mount_named_like_vault_api_needs_kv_mounts(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.enable_kv("team/auth", 2)
    sim.put_kv("team/auth", "app", {"v": "ok"})
    refused = failure(make(tmp_path, sim.address), "vault:team/auth/app")
    assert isinstance(refused, RequestError)
    assert "the mount 'team/auth' is named like Vault's own API (auth/)" in refused.message
    assert "the operator lists it in vault.kv_mounts" in refused.message
    assert not sim.requests_to("team/auth/data/app")
    configured = make(tmp_path, sim.address, kv_mounts={"team/auth": 2})
    assert configured.read(ref("vault:team/auth/app")) == {"v": "ok"}


def test_mount_path_names_the_mount_not_a_secret(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.enable_kv("team/kv", 2)
    refused = failure(make(tmp_path, sim.address), "vault:team/kv")
    assert isinstance(refused, RequestError)
    assert "'team/kv' is a mount; name a secret in it, team/kv/<path>" in refused.message


# -- config -------------------------------------------------------------------------


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"vault\.address is not set"):
        Vault(VaultSettings(token_file=write(tmp_path / "t", TOKEN)), JobOptions(), Deadline(5))
    with pytest.raises(ConfigError, match=r"vault\.address must be an http:// or https:// URL"):
        make(tmp_path, "vault.example:8200")
    with pytest.raises(ConfigError, match=r"needs vault\.token_file: set it to a file holding a Vault token"):
        Vault(VaultSettings(address="http://127.0.0.1:1"), JobOptions(), Deadline(5))
    with pytest.raises(ConfigError, match=r"cannot read vault\.token_file .*/absent: No such file"):
        make(tmp_path, "http://127.0.0.1:1", token_file=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"does not hold a Vault token"):
        make(tmp_path, "http://127.0.0.1:1", token_file=write(tmp_path / "empty", " \n"))
    with pytest.raises(ConfigError) as two_lines:
        make(tmp_path, "http://127.0.0.1:1", token_file=write(tmp_path / "two", TOKEN + "\n" + TOKEN))
    assert_clean(two_lines.value.message)
    with pytest.raises(ConfigError, match=r"needs vault\.role_id"):
        make(tmp_path, "http://127.0.0.1:1", auth_method="approle")
    with pytest.raises(ConfigError, match=r"needs vault\.secret_id_file"):
        make(tmp_path, "http://127.0.0.1:1", auth_method="approle", role_id=ROLE_ID)
    with pytest.raises(ConfigError, match=r"https:// vault\.address and vault\.client_cert"):
        make(tmp_path, "http://127.0.0.1:1", auth_method="cert")
    with pytest.raises(ConfigError, match=r"cannot read vault\.ca_cert"):
        make(tmp_path, "https://127.0.0.1:1", ca_cert=str(tmp_path / "no-ca.pem"))


# -- login methods ---------------------------------------------------------------------


def approle(sim: VaultSimulator, tmp_path: Path, *, secret_id: str = SECRET_ID, **extra: Any) -> Vault:
    sim.enable_approle("app", ROLE_ID, SECRET_ID, READ_ALL)
    return make(
        tmp_path,
        sim.address,
        auth_method="approle",
        role_id=ROLE_ID,
        secret_id_file=write(tmp_path / "secret_id", secret_id + "\n"),
        **extra,
    )


def test_approle_logs_in_once_and_revokes_on_close(sim: VaultSimulator, tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d", "e"):
        sim.put_kv("secret", name, {"name": name})
    backend = approle(sim, tmp_path)
    sim.latency = 0.05
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda n: backend.read(ref(f"vault:secret/{n}")), "abcde"))
    assert results == [{"name": n} for n in "abcde"]
    logins = sim.requests_to("auth/approle/login", "POST")
    assert len(logins) == 1
    assert logins[0].body == {"role_id": ROLE_ID, "secret_id": SECRET_ID}
    assert logins[0].token is None
    issued = sim.requests_to("secret/data/a")[0].token
    assert issued is not None and issued != TOKEN
    backend.close()
    backend.close()
    assert sim.revoked_tokens == [issued]
    assert len(sim.requests_to("auth/token/revoke-self", "POST")) == 1


def test_approle_custom_mount_and_no_revoke(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.enable_approle("app", ROLE_ID, SECRET_ID, READ_ALL, mount="nomad-approle")
    sim.put_kv("secret", "a", {"v": "1"})
    backend = make(
        tmp_path,
        sim.address,
        auth_method="approle",
        auth_mount="nomad-approle",
        role_id=ROLE_ID,
        secret_id_file=write(tmp_path / "sid", SECRET_ID),
        revoke_token=False,
    )
    assert backend.read(ref("vault:secret/a")) == {"v": "1"}
    assert len(sim.requests_to("auth/nomad-approle/login")) == 1
    backend.close()
    assert sim.revoked_tokens == []
    assert not sim.requests_to("auth/token/revoke-self")


def test_approle_failure_is_shared_not_retried(sim: VaultSimulator, tmp_path: Path) -> None:
    backend = approle(sim, tmp_path, secret_id="CANARY-wrong-secret-id")
    with ThreadPoolExecutor(3) as pool:
        errors = list(pool.map(lambda n: failure(backend, f"vault:secret/{n}"), "abc"))
    assert len(sim.requests_to("auth/approle/login")) == 1
    for error in errors:
        assert isinstance(error, AccessDenied)
        assert "login with the approle auth method at auth/approle/ failed" in error.message
        assert "(Vault said: invalid role or secret ID)" in error.message
        assert "check vault.role_id and vault.secret_id_file" in error.message
        assert_clean(error.message, "CANARY-wrong-secret-id")
    backend.close()
    assert not sim.requests_to("auth/token/revoke-self")


def test_token_auth_is_never_revoked(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "a", {"v": "1"})
    backend = make(tmp_path, sim.address)
    backend.read(ref("vault:secret/a"))
    backend.close()
    assert sim.revoked_tokens == []
    assert not sim.requests_to("auth/token/revoke-self")


def test_probe(sim: VaultSimulator, tmp_path: Path) -> None:
    backend = make(tmp_path, sim.address)
    backend.probe()
    assert [r.api_path for r in sim.requests] == ["auth/token/lookup-self"]
    sim.expire_token(TOKEN)
    with pytest.raises(AccessDenied) as expired:
        make(tmp_path, sim.address).probe()
    assert expired.value.message == (
        "'auth/token/lookup-self' (Vault): Vault rejected the plugin's token as invalid or expired;"
        " the operator renews the token in vault.token_file"
    )
    sim.clear_requests()
    login = approle(sim, tmp_path)
    login.probe()
    assert [r.api_path for r in sim.requests] == ["auth/approle/login"]
    login.close()
    assert len(sim.revoked_tokens) == 1


def test_close_never_raises(sim: VaultSimulator, tmp_path: Path) -> None:
    sim.put_kv("secret", "a", {"v": "1"})
    backend = approle(sim, tmp_path)
    backend.read(ref("vault:secret/a"))
    sim.stop()
    started = time.monotonic()
    backend.close()
    backend.close()
    assert time.monotonic() - started < 3.0


# JWT: a workload identity as Nomad signs it, with an RSA key the JWT mount trusts.


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def enable_jwt(sim: VaultSimulator, issuer: Issuer) -> None:
    role = JwtRole(
        bound_claims={"nomad_namespace": "default"},
        user_claim="nomad_job_id",
        policies={"secret/data/{{claims.nomad_job_id}}/*": ["read"]},
    )
    sim.enable_jwt(
        mount="jwt-nomad", jwks=issuer.jwks(), bound_audiences=["vault.io"], roles={"nomad-workloads": role}
    )


def test_jwt_login_with_the_workload_identity(sim: VaultSimulator, tmp_path: Path, issuer: Issuer) -> None:
    enable_jwt(sim, issuer)
    sim.put_kv("secret", "web/db", {"password": VALUE})
    jwt = issuer.sign(sub="default:web", nomad_namespace="default", nomad_job_id="web")
    backend = make(
        tmp_path,
        sim.address,
        auth_method="jwt",
        auth_mount="jwt-nomad",
        role="nomad-workloads",
        options=JobOptions(workload_token=jwt),
    )
    assert sim.requests == []  # no network until the first read
    assert backend.read(ref("vault:secret/web/db")) == {"password": VALUE}
    logins = sim.requests_to("auth/jwt-nomad/login", "POST")
    assert len(logins) == 1
    assert logins[0].body == {"jwt": jwt, "role": "nomad-workloads"}
    # The templated policy lets job "web" read web/*, nothing else.
    denied = failure(backend, "vault:secret/api/db")
    assert isinstance(denied, AccessDenied)
    assert_clean(denied.message, jwt)
    backend.close()
    assert len(sim.revoked_tokens) == 1


def test_jwt_rejected_by_vault(sim: VaultSimulator, tmp_path: Path, issuer: Issuer) -> None:
    enable_jwt(sim, issuer)
    jwt = issuer.sign(sub="x", nomad_namespace="prod", nomad_job_id="web")
    backend = make(
        tmp_path,
        sim.address,
        auth_method="jwt",
        auth_mount="jwt-nomad",
        role="nomad-workloads",
        options=JobOptions(workload_token=jwt),
    )
    denied = failure(backend, "vault:secret/web/db")
    assert isinstance(denied, AccessDenied)
    assert "login with the jwt auth method at auth/jwt-nomad/ failed (Vault said: error validating" in (
        denied.message
    )
    assert "check vault.role and the role's bound audiences and claims" in denied.message
    assert_clean(denied.message, jwt, jwt.split(".")[2])


def test_jwt_missing_or_malformed_workload_token(sim: VaultSimulator, tmp_path: Path) -> None:
    with pytest.raises(RequestError) as missing:
        make(tmp_path, sim.address, auth_method="jwt", role="r")
    assert 'NOMAD_WORKLOAD_TOKEN = "${NOMAD_TOKEN_<identity name>}"' in missing.value.message
    assert "identity block (env = true)" in missing.value.message
    with pytest.raises(RequestError) as literal:
        make(
            tmp_path,
            sim.address,
            auth_method="jwt",
            options=JobOptions(workload_token="${NOMAD_TOKEN_CANARY}"),
        )
    assert "NOMAD_WORKLOAD_TOKEN is not a JWT" in literal.value.message
    assert_clean(literal.value.message)
    assert sim.requests == []


# Cert auth: a throwaway server CA, a client CA and certificates, over real TLS.


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_cert_login_over_tls(tmp_path: Path, pki: Pki) -> None:
    with VaultSimulator(tls=pki.server) as sim:
        sim.enable_kv("secret", 2)
        sim.put_kv("secret", "app", {"v": VALUE})
        sim.enable_cert(certs={"nomad": (pki.client_ca_pem, READ_ALL)})
        backend = make(
            tmp_path,
            sim.address,
            auth_method="cert",
            role="nomad",
            ca_cert=str(pki.server_ca),
            client_cert=str(pki.client_cert),
            client_key=str(pki.client_key),
        )
        assert sim.address.startswith("https://")
        assert backend.read(ref("vault:secret/app")) == {"v": VALUE}
        logins = sim.requests_to("auth/cert/login", "POST")
        assert len(logins) == 1 and logins[0].body == {"name": "nomad"}
        backend.close()
        assert len(sim.revoked_tokens) == 1


def test_cert_login_without_a_trusted_role(tmp_path: Path, pki: Pki) -> None:
    with VaultSimulator(tls=pki.server) as sim:
        sim.enable_cert(certs={"other": (pki.server_ca.read_text(), {})})  # does not issue the client's
        backend = make(
            tmp_path,
            sim.address,
            auth_method="cert",
            ca_cert=str(pki.server_ca),
            client_cert=str(pki.client_cert),
            client_key=str(pki.client_key),
        )
        denied = failure(backend, "vault:secret/app")
        assert isinstance(denied, AccessDenied)
        assert "login with the cert auth method at auth/cert/ failed (Vault said: invalid certificate" in (
            denied.message
        )


def test_tls_is_verified_against_the_configured_ca_only(tmp_path: Path, pki: Pki) -> None:
    with VaultSimulator(tls=pki.server) as sim:
        sim.enable_kv("secret", 2)
        sim.add_token(TOKEN, READ_ALL)
        # No vault.ca_cert: the system's trust store, which does not hold the test CA.
        untrusted = failure(make(tmp_path, sim.address), "vault:secret/app")
        assert isinstance(untrusted, Unreachable)
        assert f"TLS with Vault at {sim.address} failed (certificate verify failed" in untrusted.message
        assert "check vault.ca_cert" in untrusted.message
        assert not sim.requests
        trusted = make(tmp_path, sim.address, ca_cert=str(pki.server_ca))
        assert isinstance(failure(trusted, "vault:secret/app"), NotFound)


# -- answers the simulator cannot give: a scripted server -------------------------------


Scripted = tuple[int, dict[str, str], bytes]


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stopped reading (the oversized answer) is expected


class ScriptedServer:
    """Answers each request with the next scripted response (the last one repeats)."""

    def __init__(self, responses: list[Scripted]) -> None:
        self.responses = list(responses)
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.paths.append(self.path)
                status, headers, body = (
                    outer.responses.pop(0) if len(outer.responses) > 1 else outer.responses[0]
                )
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def answer(status: int, body: object, **headers: str) -> Scripted:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return status, {"Content-Type": "application/json", **headers}, raw


OK = answer(200, {"data": {"data": {"v": "ok"}, "metadata": {"version": 1}}})


def test_throttled_then_answered(tmp_path: Path) -> None:
    limited = answer(429, {"errors": ['request path "secret/data/a": rate limit quota exceeded']})
    with ScriptedServer([limited, limited, OK]) as server:
        backend = make(tmp_path, server.url, kv_mounts={"secret": 2})
        assert backend.read(ref("vault:secret/a")) == {"v": "ok"}
        assert len(server.paths) == 3


def test_throttled_for_good(tmp_path: Path) -> None:
    limited = answer(429, {"errors": ["rate limit quota exceeded"]}, **{"Retry-After": "0"})
    with ScriptedServer([limited]) as server:
        throttled = failure(make(tmp_path, server.url, kv_mounts={"secret": 2}), "vault:secret/a")
        assert isinstance(throttled, Throttled)
        assert "Vault rate-limited the request (Vault said: rate limit quota exceeded)" in throttled.message
        assert len(server.paths) == 3  # the first try and two retries


def test_throttled_with_a_retry_after_beyond_the_deadline(tmp_path: Path) -> None:
    with ScriptedServer([answer(429, {"errors": []}, **{"Retry-After": "60"})]) as server:
        started = time.monotonic()
        throttled = failure(make(tmp_path, server.url, kv_mounts={"secret": 2}), "vault:secret/a")
        assert isinstance(throttled, Throttled)
        assert len(server.paths) == 1
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    ("response", "kind", "text"),
    [
        (answer(200, b"<html>not vault</html>"), StoreError, "Vault's answer is not in the expected shape"),
        (answer(200, {"data": None}), StoreError, "Vault answered with no data"),
        (answer(200, {"data": {"data": "text"}}), StoreError, "not in the expected shape"),
        (answer(500, {"errors": ["x" * 500]}), StoreError, "Vault failed with HTTP 500 (Vault said: xxx"),
        (answer(502, b"bad gateway"), StoreError, "Vault failed with HTTP 502; see Vault's server log"),
        (answer(503, {"errors": ["Vault is sealed"]}), Unreachable, "Vault is sealed or unavailable"),
        (answer(307, b"", Location="http://other/"), StoreError, "redirect (HTTP 307)"),
        (answer(418, {"errors": ["teapot"]}), StoreError, "unexpected answer from Vault (HTTP 418)"),
        (answer(200, b"{" + b" " * (5 * 1024 * 1024) + b"}"), StoreError, "larger than 4194304 bytes"),
    ],
)
def test_unexpected_answers(tmp_path: Path, response: Scripted, kind: type[PluginError], text: str) -> None:
    with ScriptedServer([response]) as server:
        error = failure(make(tmp_path, server.url, kv_mounts={"secret": 2}), "vault:secret/a")
    assert type(error) is kind
    assert text in error.message
    assert len(error.message) < 500  # Vault's text is cut to 200 characters


def test_credentials_quoted_by_a_server_are_blanked(tmp_path: Path) -> None:
    echo = answer(400, {"errors": [f"bad secret_id {SECRET_ID} for role_id {ROLE_ID}"]})
    with ScriptedServer([echo]) as server:
        backend = make(
            tmp_path,
            server.url,
            auth_method="approle",
            role_id=ROLE_ID,
            secret_id_file=write(tmp_path / "sid", SECRET_ID),
        )
        denied = failure(backend, "vault:secret/a")
    assert isinstance(denied, AccessDenied)
    assert "(Vault said: bad secret_id <redacted> for role_id <redacted>)" in denied.message
    assert_clean(denied.message)


def test_preflight_refuses_vault_machinery(tmp_path: Path) -> None:
    token_mount = answer(200, {"data": {"path": "auth/token/", "type": "token", "options": None}})
    with ScriptedServer([token_mount]) as server:
        refused = failure(make(tmp_path, server.url), "vault:ns1/auth/token/lookup-self")
        assert isinstance(refused, RequestError)
        assert "'ns1/auth/token' is Vault's 'token' mount, not a secrets engine" in refused.message
        assert server.paths == ["/v1/sys/internal/ui/mounts/ns1/auth/token/lookup-self"]


def test_preflight_under_a_namespace_prefix(tmp_path: Path) -> None:
    kv2 = answer(200, {"data": {"path": "secret/", "type": "kv", "options": {"version": "2"}}})
    with ScriptedServer([kv2, OK]) as server:
        assert make(tmp_path, server.url).read(ref("vault:ns1/secret/app")) == {"v": "ok"}
        assert server.paths[1] == "/v1/ns1/secret/data/app"


# -- no secret ever in a message ---------------------------------------------------------


def test_no_message_carries_a_credential_or_value(
    sim: VaultSimulator, tmp_path: Path, issuer: Issuer
) -> None:
    sim.put_kv("secret", "app", {"password": VALUE})
    sim.put_kv("secret", "app", {"password": VALUE + "-2"})
    sim.delete_kv_version("secret", "app", 2)
    sim.put_kv("kv", "app", {"password": VALUE})
    sim.add_token("hvs.CANARY-none", {})
    messages: list[str] = []
    backend = make(tmp_path, sim.address)
    for text in (
        "vault:secret/app",
        "vault:secret/nope",
        "vault:secret/app?version=7",
        "vault:kv/app?version=1",
        "vault:secret/app?version_id=1",
        "vault:nomount/x",
        "vault:secret/app#password",
    ):
        try:
            backend.read(ref(text))
        except PluginError as exc:
            messages.append(exc.message)
    none = make(tmp_path, sim.address, token_file=write(tmp_path / "none", "hvs.CANARY-none"))
    messages.append(failure(none, "vault:secret/app").message)
    enable_jwt(sim, issuer)
    jwt = issuer.sign(sub="x", nomad_namespace="other", nomad_job_id="web")
    jwt_backend = make(
        tmp_path,
        sim.address,
        auth_method="jwt",
        auth_mount="jwt-nomad",
        options=JobOptions(workload_token=jwt),
    )
    messages.append(failure(jwt_backend, "vault:secret/app").message)
    sim.enable_approle("app", ROLE_ID, SECRET_ID, READ_ALL)
    wrong = make(
        tmp_path,
        sim.address,
        auth_method="approle",
        role_id=ROLE_ID,
        secret_id_file=write(tmp_path / "sid", "CANARY-wrong"),
    )
    messages.append(failure(wrong, "vault:secret/app").message)
    sim.sealed = True
    messages.append(failure(backend, "vault:kv/app").message)
    assert len(messages) == 11
    for message in messages:
        assert_clean(message, jwt, "hvs.CANARY-none", "CANARY-wrong")
