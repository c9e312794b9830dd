"""The job's Nomad workload identity token, checked before it is used.

A job can hand its workload identity JWT to the plugin (env block
``NOMAD_WORKLOAD_TOKEN = "${NOMAD_TOKEN_<identity>}"``). The store that
receives it (Vault's JWT auth, AWS STS) verifies its signature against
Nomad's JWKS; the plugin cannot, having no trust root of its own. What the
plugin checks first is that the token speaks for the job Nomad says is
asking: its ``nomad_namespace`` and ``nomad_job_id`` claims must equal the
NOMAD_NAMESPACE and NOMAD_JOB_ID that Nomad set, and it must not have
expired. Otherwise job A could pass job B's token (from B's logs, say) and
log in as B. The token itself never appears in a message.

Nomad's children (dispatched and periodic jobs) carry their parent's ID in
the ``nomad_job_id`` claim (Nomad's ``Job.GetIDforWorkloadIdentity``),
while NOMAD_JOB_ID is the child's own ID, ``<parent>/periodic-<unix>`` or
``<parent>/dispatch-[<prefix>-]<unix>-<8 hex>`` (nomad/structs). So for an
ID of exactly that form the claim may name the parent. The store, which
verifies the signature, then sees the parent, as Nomad intends.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time

from nomad_secrets.core.request import Identity
from nomad_secrets.process.errors import RequestError

LEEWAY_SECONDS = 30  # clock skew between the Nomad servers and this node
_CHILD = re.compile(r"(.+)/(?:periodic-[0-9]+|dispatch-(?:.+-)?[0-9]+-[0-9a-f]{8})\Z", re.S)


def nomad_parent(job_id: str) -> str | None:
    """The parent's ID when ``job_id`` has the form Nomad gives the jobs it
    launches from a periodic or parameterized job, else None. The form
    alone proves nothing (anyone who may submit jobs can choose such an
    ID); it only tells which claim a genuine child's token carries."""
    match = _CHILD.match(job_id)
    return match.group(1) if match else None


def check_workload_token(token: str, identity: Identity, now: float | None = None) -> dict[str, object]:
    """The token's claims, once they match ``identity``; RequestError if not."""
    claims = _claims(token)
    if identity.namespace is None or identity.job_id is None:
        raise RequestError(
            "NOMAD_WORKLOAD_TOKEN needs Nomad 1.11.1 or newer: this Nomad sets no"
            " NOMAD_NAMESPACE/NOMAD_JOB_ID to check the token against"
        )
    expected_job = identity.job_id
    parent = nomad_parent(identity.job_id)
    if parent is not None and claims.get("nomad_job_id") == parent:
        expected_job = parent  # a child's token names its parent
    for claim, expected in (("nomad_namespace", identity.namespace), ("nomad_job_id", expected_job)):
        if claims.get(claim) != expected:
            raise RequestError(
                f"NOMAD_WORKLOAD_TOKEN is not this job's: its {claim} claim is not {expected!r};"
                ' pass this task\'s own token, "${NOMAD_TOKEN_<identity name>}"'
            )
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise RequestError("NOMAD_WORKLOAD_TOKEN has no expiry (exp claim); give the identity block a ttl")
    if exp + LEEWAY_SECONDS < (time.time() if now is None else now):
        raise RequestError(
            "NOMAD_WORKLOAD_TOKEN has expired; Nomad renews identities with a ttl:"
            " restart the task or raise the identity block's ttl"
        )
    return claims


def _claims(token: str) -> dict[str, object]:
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 16 * 1024:
        raise RequestError("NOMAD_WORKLOAD_TOKEN is not a JWT (three dot-separated parts)")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError, RecursionError):
        raise RequestError("NOMAD_WORKLOAD_TOKEN is not a JWT: its payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise RequestError("NOMAD_WORKLOAD_TOKEN is not a JWT: its payload is not a JSON object")
    return claims
