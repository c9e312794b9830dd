"""Bitbucket Pipelines' third-party secrets provider.

A step with ``oidc: true`` on a runner with ``SECRET_PROVIDER_URI`` makes the
runner call this endpoint (GET, or POST: Bitbucket's own announcement says
both) with the step's OIDC token in ``Authorization: Bearer``. The token is
verified against the workspace's issuer (oidc.py); a token that fails any
check gets 401 and nothing else.

Its claims are the caller: ``workspaceUuid``, ``repositoryUuid``,
``branchName``, ``deploymentEnvironmentUuid`` (deployment steps),
``pipelineUuid`` (UUIDs without their braces, lower case; a claim the token
lacks is empty). Every ``[[bitbucket.rule]]`` whose globs all match gives
the step its ``NAME = reference`` pairs; the optional ``[[bitbucket.policy]]``
then checks those references as ``[[policy]]`` checks a Nomad job's
(without it, the rules are the whole policy), and ``resolve`` reads them.
The answer is a flat JSON object with exactly those names, each one string:
a reference must give one value (select a field of a JSON secret with
``#field``). No rule for the step: ``{}``.
"""

from __future__ import annotations

from typing import Any

from nomad_secrets.process.errors import PluginError
from nomad_secrets.serve import named, oidc
from nomad_secrets.serve.exchange import Incoming, LogValue, Outgoing, failure, json_answer, text
from nomad_secrets.serve.settings import (
    BITBUCKET_PLACEHOLDERS,
    BitbucketSettings,
    Settings,
    normalize_bitbucket,
)
from nomad_secrets.serve.stores import ServerStores

# The caller's fields (settings.BITBUCKET_FIELDS) and the claims they come from.
CLAIMS = {
    "workspace": "workspaceUuid",
    "repository": "repositoryUuid",
    "branch": "branchName",
    "environment": "deploymentEnvironmentUuid",
    "pipeline": "pipelineUuid",
}


class Bitbucket:
    route: str = "/bitbucket/secrets"
    methods: tuple[str, ...] = ("GET", "POST")

    def __init__(self, settings: Settings, pool: ServerStores) -> None:
        assert settings.bitbucket is not None
        self.settings: BitbucketSettings = settings.bitbucket
        self.keys = oidc.IssuerKeys(
            self.settings.issuer,
            self.settings.jwks_cache_seconds,
            refresh_seconds=settings.server.request_seconds * 3 / 4,
            # Tokens naming a key we do not have wait for a refresh: at most
            # an eighth of the door threads (app.py) may wait so.
            max_waiting=max(1, settings.server.max_concurrent_reads // 8),
        )
        self.secrets = named.NamedSecrets(
            "bitbucket", self.settings.rules, self.settings.policy, BITBUCKET_PLACEHOLDERS, settings, pool
        )

    def handle(self, request: Incoming) -> Outgoing:
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized()
        try:
            claims = oidc.verify(
                token.strip(), self.keys, self.settings.audience, request.deadline, request.peer
            )
        except oidc.InvalidToken:
            return unauthorized()
        except oidc.IssuerUnavailable as exc:
            return text(503, f"cannot check the token: {exc}", "issuer-unavailable")
        step = caller_fields(claims)
        log: dict[str, LogValue] = {**step, "step": _claim(claims, "stepUuid")}
        try:
            values = self.secrets.values(step, request.deadline)
        except PluginError as exc:
            return failure(exc, request.deadline, **log)
        return json_answer(values, names=len(values), **log)


def caller_fields(claims: dict[str, Any]) -> dict[str, str]:
    return normalize_bitbucket({field: _claim(claims, claim) for field, claim in CLAIMS.items()})


def _claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def unauthorized() -> Outgoing:
    return Outgoing(401, content_type=None, headers={"WWW-Authenticate": "Bearer"}, outcome="unauthorized")
