"""Who a caller of the agent speaks for, when it is not root.

Root and the agent's own user can run the plugin themselves, with any
environment: what they state (NOMAD_NAMESPACE, NOMAD_JOB_ID, set by the
Nomad client) is taken as the plugin takes it. A user in ``agent.users``
(a Nomad client that does not run as root, whose raw_exec tasks run as
that user too) could state any job: it is answered only when its
NOMAD_WORKLOAD_TOKEN, the signature verified against the Nomad cluster's
JWKS in ``agent.nomad_jwks_file`` (nomad_jwks.py), proves the job it
states: the same job, or (Nomad's dispatched and periodic children carry
their parent's ID in the token) a child of exactly Nomad's form of the
token's job. The stated IDs are kept, never replaced by the token's, so
the policy sees what it sees in process.
"""

from __future__ import annotations

import time

from nomad_secrets.agent import nomad_jwks
from nomad_secrets.core.config import Config
from nomad_secrets.core.identity import nomad_parent
from nomad_secrets.process.trust import untrusted


class NotVerified(Exception):
    """Why the caller is not answered (said to it, and in the journal)."""


def verified_job(config: Config, environ: dict[str, str]) -> tuple[str, str]:
    """The namespace and job the caller's token proves."""
    jwks = config.agent.nomad_jwks_file
    if jwks is None:
        raise NotVerified(
            "a caller other than root is answered only for the job its Nomad workload identity proves,"
            " and agent.nomad_jwks_file is not set: fetches of this user run in process"
        )
    problem = untrusted(jwks, "Nomad JWKS file")
    if problem:
        raise NotVerified(problem)
    token = environ.get("NOMAD_WORKLOAD_TOKEN")
    if not token:
        raise NotVerified(
            "a caller other than root must pass the job's NOMAD_WORKLOAD_TOKEN in its env block"
        )
    try:
        claims = nomad_jwks.verified_claims(token, nomad_jwks.load_jwks(jwks), time.time())
    except nomad_jwks.JwksError as exc:
        raise NotVerified(str(exc)) from None
    except nomad_jwks.TokenRejected as exc:
        raise NotVerified(f"NOMAD_WORKLOAD_TOKEN was refused: {exc.reason}") from None
    namespace, job = str(claims["nomad_namespace"]), str(claims["nomad_job_id"])
    stated_namespace, stated_job = environ.get("NOMAD_NAMESPACE"), environ.get("NOMAD_JOB_ID")
    if stated_namespace != namespace or (stated_job != job and nomad_parent(stated_job or "") != job):
        raise NotVerified(
            "NOMAD_WORKLOAD_TOKEN is not the stated job's: the token proves another namespace or job than"
            " NOMAD_NAMESPACE and NOMAD_JOB_ID say"
        )
    return namespace, stated_job or job
