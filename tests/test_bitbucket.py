"""Bitbucket Pipelines' secrets provider over real HTTP, with a local OIDC
issuer (discovery document and JWKS) and tokens signed here with
cryptography as Bitbucket signs them (RS256), plus every way one can be bad."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, put_secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from support.netutil import dead_port_url
from support.serverutil import Answer, JsonService, Server, server_config

from nomad_secrets.serve import oidc

WORKSPACE = "{7d5b2b5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b}"
REPO = "{b3a6c0c2-9d8e-4f7a-8b6c-5d4e3f2a1b0c}"
ENV = "{e1e2e3e4-f5f6-4a7b-8c9d-0e1f2a3b4c5d}"
PIPELINE = "{p0p1p2p3-0000-4000-8000-000000000001}"
AUDIENCE = f"ari:cloud:bitbucket::workspace/{WORKSPACE[1:-1]}"
VALUES = ("npm-hunter2", "deploy-hunter2", "prod-hunter2", "shared-hunter2")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": b64url(n),
        "e": b64url(b"\x01\x00\x01"),
    }


class Issuer(JsonService):
    """Bitbucket's OIDC issuer for one workspace, on 127.0.0.1."""

    def __init__(self) -> None:
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.fetches: list[str] = []
        super().__init__()
        self.url = self.base

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        self.fetches.append(path)
        if path == "/.well-known/openid-configuration":
            return 200, {"issuer": self.url, "jwks_uri": self.url + "/keys"}
        if path == "/keys":
            return 200, {"keys": [jwk(key, kid) for kid, key in self.keys.items()]}
        return 404, {}

    def claims(self, **over: Any) -> dict[str, Any]:
        return step_claims(self.url, **over)

    def token(
        self, kid: str = "k1", key: rsa.RSAPrivateKey | None = None, alg: str = "RS256", **over: Any
    ) -> str:
        return signed_token(key or self.keys[kid], self.claims(**over), kid, alg)


def step_claims(issuer: str, **over: Any) -> dict[str, Any]:
    """A step's claims as Bitbucket's issuer at ``issuer`` signs them;
    ``over`` replaces (None: removes) any."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": f"{REPO}:{{step}}",
        "iat": now,
        "exp": now + 300,
        "workspaceUuid": WORKSPACE,
        "repositoryUuid": REPO,
        "pipelineUuid": PIPELINE,
        "stepUuid": "{s0000000-0000-4000-8000-000000000042}",
        "branchName": "main",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def signed_token(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = "k1", alg: str = "RS256") -> str:
    header = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url(signature)}"


RULES = f"""
[[bitbucket.rule]]                      # every step of the workspace
workspace = "{WORKSPACE}"
secrets = {{ NPM_TOKEN = "aws-sm:ci/bitbucket/npm#token" }}

[[bitbucket.rule]]                      # the repository's main branch
repository = "{REPO}"
branch = "main"
secrets = {{ DEPLOY_KEY = "aws-sm:ci/bitbucket/deploy#key", SHARED = "aws-ssm:/ci/shared/bitbucket" }}

[[bitbucket.rule]]                      # its production deployments
repository = "{REPO[1:-1].upper()}"
environment = "{ENV}"
secrets = {{ PROD_PASSWORD = "aws-sm:ci/bitbucket/prod#password" }}

[[bitbucket.rule]]                      # a mistake: a whole JSON object for one name
branch = "whole"
secrets = {{ WHOLE = "aws-sm:ci/bitbucket/prod" }}

[[bitbucket.rule]]                      # outside what the guard allows
branch = "blocked"
secrets = {{ OTHER = "aws-sm:elsewhere/thing" }}

[[bitbucket.policy]]
workspace = "{WORKSPACE}"
allow = ["aws-sm:ci/bitbucket/**", "aws-ssm:/ci/shared/*"]
"""


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    running = Issuer()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    issuer: Issuer,
    moto_endpoint: str,
    secretsmanager: Any,
    ssm: Any,
) -> Iterator[Server]:
    put_secret(secretsmanager, "ci/bitbucket/npm", json.dumps({"token": "npm-hunter2"}))
    put_secret(secretsmanager, "ci/bitbucket/deploy", json.dumps({"key": "deploy-hunter2"}))
    put_secret(secretsmanager, "ci/bitbucket/prod", json.dumps({"password": "prod-hunter2", "user": "p"}))
    ssm.put_parameter(
        Name="/ci/shared/bitbucket", Value="shared-hunter2", Type="SecureString", Overwrite=True
    )
    tmp = tmp_path_factory.mktemp("bitbucket")
    body = (
        aws_config(moto_endpoint) + f'[bitbucket]\nissuer = "{issuer.url}"\naudience = "{AUDIENCE}"\n' + RULES
    )
    config, port = server_config(tmp, body)
    with Server(config, port) as running:
        yield running


def secrets(server: Server, token: str, method: str = "GET", source: str | None = None) -> Answer:
    """The step's request, from ``source`` (another loopback address: another runner) when given."""
    conn = server.connection(source=source)
    try:
        return server.request(
            method,
            "/bitbucket/secrets",
            b"" if method == "POST" else None,
            {"Authorization": f"Bearer {token}"},
            conn=conn,
        )
    finally:
        conn.close()


def test_a_step_gets_exactly_the_names_its_rules_give(server: Server, issuer: Issuer) -> None:
    for method in ("GET", "POST"):
        answer = secrets(server, issuer.token(), method)
        assert answer.status == 200 and answer.headers["content-type"] == "application/json"
        assert answer.json() == {
            "NPM_TOKEN": "npm-hunter2",
            "DEPLOY_KEY": "deploy-hunter2",
            "SHARED": "shared-hunter2",
        }
    assert secrets(server, issuer.token(branchName="feature/x")).json() == {"NPM_TOKEN": "npm-hunter2"}
    deploy = secrets(server, issuer.token(branchName="v2", deploymentEnvironmentUuid=ENV)).json()
    assert deploy == {"NPM_TOKEN": "npm-hunter2", "PROD_PASSWORD": "prod-hunter2"}
    other = secrets(
        server, issuer.token(workspaceUuid="{00000000-0000-4000-8000-000000000000}", branchName="x")
    )
    assert (other.status, other.json()) == (200, {})


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong-aud",
        "wrong-iss",
        "wrong-key",
        "alg-none",
        "hs256-public-key",
        "future-iat",
        "no-exp",
        "unknown-kid",
    ],
)
def test_a_bad_token_gets_401_and_nothing_else(server: Server, issuer: Issuer, case: str) -> None:
    now = int(time.time())
    if case == "expired":
        token = issuer.token(exp=now - 120, iat=now - 600)
    elif case == "wrong-aud":
        token = issuer.token(aud="ari:cloud:bitbucket::workspace/someone-else")
    elif case == "wrong-iss":
        token = issuer.token(
            iss="https://api.bitbucket.org/2.0/workspaces/other/pipelines-config/identity/oidc"
        )
    elif case == "wrong-key":
        token = issuer.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif case == "alg-none":
        good = issuer.token()
        header = b64url(json.dumps({"alg": "none", "kid": "k1", "typ": "JWT"}).encode())
        token = f"{header}.{good.split('.')[1]}."
    elif case == "hs256-public-key":
        public = (
            issuer.keys["k1"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        header = b64url(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
        payload = b64url(json.dumps(issuer.claims()).encode())
        mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        token = f"{header}.{payload}.{b64url(mac)}"
    elif case == "future-iat":
        token = issuer.token(iat=now + 3600, exp=now + 7200)
    elif case == "no-exp":
        token = issuer.token(exp=None)
    else:
        token = issuer.token(kid="k-nobody-knows", key=issuer.keys["k1"])
    answer = secrets(server, token)
    assert (answer.status, answer.body) == (401, b"")
    assert answer.headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", "Bearer a.b"]
)
def test_no_or_a_malformed_token_gets_401(server: Server, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = server.request("GET", "/bitbucket/secrets", headers=headers)
    assert (answer.status, answer.body) == (401, b"")


def test_keys_are_cached_and_refreshed_on_an_unknown_kid(server: Server, issuer: Issuer) -> None:
    secrets(server, issuer.token())
    before = len(issuer.fetches)
    for _ in range(3):
        assert secrets(server, issuer.token()).status == 200
    assert len(issuer.fetches) == before  # cached
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # a rotation
    time.sleep(oidc.MIN_GAP_SECONDS + 0.1)  # past the last refresh (this module's unknown-kid case)
    # A runner's address that has not asked before: its unknown kid is a refresh.
    runner = "127.0.0.7"
    assert secrets(server, issuer.token(kid="k2"), source=runner).json()["NPM_TOKEN"] == "npm-hunter2"
    assert issuer.fetches[before:] == ["/.well-known/openid-configuration", "/keys"]
    # Another unknown kid from that address right away: no second refresh, just 401.
    assert secrets(server, issuer.token(kid="k3", key=issuer.keys["k2"]), source=runner).status == 401
    assert len(issuer.fetches) == before + 2


def test_a_reference_must_give_one_value(server: Server, issuer: Issuer) -> None:
    answer = secrets(server, issuer.token(branchName="whole"))
    assert answer.status == 422
    assert (
        b"'aws-sm:ci/bitbucket/prod' (AWS Secrets Manager): the secret gives no single value" in answer.body
    )
    assert b"hunter2" not in answer.body


def test_the_policy_guards_what_rules_read(server: Server, issuer: Issuer) -> None:
    answer = secrets(server, issuer.token(branchName="blocked"))
    assert answer.status == 403
    assert b"'aws-sm:elsewhere/thing': the operator's policy does not let workspace" in answer.body


def test_the_access_log_names_the_step_never_a_value(server: Server, issuer: Issuer) -> None:
    before = server.log_mark()
    secrets(server, issuer.token())
    secrets(server, issuer.token(aud="nope"))
    ok, refused = server.logged(before, 2)
    assert ok["status"] == 200 and ok["names"] == 3
    assert ok["workspace"] == WORKSPACE[1:-1] and ok["repository"] == REPO[1:-1] and ok["branch"] == "main"
    assert ok["step"] == "{s0000000-0000-4000-8000-000000000042}"
    assert (refused["status"], refused["outcome"]) == (401, "unauthorized")
    everything = "".join(server.stdout) + "".join(server.stderr)
    assert not [value for value in VALUES if value in everything]
    assert issuer.token().split(".")[0] not in everything


def test_an_unreachable_issuer_is_503_not_401(tmp_path: Path, issuer: Issuer, moto_endpoint: str) -> None:
    dead = dead_port_url()
    body = aws_config(moto_endpoint) + f'[bitbucket]\nissuer = "{dead}"\naudience = "{AUDIENCE}"\n' + RULES
    config, port = server_config(tmp_path, body)
    with Server(config, port) as running:
        answer = secrets(running, issuer.token(iss=dead))
    assert answer.status == 503 and b"cannot check the token" in answer.body
