"""Workload identity tokens: their claims must be this job's, unexpired."""

from __future__ import annotations

import base64
import json
import time

import pytest

from nomad_secrets.core.identity import check_workload_token
from nomad_secrets.core.request import Identity
from nomad_secrets.process.errors import RequestError

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


@pytest.mark.parametrize(
    ("job_id", "claim", "ok"),
    [
        ("web/periodic-1700000000", "web", True),
        ("web/dispatch-1700000000-0a1b2c3d", "web", True),
        ("web/dispatch-nightly-1700000000-0a1b2c3d", "web", True),
        ("team/web/periodic-1700000000", "team/web", True),  # a parent with / in its ID
        ("web/periodic-1700000000", "web/periodic-1700000000", True),  # its own ID is fine too
        ("web/prod", "web", False),  # not a form Nomad gives children
        ("web/periodic-x", "web", False),
        ("web/dispatch-1700000000-XYZ", "web", False),
        ("other/periodic-1700000000", "web", False),
        ("web/periodic-1700000000", None, False),  # no claim at all
    ],
)
def test_a_childs_token_names_its_parent(job_id: str, claim: str | None, ok: bool) -> None:
    """Nomad puts the parent's ID in a dispatched or periodic child's
    nomad_job_id claim (Job.GetIDforWorkloadIdentity)."""
    token = jwt(claims(nomad_job_id=claim) if claim is not None else {**claims(), "nomad_job_id": None})
    identity = Identity(namespace="default", job_id=job_id)
    if ok:
        assert check_workload_token(token, identity)["nomad_job_id"] == claim
    else:
        with pytest.raises(RequestError, match="nomad_job_id claim"):
            check_workload_token(token, identity)
