"""Workload identity tokens: their claims must be this job's, unexpired."""

from __future__ import annotations

import base64
import json
import time

import pytest

from nomad_secrets.errors import RequestError
from nomad_secrets.identity import check_workload_token
from nomad_secrets.request import Identity

WEB = Identity(namespace="default", job_id="web")


def jwt(claims: dict[str, object]) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"nomad_namespace": "default", "nomad_job_id": "web", "exp": time.time() + 300}
    base.update(over)
    return base


def test_matching_token() -> None:
    assert check_workload_token(jwt(claims()), WEB)["nomad_job_id"] == "web"


@pytest.mark.parametrize(
    ("token_claims", "needle"),
    [
        (claims(nomad_job_id="admin"), "nomad_job_id claim is not 'web'"),
        (claims(nomad_namespace="prod"), "nomad_namespace claim is not 'default'"),
        (claims(exp=time.time() - 3600), "expired"),
        (claims(exp="tomorrow"), "no expiry"),
    ],
)
def test_mismatched_or_expired(token_claims: dict[str, object], needle: str) -> None:
    token = jwt(token_claims)
    with pytest.raises(RequestError, match=needle) as info:
        check_workload_token(token, WEB)
    assert token not in info.value.message


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "a." + "e30" * 0 + "W10.c"])
def test_malformed(token: str) -> None:
    with pytest.raises(RequestError, match="not a JWT"):
        check_workload_token(token, WEB)


def test_older_nomad_without_identity_cannot_use_tokens() -> None:
    with pytest.raises(RequestError, match=r"1\.11\.1"):
        check_workload_token(jwt(claims()), Identity(None, None))
