"""Tests of the Vault HTTP API simulator (tests/vault_sim.py).

Two kinds of evidence that the double is faithful: exact envelopes, status
codes and error bodies checked with plain ``requests``, and the real ``hvac``
client (which parses Vault's responses and maps its status codes to
exceptions) used against it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import ssl
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
import vault_sim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from pki import cert, key_pem, pem
from vault_sim import (
    ERR_INVALID_TOKEN,
    ERR_POLICY_DENIED,
    JwtRole,
    VaultSimulator,
    kv2_invalid_path_warning,
)

ROOT = "root-token"
ENVELOPE_KEYS = [
    "request_id",
    "lease_id",
    "renewable",
    "lease_duration",
    "data",
    "wrap_info",
    "warnings",
    "auth",
    "mount_type",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def call(
    sim: VaultSimulator,
    method: str,
    path: str,
    *,
    token: str | None = ROOT,
    namespace: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> requests.Response:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["X-Vault-Token"] = token
    if namespace is not None:
        hdrs["X-Vault-Namespace"] = namespace
    return requests.request(
        method,
        f"{sim.address}/v1/{path}",
        headers=hdrs,
        json=body,
        timeout=kwargs.pop("timeout", 10),
        **kwargs,
    )


def client(sim: VaultSimulator, token: str | None = ROOT, **kwargs: Any) -> Any:
    return hvac.Client(url=sim.address, token=token, timeout=10, **kwargs)


RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


def is_rfc3339(text: str) -> bool:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction trimmed)."""
    if not RFC3339.fullmatch(text):
        return False
    when = dt.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return abs((when - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 24 * 3600


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_jwt(
    claims: dict[str, Any], key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, kid: str = "k1"
) -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    signing_input = f"{b64u(json.dumps(header).encode())}.{b64u(json.dumps(claims).encode())}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input.decode()}.{b64u(sig)}"


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": b64u(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
        "e": b64u(nums.e.to_bytes(3, "big")),
    }


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "kid": kid,
        "x": b64u(nums.x.to_bytes(32, "big")),
        "y": b64u(nums.y.to_bytes(32, "big")),
    }


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[VaultSimulator]:
    with VaultSimulator() as vault:
        vault.add_root_token(ROOT)
        vault.enable_kv("secret", 2)
        vault.enable_kv("kv1", 1)
        yield vault


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --------------------------------------------------------------------------
# module / lifecycle
# --------------------------------------------------------------------------


def test_module_docstring_declares_a_test_double_and_its_sources() -> None:
    doc = vault_sim.__doc__ or ""
    assert "TEST DOUBLE, NOT VAULT" in doc
    for source in (
        "KV secrets engine - version 1",
        "KV secrets engine - version 2",
        "sys/internal/ui/mounts",
        "AppRole",
        "JWT/OIDC",
        "TLS certificates",
        "{{claims.<name>}}",
    ):
        assert source in doc


def test_binds_loopback_on_a_free_port_and_stops_cleanly() -> None:
    with VaultSimulator() as a, VaultSimulator() as b:
        assert a.address.startswith("http://127.0.0.1:")
        assert a.address != b.address
        assert requests.get(f"{a.address}/v1/sys/health", timeout=5).status_code == 200
        address = a.address
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{address}/v1/sys/health", timeout=5)
    sim = VaultSimulator()
    with pytest.raises(RuntimeError):
        _ = sim.address
    sim.stop()  # stopping a never-started simulator is a no-op


def test_every_answer_is_json_with_no_store(sim: VaultSimulator) -> None:
    for resp in (
        call(sim, "GET", "sys/health"),
        call(sim, "GET", "kv1/missing"),
        call(sim, "GET", "secret/data/x", token=None),
    ):
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.headers["Cache-Control"] == "no-store"
        json.loads(resp.content)


# --------------------------------------------------------------------------
# KV v1
# --------------------------------------------------------------------------


def test_kv1_read_envelope_matches_vault(sim: VaultSimulator) -> None:
    assert sim.put_kv("kv1", "app/config", {"user": "svc", "port": 5432}) == 0
    resp = call(sim, "GET", "kv1/app/config")
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ENVELOPE_KEYS
    uuid.UUID(body["request_id"])
    assert {k: v for k, v in body.items() if k != "request_id"} == {
        "lease_id": "",
        "renewable": False,
        "lease_duration": 2764800,
        "data": {"user": "svc", "port": 5432},
        "wrap_info": None,
        "warnings": None,
        "auth": None,
        "mount_type": "kv",
    }


def test_kv1_missing_key_is_404_with_empty_errors(sim: VaultSimulator) -> None:
    resp = call(sim, "GET", "kv1/nope")
    assert resp.status_code == 404
    assert resp.json() == {"errors": []}


def test_kv1_write_list_read_delete_with_hvac(sim: VaultSimulator) -> None:
    kv1 = client(sim).secrets.kv.v1
    kv1.create_or_update_secret("team/a", {"k": "1"}, mount_point="kv1")
    kv1.create_or_update_secret("team/sub/b", {"k": "2"}, mount_point="kv1")
    assert kv1.read_secret("team/a", mount_point="kv1")["data"] == {"k": "1"}
    assert kv1.list_secrets("team", mount_point="kv1")["data"]["keys"] == ["a", "sub/"]
    assert call(sim, "GET", "kv1/team?list=true").json()["data"]["keys"] == ["a", "sub/"]
    kv1.delete_secret("team/a", mount_point="kv1")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv1.read_secret("team/a", mount_point="kv1")


# --------------------------------------------------------------------------
# KV v2
# --------------------------------------------------------------------------


def test_kv2_read_latest_and_pinned_version(sim: VaultSimulator) -> None:
    assert sim.put_kv("secret", "app/db", {"password": "one"}) == 1
    assert sim.put_kv("secret", "app/db", {"password": "two"}) == 2
    resp = call(sim, "GET", "secret/data/app/db")
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ENVELOPE_KEYS
    assert (body["lease_duration"], body["renewable"], body["mount_type"]) == (0, False, "kv")
    assert body["data"]["data"] == {"password": "two"}
    meta = body["data"]["metadata"]
    assert set(meta) == {"created_time", "custom_metadata", "deletion_time", "destroyed", "version"}
    assert is_rfc3339(meta["created_time"])
    assert (meta["custom_metadata"], meta["deletion_time"], meta["destroyed"], meta["version"]) == (
        None,
        "",
        False,
        2,
    )
    pinned = call(sim, "GET", "secret/data/app/db", params={"version": 1}).json()
    assert pinned["data"]["data"] == {"password": "one"}
    assert pinned["data"]["metadata"]["version"] == 1
    kv2 = client(sim).secrets.kv.v2
    got = kv2.read_secret_version("app/db", version=1, raise_on_deleted_version=True)
    assert got["data"]["data"] == {"password": "one"}
    latest = kv2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert latest["data"]["metadata"]["version"] == 2


def test_kv2_unknown_path_or_version_is_404_with_empty_errors(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"password": "one"})
    for path, params in (("secret/data/app/nope", {}), ("secret/data/app/db", {"version": "7"})):
        resp = call(sim, "GET", path, params=params)
        assert resp.status_code == 404
        assert resp.json() == {"errors": []}


def test_kv2_soft_deleted_version_is_404_carrying_metadata(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"password": "one"})
    sim.put_kv("secret", "app/db", {"password": "two"})
    sim.delete_kv_version("secret", "app/db", 2)
    resp = call(sim, "GET", "secret/data/app/db")
    assert resp.status_code == 404
    body = resp.json()
    assert "errors" not in body
    assert list(body) == ENVELOPE_KEYS
    assert body["data"]["data"] is None
    meta = body["data"]["metadata"]
    assert meta["version"] == 2 and meta["destroyed"] is False
    assert is_rfc3339(meta["deletion_time"])
    assert call(sim, "GET", "secret/data/app/db?version=1").json()["data"]["data"] == {"password": "one"}
    kv2 = client(sim).secrets.kv.v2
    # hvac's own deleted-version detection reads exactly this body shape.
    soft = kv2.read_secret_version("app/db", raise_on_deleted_version=False)
    assert soft["data"]["data"] is None and soft["data"]["metadata"]["deletion_time"] != ""
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv2.read_secret_version("app/db", raise_on_deleted_version=True)


def test_kv2_destroyed_version_is_404_with_destroyed_metadata(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"password": "one"})
    sim.destroy_kv_version("secret", "app/db", 1)
    resp = call(sim, "GET", "secret/data/app/db")
    assert resp.status_code == 404
    data = resp.json()["data"]
    assert data["data"] is None
    assert data["metadata"]["destroyed"] is True
    assert data["metadata"]["deletion_time"] == ""


def test_kv2_path_without_data_prefix_gets_vaults_warning(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"password": "one"})
    resp = call(sim, "GET", "secret/app/db")
    assert resp.status_code == 404
    body = resp.json()
    assert "errors" not in body
    assert body["data"] is None
    assert body["warnings"] == [
        "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API "
        "endpoints to use. If using the Vault CLI, use 'vault kv get' for this operation."
    ]
    put = call(sim, "PUT", "secret/app/db", body={"a": "b"})
    assert put.status_code == 404
    assert put.json()["warnings"] == [kv2_invalid_path_warning("put")]
    with pytest.raises(hvac.exceptions.InvalidPath):
        client(sim).secrets.kv.v1.read_secret("app/db", mount_point="secret")


def test_kv2_write_cas_patch_metadata_list_and_version_ops_with_hvac(sim: VaultSimulator) -> None:
    kv2 = client(sim).secrets.kv.v2
    written = kv2.create_or_update_secret("svc/api", {"a": "1", "b": "2"})
    assert written["data"]["version"] == 1 and written["data"]["deletion_time"] == ""
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter did not match"):
        kv2.create_or_update_secret("svc/api", {"a": "x"}, cas=0)
    assert kv2.create_or_update_secret("svc/api", {"a": "x"}, cas=1)["data"]["version"] == 2
    with warnings.catch_warnings():  # hvac's patch() reads without raise_on_deleted_version
        warnings.simplefilter("ignore", DeprecationWarning)
        assert kv2.patch("svc/api", {"b": "3"})["data"]["version"] == 3
    assert kv2.read_secret_version("svc/api", raise_on_deleted_version=True)["data"]["data"] == {
        "a": "x",
        "b": "3",
    }
    meta = kv2.read_secret_metadata("svc/api")["data"]
    assert meta["current_version"] == 3
    assert sorted(meta["versions"]) == ["1", "2", "3"]
    kv2.create_or_update_secret("svc/other/x", {"z": "1"})
    assert kv2.list_secrets("svc")["data"]["keys"] == ["api", "other/"]
    kv2.delete_latest_version_of_secret("svc/api")
    assert call(sim, "GET", "secret/data/svc/api").status_code == 404
    kv2.undelete_secret_versions("svc/api", versions=[3])
    assert call(sim, "GET", "secret/data/svc/api").status_code == 200
    kv2.destroy_secret_versions("svc/api", versions=[1])
    one = call(sim, "GET", "secret/data/svc/api?version=1")
    assert one.status_code == 404 and one.json()["data"]["metadata"]["destroyed"] is True
    kv2.delete_metadata_and_all_versions("svc/api")
    assert call(sim, "GET", "secret/metadata/svc/api").json() == {"errors": []}


def test_kv2_keeps_ten_versions_by_default(sim: VaultSimulator) -> None:
    for i in range(12):
        sim.put_kv("secret", "many", {"i": i})
    meta = call(sim, "GET", "secret/metadata/many").json()["data"]
    assert meta["current_version"] == 12
    assert meta["oldest_version"] == 3
    assert call(sim, "GET", "secret/data/many?version=2").status_code == 404


def test_write_needs_create_for_new_and_update_for_existing(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/existing", {"v": "1"})
    sim.add_token("creator", {"secret/data/app/*": ["create"]})
    assert (
        call(sim, "POST", "secret/data/app/new", token="creator", body={"data": {"v": "1"}}).status_code
        == 200
    )
    denied = call(sim, "POST", "secret/data/app/existing", token="creator", body={"data": {"v": "2"}})
    assert denied.status_code == 403
    assert denied.json() == {"errors": [ERR_POLICY_DENIED]}


def test_invalid_json_body_is_400(sim: VaultSimulator) -> None:
    resp = requests.post(
        f"{sim.address}/v1/kv1/x", data=b"{not json", headers={"X-Vault-Token": ROOT}, timeout=5
    )
    assert resp.status_code == 400
    assert resp.json()["errors"][0].startswith("failed to parse JSON input")


# --------------------------------------------------------------------------
# tokens and policies
# --------------------------------------------------------------------------


def test_missing_token_is_403_permission_denied(sim: VaultSimulator) -> None:
    resp = call(sim, "GET", "secret/data/app", token=None)
    assert resp.status_code == 403
    assert resp.json() == {"errors": ["permission denied"]}


def test_unknown_token_is_403_invalid_token(sim: VaultSimulator) -> None:
    resp = call(sim, "GET", "secret/data/app", token="hvs.nope")
    assert resp.status_code == 403
    assert resp.json() == {"errors": ["2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n"]}
    assert resp.json()["errors"][0] == ERR_INVALID_TOKEN
    sim.invalid_token_errors = ["permission denied"]  # an older Vault's answer
    assert call(sim, "GET", "secret/data/app", token="hvs.nope").json() == {"errors": ["permission denied"]}
    with pytest.raises(hvac.exceptions.Forbidden):
        client(sim, "hvs.nope").secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)


def test_policy_denial_is_403_multierror(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"p": "1"})
    sim.put_kv("secret", "other/db", {"p": "2"})
    sim.add_token("reader", {"secret/data/app/*": ["read"]})
    assert call(sim, "GET", "secret/data/app/db", token="reader").status_code == 200
    resp = call(sim, "GET", "secret/data/other/db", token="reader")
    assert resp.status_code == 403
    assert resp.json() == {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
    with pytest.raises(hvac.exceptions.Forbidden):
        client(sim, "reader").secrets.kv.v2.read_secret_version("other/db", raise_on_deleted_version=True)


def test_authorization_bearer_is_accepted(sim: VaultSimulator) -> None:
    sim.put_kv("kv1", "a", {"x": "y"})
    resp = call(sim, "GET", "kv1/a", token=None, headers={"Authorization": f"Bearer {ROOT}"})
    assert resp.status_code == 200
    assert sim.requests[-1].token == ROOT


def test_expired_token_gets_the_invalid_token_answer(sim: VaultSimulator) -> None:
    sim.add_token("short", {"kv1/*": ["read"]}, ttl=60)
    sim.put_kv("kv1", "a", {"x": "y"})
    assert call(sim, "GET", "kv1/a", token="short").status_code == 200
    sim.expire_token("short")
    assert call(sim, "GET", "kv1/a", token="short").json() == {"errors": [ERR_INVALID_TOKEN]}


@pytest.mark.parametrize(
    ("path", "op", "allowed"),
    [
        ("secret/data/app/db", "read", True),  # trailing * glob
        ("secret/data/app", "read", True),  # "app/*" needs the slash, but "ap*" covers it
        ("secret/data/other", "read", False),
        ("secret/data/application/x", "read", True),  # "secret/data/ap*" in-segment glob
        ("secret/data/app/admin", "read", False),  # exact deny beats the glob
        ("secret/data/app/public", "list", True),  # exact rule replaces (not unions) the glob
        ("secret/data/app/public", "read", False),
        ("secret/metadata/team2/shared", "read", True),  # "+/shared" beats "+/+" (fewer wildcards)
        ("secret/metadata/team2/shared", "list", False),
        ("secret/metadata/team2/other", "list", True),
        ("secret/metadata/team2/x/shared", "read", False),  # + is exactly one segment
        ("secret/metadata/team1/shared", "update", True),  # later first wildcard wins: "team1/+"
        ("secret/metadata/team1/shared", "read", False),
        ("kv1/list/", "list", True),  # LIST also matches the exact rule without "/"
        ("kv1/list/", "read", False),
        ("sys/mounts", "read", False),
    ],
)
def test_acl_follows_vaults_priority_rules(path: str, op: str, allowed: bool) -> None:
    acl = vault_sim._Acl(
        {
            "secret/data/ap*": ["read"],
            "secret/data/app/*": ["read", "list"],
            "secret/data/app/admin": ["deny"],
            "secret/data/app/public": ["list"],
            "secret/metadata/+/shared": ["read"],
            "secret/metadata/+/+": ["list"],
            "secret/metadata/team1/+": ["update"],
            "kv1/list": ["list"],
        }
    )
    assert acl.allows(path, op, is_list=op == "list") is allowed


def test_root_capability_makes_a_root_token(sim: VaultSimulator) -> None:
    sim.add_token("also-root", {"*": ["root"]})
    info = client(sim, "also-root").auth.token.lookup_self()["data"]
    assert info["policies"] == ["root"]
    assert (info["ttl"], info["expire_time"], info["path"]) == (0, None, "auth/token/root")


def test_path_without_a_mount(sim: VaultSimulator) -> None:
    resp = call(sim, "GET", "nomount/x/y")
    assert resp.status_code == 404
    assert resp.json() == {"errors": ['no handler for route "nomount/x/y". route entry not found.']}
    sim.add_token("limited", {"secret/data/*": ["read"]})
    denied = call(sim, "GET", "nomount/x/y", token="limited")
    assert denied.status_code == 403  # Vault checks the ACL before routing
    assert denied.json() == {"errors": [ERR_POLICY_DENIED]}


def test_lookup_self_renew_self_and_revoke_self_with_hvac(sim: VaultSimulator) -> None:
    sim.add_token("app-token", {"kv1/*": ["read"]}, ttl=600, policy_names=["app"])
    c = client(sim, "app-token")
    data = c.auth.token.lookup_self()["data"]
    assert data["id"] == "app-token"
    assert data["policies"] == ["app", "default"]
    assert 590 <= data["ttl"] <= 600 and data["creation_ttl"] == 600
    assert is_rfc3339(data["expire_time"]) and data["renewable"] is True and data["type"] == "service"
    renewed = c.auth.token.renew_self(increment="1h")
    assert renewed["auth"]["lease_duration"] == 3600 and renewed["auth"]["client_token"] == "app-token"
    assert c.is_authenticated()
    c.auth.token.revoke_self()
    assert sim.revoked_tokens == ["app-token"]
    assert len(sim.requests_to("auth/token/revoke-self", "POST")) == 1
    assert not c.is_authenticated()
    with pytest.raises(hvac.exceptions.Forbidden):
        c.auth.token.lookup_self()
    assert call(sim, "GET", "auth/token/lookup-self", token="app-token").json() == {
        "errors": [ERR_INVALID_TOKEN]
    }


def test_revoke_self_answers_204_without_body(sim: VaultSimulator) -> None:
    sim.add_token("t", {})
    resp = call(sim, "POST", "auth/token/revoke-self", token="t")
    assert resp.status_code == 204
    assert resp.content == b""


# --------------------------------------------------------------------------
# sys/internal/ui/mounts
# --------------------------------------------------------------------------


def test_ui_mounts_describes_the_containing_mount(sim: VaultSimulator) -> None:
    sim.enable_kv("legacy", 1, explicit_version=False)
    sim.enable_engine("database", lambda sub: {"username": "u"})
    cases = {
        "secret/app/db": ("secret/", "kv", {"version": "2"}),
        "kv1/a/b": ("kv1/", "kv", {"version": "1"}),
        "legacy/x": ("legacy/", "kv", None),
        "database/creds/app": ("database/", "database", None),
    }
    for path, (mount, mtype, options) in cases.items():
        resp = call(sim, "GET", f"sys/internal/ui/mounts/{path}")
        assert resp.status_code == 200, path
        data = resp.json()["data"]
        assert (data["path"], data["type"], data["options"]) == (mount, mtype, options)


def test_ui_mounts_denials(sim: VaultSimulator) -> None:
    resp = call(sim, "GET", "sys/internal/ui/mounts/nomount/x")
    assert resp.status_code == 403
    assert resp.json() == {
        "errors": [
            "preflight capability check returned 403, please ensure client's policies grant "
            'access to path "nomount/x/"'
        ]
    }
    sim.add_token("app-only", {"secret/data/app/*": ["read"]})
    assert call(sim, "GET", "sys/internal/ui/mounts/secret/app/db", token="app-only").status_code == 200
    other = call(sim, "GET", "sys/internal/ui/mounts/kv1/x", token="app-only")
    assert other.status_code == 403
    assert other.json()["errors"][0].endswith('grant access to path "kv1/x/"')
    assert call(sim, "GET", "sys/internal/ui/mounts/secret/x", token=None).json() == {
        "errors": ["permission denied"]
    }
    assert call(sim, "GET", "sys/internal/ui/mounts/secret/x", token="bad").json() == {
        "errors": [ERR_INVALID_TOKEN]
    }


# --------------------------------------------------------------------------
# generic leased engine
# --------------------------------------------------------------------------


def test_generic_engine_envelope_and_leases(sim: VaultSimulator) -> None:
    seen: list[str] = []

    def creds(sub: str) -> dict[str, Any] | None:
        seen.append(sub)
        return {"username": "v-app-1", "password": "pw"} if sub == "creds/app" else None

    sim.enable_engine("database", creds)
    resp = call(sim, "GET", "database/creds/app")
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ENVELOPE_KEYS
    assert body["lease_id"].startswith("database/creds/app/") and len(body["lease_id"]) > len(
        "database/creds/app/"
    )
    assert (body["renewable"], body["lease_duration"], body["mount_type"]) == (True, 3600, "database")
    assert body["data"] == {"username": "v-app-1", "password": "pw"}
    missing = call(sim, "GET", "database/creds/nope")
    assert (missing.status_code, missing.json()) == (404, {"errors": []})
    assert seen == ["creds/app", "creds/nope"]

    sys = client(sim).sys
    renewed = sys.renew_lease(body["lease_id"], increment=60)
    assert (renewed["lease_id"], renewed["lease_duration"], renewed["renewable"]) == (
        body["lease_id"],
        60,
        True,
    )
    sys.revoke_lease(body["lease_id"])
    assert sim.revoked_leases == [body["lease_id"]]
    gone = call(sim, "PUT", "sys/leases/renew", body={"lease_id": body["lease_id"]})
    assert (gone.status_code, gone.json()) == (400, {"errors": ["lease not found"]})


def test_responder_errors_become_500_and_are_kept(sim: VaultSimulator) -> None:
    def broken(sub: str) -> dict[str, Any] | None:
        raise RuntimeError("boom")

    sim.enable_engine("broken", broken)
    resp = call(sim, "GET", "broken/x")
    assert (resp.status_code, resp.json()) == (500, {"errors": ["internal error"]})
    assert isinstance(sim.errors[-1], RuntimeError)


# --------------------------------------------------------------------------
# AppRole
# --------------------------------------------------------------------------


def test_approle_login_with_requests(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"p": "1"})
    sim.enable_approle("app", "role-1", "secret-1", {"secret/data/app/*": ["read"]}, token_ttl=600)
    resp = call(
        sim, "POST", "auth/approle/login", token=None, body={"role_id": "role-1", "secret_id": "secret-1"}
    )
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ENVELOPE_KEYS and body["data"] is None
    auth = body["auth"]
    assert auth["client_token"].startswith("hvs.")
    assert auth["policies"] == auth["token_policies"] == ["app", "default"]
    assert (auth["metadata"], auth["lease_duration"], auth["renewable"]) == ({"role_name": "app"}, 600, True)
    assert auth["accessor"] and auth["token_type"] == "service"
    assert call(sim, "GET", "secret/data/app/db", token=auth["client_token"]).status_code == 200
    assert call(sim, "GET", "kv1/x", token=auth["client_token"]).status_code == 403


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"role_id": "role-1", "secret_id": "wrong"}, "invalid role or secret ID"),
        ({"role_id": "nope", "secret_id": "secret-1"}, "invalid role or secret ID"),
        ({"secret_id": "secret-1"}, "missing role_id"),
        ({"role_id": "role-1"}, "missing secret_id"),
    ],
)
def test_approle_login_failures(sim: VaultSimulator, body: dict[str, str], error: str) -> None:
    sim.enable_approle("app", "role-1", "secret-1", {})
    resp = call(sim, "POST", "auth/approle/login", token=None, body=body)
    assert resp.status_code == 400
    assert resp.json() == {"errors": [error]}


def test_approle_login_with_hvac(sim: VaultSimulator) -> None:
    sim.put_kv("secret", "app/db", {"p": "1"})
    sim.enable_approle("app", "role-1", "secret-1", {"secret/data/app/*": ["read"]}, mount="ar")
    c = client(sim, None)
    login = c.auth.approle.login(role_id="role-1", secret_id="secret-1", mount_point="ar")
    assert c.token == login["auth"]["client_token"]
    assert c.is_authenticated()
    read = c.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"p": "1"}
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid role or secret ID"):
        client(sim, None).auth.approle.login(role_id="role-1", secret_id="bad", mount_point="ar")


def test_login_on_a_missing_auth_mount_is_permission_denied(sim: VaultSimulator) -> None:
    resp = call(sim, "POST", "auth/approle/login", token=None, body={"role_id": "x", "secret_id": "y"})
    assert (resp.status_code, resp.json()) == (403, {"errors": ["permission denied"]})


# --------------------------------------------------------------------------
# JWT
# --------------------------------------------------------------------------


def enable_jwt(sim: VaultSimulator, *keys: dict[str, Any], **overrides: Any) -> None:
    kwargs: dict[str, Any] = {
        "jwks": {"keys": list(keys)},
        "bound_issuer": "https://issuer.example",
        "bound_audiences": ["vault"],
        "roles": {
            "ci": JwtRole(
                bound_claims={"ref": "refs/heads/main"},
                user_claim="sub",
                policies={"secret/data/{{claims.repo}}/*": ["read"]},
                token_ttl=300,
            )
        },
    }
    kwargs.update(overrides)
    sim.enable_jwt(**kwargs)


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "https://issuer.example",
        "aud": "vault",
        "sub": "repo:org/app",
        "repo": "app",
        "ref": "refs/heads/main",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def test_jwt_login_rs256_with_hvac_and_templated_policy(
    sim: VaultSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    sim.put_kv("secret", "app/cfg", {"a": "1"})
    sim.put_kv("secret", "other/cfg", {"b": "2"})
    enable_jwt(sim, rsa_jwk(rsa_key, "k1"))
    c = client(sim, None)
    login = c.auth.jwt.jwt_login(role="ci", jwt=sign_jwt(claims(), rsa_key))
    auth = login["auth"]
    assert auth["policies"] == ["ci", "default"]
    assert (auth["metadata"], auth["lease_duration"]) == ({"role": "ci"}, 300)
    assert c.token == auth["client_token"]
    kv2 = c.secrets.kv.v2
    assert kv2.read_secret_version("app/cfg", raise_on_deleted_version=True)["data"]["data"] == {"a": "1"}
    with pytest.raises(hvac.exceptions.Forbidden):
        kv2.read_secret_version("other/cfg", raise_on_deleted_version=True)


def test_jwt_login_es256(sim: VaultSimulator, ec_key: ec.EllipticCurvePrivateKey) -> None:
    enable_jwt(sim, ec_jwk(ec_key, "e1"))
    resp = call(
        sim,
        "POST",
        "auth/jwt/login",
        token=None,
        body={"role": "ci", "jwt": sign_jwt(claims(), ec_key, kid="e1")},
    )
    assert resp.status_code == 200
    assert resp.json()["auth"]["client_token"].startswith("hvs.")


def test_jwt_exp_within_clock_skew_leeway_is_accepted(
    sim: VaultSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    enable_jwt(sim, rsa_jwk(rsa_key, "k1"))
    now = int(time.time())
    token = sign_jwt(claims(exp=now - 30, iat=now - 400, nbf=now - 400), rsa_key)
    resp = call(sim, "POST", "auth/jwt/login", token=None, body={"role": "ci", "jwt": token})
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            {"exp": -600, "iat": -900, "nbf": -900},
            "error validating token: invalid expiration time (exp) claim: token is expired",
        ),
        (
            {"nbf": 600, "iat": None},
            "error validating token: invalid not before (nbf) claim: token not yet valid",
        ),
        ({"iat": 600}, "error validating token: invalid issued at (iat) claim: token issued in the future"),
        # without nbf, cap uses iat as nbf, so a future iat reads as "not yet valid"
        (
            {"iat": 600, "nbf": None},
            "error validating token: invalid not before (nbf) claim: token not yet valid",
        ),
        (
            {"aud": "elsewhere"},
            "error validating token: invalid audience (aud) claim: "
            "audience claim does not match any expected audience",
        ),
        ({"iss": "https://evil.example"}, "error validating token: invalid issuer (iss) claim"),
        (
            {"ref": "refs/heads/dev"},
            'error validating claims: claim "ref" does not match any associated bound claim values',
        ),
        ({"ref": None}, 'error validating claims: claim "ref" is missing'),
        ({"sub": None}, 'claim "sub" not found in token'),
    ],
)
def test_jwt_claim_rejections(
    sim: VaultSimulator, rsa_key: rsa.RSAPrivateKey, overrides: dict[str, Any], error: str
) -> None:
    enable_jwt(sim, rsa_jwk(rsa_key, "k1"))
    now = int(time.time())
    shifted = {
        k: (now + v if k in ("exp", "iat", "nbf") and v is not None else v) for k, v in overrides.items()
    }
    resp = call(
        sim,
        "POST",
        "auth/jwt/login",
        token=None,
        body={"role": "ci", "jwt": sign_jwt(claims(**shifted), rsa_key)},
    )
    assert resp.status_code == 400
    assert resp.json() == {"errors": [error]}


def test_jwt_signature_role_and_algorithm_rejections(
    sim: VaultSimulator, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    enable_jwt(sim, rsa_jwk(rsa_key, "k1"), ec_jwk(ec_key, "e1"), supported_algs=["RS256"])

    def login(body: dict[str, Any]) -> requests.Response:
        return call(sim, "POST", "auth/jwt/login", token=None, body=body)

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = login({"role": "ci", "jwt": sign_jwt(claims(), other)})
    assert forged.json() == {
        "errors": [
            "error validating token: error verifying token signature: failed to verify id token signature"
        ]
    }
    es = login({"role": "ci", "jwt": sign_jwt(claims(), ec_key, kid="e1")})
    assert es.json() == {
        "errors": [
            "error validating token: invalid algorithm (alg) header parameter: "
            "token signed with unexpected algorithm"
        ]
    }
    assert login({"role": "nope", "jwt": "x"}).json() == {"errors": ['role "nope" could not be found']}
    assert login({"jwt": "x"}).json() == {"errors": ["missing role"]}
    assert login({"role": "ci"}).json() == {"errors": ["missing token"]}
    garbage = login({"role": "ci", "jwt": "not-a-jwt"})
    assert garbage.status_code == 400
    assert garbage.json()["errors"][0].startswith("error validating token: error verifying token signature")


def test_jwt_list_aud_without_bound_audiences_is_rejected(
    sim: VaultSimulator, rsa_key: rsa.RSAPrivateKey
) -> None:
    enable_jwt(sim, rsa_jwk(rsa_key, "k1"), bound_audiences=[])
    resp = call(
        sim,
        "POST",
        "auth/jwt/login",
        token=None,
        body={"role": "ci", "jwt": sign_jwt(claims(aud=["vault"]), rsa_key)},
    )
    assert resp.json() == {"errors": ["audience claim found in JWT but no audiences bound to the role"]}


# --------------------------------------------------------------------------
# TLS certificates auth
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("sim-ca", ca_key, None, ca=True)
    rogue = cert("rogue-ca", rogue_key, None, ca=True)
    out: dict[str, Any] = {"ca": ca, "rogue": rogue}
    for name, issuer, server in (
        ("server", ("sim-ca", ca_key), True),
        ("client", ("sim-ca", ca_key), False),
        ("stranger", ("rogue-ca", rogue_key), False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = cert(f"{name}.example", key, issuer, ca=False, ip="127.0.0.1" if server else None)
        (d / f"{name}.pem").write_text(pem(leaf))
        (d / f"{name}.key").write_text(key_pem(key))
        out[name] = (str(d / f"{name}.pem"), str(d / f"{name}.key"))
    (d / "ca.pem").write_text(pem(ca))
    out["ca_file"] = str(d / "ca.pem")
    return out


def tls_context(pki: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["server"])
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # The rogue CA is trusted for the handshake only, so its client reaches
    # the login handler and gets Vault's own refusal.
    ctx.load_verify_locations(cadata=pem(pki["ca"]) + pem(pki["rogue"]))
    return ctx


def test_cert_login_over_tls(pki: dict[str, Any]) -> None:
    with VaultSimulator(tls=tls_context(pki)) as sim:
        assert sim.address.startswith("https://127.0.0.1:")
        sim.enable_kv("secret", 2)
        sim.put_kv("secret", "host/cfg", {"k": "v"})
        sim.enable_cert(certs={"web": (pem(pki["ca"]), {"secret/data/host/*": ["read"]})})
        url = f"{sim.address}/v1/auth/cert/login"
        ok = requests.post(url, json={}, cert=pki["client"], verify=pki["ca_file"], timeout=10)
        assert ok.status_code == 200
        auth = ok.json()["auth"]
        assert auth["policies"] == ["default", "web"]
        assert auth["metadata"]["cert_name"] == "web"
        assert auth["metadata"]["common_name"] == "client.example"
        c = client(sim, auth["client_token"], verify=pki["ca_file"])
        assert c.secrets.kv.v2.read_secret_version("host/cfg", raise_on_deleted_version=True)["data"][
            "data"
        ] == {"k": "v"}
        none = requests.post(url, json={}, verify=pki["ca_file"], timeout=10)
        assert (none.status_code, none.json()) == (400, {"errors": ["client certificate must be supplied"]})
        stranger = requests.post(url, json={}, cert=pki["stranger"], verify=pki["ca_file"], timeout=10)
        assert (stranger.status_code, stranger.json()) == (
            400,
            {"errors": ["invalid certificate or no client certificate supplied"]},
        )
        named = requests.post(
            url, json={"name": "other"}, cert=pki["client"], verify=pki["ca_file"], timeout=10
        )
        assert named.json() == {"errors": ["invalid certificate or no client certificate supplied"]}
        hc = hvac.Client(url=sim.address, verify=pki["ca_file"], cert=pki["client"], timeout=10)
        hc.auth.cert.login()
        assert hc.is_authenticated()


def test_cert_login_needs_tls(sim: VaultSimulator) -> None:
    sim.enable_cert(certs={})
    resp = call(sim, "POST", "auth/cert/login", token=None, body={})
    assert (resp.status_code, resp.json()) == (400, {"errors": ["tls connection required"]})


# --------------------------------------------------------------------------
# health, seal
# --------------------------------------------------------------------------


def test_health_and_seal_status_with_hvac(sim: VaultSimulator) -> None:
    c = client(sim)
    health = c.sys.read_health_status(method="GET")
    assert (health["initialized"], health["sealed"], health["standby"]) == (True, False, False)
    head = c.sys.read_health_status()  # hvac's default is HEAD
    assert head.status_code == 200 and head.content == b""
    assert c.sys.is_sealed() is False
    assert c.sys.is_initialized() is True


def test_sealed_vault(sim: VaultSimulator) -> None:
    sim.put_kv("kv1", "a", {"x": "y"})
    sim.sealed = True
    health = call(sim, "GET", "sys/health", token=None)
    assert health.status_code == 503 and health.json()["sealed"] is True
    assert call(sim, "GET", "sys/health?sealedcode=200", token=None).status_code == 200
    status = call(sim, "GET", "sys/seal-status", token=None)
    assert status.status_code == 200 and status.json()["sealed"] is True
    for resp in (
        call(sim, "GET", "kv1/a"),
        call(sim, "GET", "kv1/a", token="bogus"),
        call(sim, "POST", "auth/approle/login", token=None, body={}),
        call(sim, "GET", "sys/internal/ui/mounts/kv1"),
    ):
        assert (resp.status_code, resp.json()) == (503, {"errors": ["Vault is sealed"]})
    c = client(sim)
    assert c.sys.is_sealed() is True
    with pytest.raises(hvac.exceptions.VaultDown):
        c.secrets.kv.v1.read_secret("a", mount_point="kv1")
    sim.sealed = False
    assert c.secrets.kv.v1.read_secret("a", mount_point="kv1")["data"] == {"x": "y"}


# --------------------------------------------------------------------------
# namespaces
# --------------------------------------------------------------------------


def test_namespace_isolation(sim: VaultSimulator) -> None:
    for ns in ("team-a", "team-b"):
        sim.enable_kv("secret", 2, namespace=ns)
        sim.put_kv("secret", "cfg", {"owner": ns}, namespace=ns)
        sim.add_token(f"tok-{ns}", {"secret/data/*": ["read"]}, namespace=ns)
    sim.put_kv("secret", "cfg", {"owner": "root"})
    a = call(sim, "GET", "secret/data/cfg", token="tok-team-a", namespace="team-a")
    assert a.status_code == 200 and a.json()["data"]["data"] == {"owner": "team-a"}
    b = call(sim, "GET", "secret/data/cfg", namespace="team-b", token="tok-team-b")
    assert b.json()["data"]["data"] == {"owner": "team-b"}
    for other in ("team-b", None):
        cross = call(sim, "GET", "secret/data/cfg", token="tok-team-a", namespace=other)
        assert (cross.status_code, cross.json()) == (403, {"errors": [ERR_POLICY_DENIED]})
    prefixed = call(sim, "GET", "team-a/secret/data/cfg", token="tok-team-a")
    assert prefixed.status_code == 200 and prefixed.json()["data"]["data"] == {"owner": "team-a"}
    assert sim.requests[-1].namespace == "team-a" and sim.requests[-1].api_path == "secret/data/cfg"
    hv = client(sim, "tok-team-b", namespace="team-b")
    assert hv.secrets.kv.v2.read_secret_version("cfg", raise_on_deleted_version=True)["data"]["data"] == {
        "owner": "team-b"
    }
    unknown = call(sim, "GET", "secret/data/cfg", namespace="nope")
    assert (unknown.status_code, unknown.json()) == (404, {"errors": ["namespace not found"]})


def test_namespaced_approle_issues_namespaced_tokens(sim: VaultSimulator) -> None:
    sim.enable_kv("kv", 1, namespace="ns1")
    sim.put_kv("kv", "x", {"v": "1"}, namespace="ns1")
    sim.enable_approle("r", "rid", "sid", {"kv/*": ["read"]}, namespace="ns1")
    login = call(
        sim,
        "POST",
        "auth/approle/login",
        token=None,
        namespace="ns1",
        body={"role_id": "rid", "secret_id": "sid"},
    )
    tok = login.json()["auth"]["client_token"]
    assert call(sim, "GET", "kv/x", token=tok, namespace="ns1").status_code == 200
    assert (
        call(
            sim, "POST", "auth/approle/login", token=None, body={"role_id": "rid", "secret_id": "sid"}
        ).status_code
        == 403
    )


# --------------------------------------------------------------------------
# recording, latency, hang
# --------------------------------------------------------------------------


def test_requests_are_recorded_before_answering(sim: VaultSimulator) -> None:
    sim.clear_requests()
    call(sim, "POST", "kv1/x", body={"a": 1}, params={"q": "v"}, namespace="")
    call(sim, "GET", "kv1/x", token="bogus")
    sim.sealed = True
    call(sim, "GET", "kv1/x")
    first, denied, sealed = sim.requests
    assert (first.method, first.path, first.api_path) == ("POST", "/v1/kv1/x", "kv1/x")
    assert first.query == {"q": "v"} and first.body == {"a": 1} and first.raw_body == b'{"a": 1}'
    assert first.headers["x-vault-token"] == ROOT and first.token == ROOT
    assert all(name == name.lower() for name in first.headers)
    assert first.namespace == ""
    assert denied.token == "bogus"
    assert sealed.method == "GET" and sealed.token == ROOT
    assert sim.requests_to("/kv1/x", "get") == [denied, sealed]


def test_latency_delays_every_answer(sim: VaultSimulator) -> None:
    sim.latency = 0.3
    start = time.monotonic()
    assert call(sim, "GET", "sys/health").status_code == 200
    assert time.monotonic() - start >= 0.25
    sim.latency = 2.0
    with pytest.raises(requests.ReadTimeout):
        call(sim, "GET", "sys/health", timeout=0.2)
    assert len(sim.requests_to("sys/health")) == 2


def test_hang_never_answers_and_stop_releases_it() -> None:
    sim = VaultSimulator()
    sim.start()
    sim.hang = True
    with pytest.raises(requests.ReadTimeout):
        requests.get(f"{sim.address}/v1/sys/health", timeout=0.3)
    outcome: list[BaseException] = []

    def blocked() -> None:
        try:
            requests.get(f"{sim.address}/v1/sys/health", timeout=30)
        except requests.RequestException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=blocked, daemon=True)
    worker.start()
    deadline = time.monotonic() + 5
    while len(sim.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sim.requests) == 2  # accepted and recorded, never answered
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 5  # did not hang
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], requests.ConnectionError)
    sim.stop()  # idempotent


def test_sys_mounts_auth_and_capabilities_self(sim: VaultSimulator) -> None:
    sim.enable_approle("app", "rid", "sid", {})
    c = client(sim)
    mounts = c.sys.list_mounted_secrets_engines()
    assert mounts["data"]["secret/"]["type"] == "kv"
    assert mounts["data"]["secret/"]["options"] == {"version": "2"}
    assert mounts["secret/"] == mounts["data"]["secret/"]  # Vault's legacy top-level copy
    assert {"sys/", "cubbyhole/", "identity/", "kv1/"} <= set(mounts["data"])
    assert c.sys.list_auth_methods()["data"]["approle/"]["type"] == "approle"
    sim.add_token("reader", {"secret/data/app/*": ["read", "list"], "secret/data/app/admin": ["deny"]})
    paths = ["secret/data/app/x", "secret/data/app/admin", "kv1/x"]
    caps = call(sim, "POST", "sys/capabilities-self", token="reader", body={"paths": paths}).json()["data"]
    assert [caps[p] for p in paths] == [["list", "read"], ["deny"], ["deny"]]
    assert call(sim, "GET", "sys/mounts", token="reader").json() == {"errors": [ERR_POLICY_DENIED]}
