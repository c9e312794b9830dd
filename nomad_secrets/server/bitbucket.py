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

from nomad_secrets.backends import STORE_LABELS
from nomad_secrets.errors import ConfigError, InvalidSecret, PluginError
from nomad_secrets.fetch import check_policy, resolve
from nomad_secrets.policy import Caller, glob_match
from nomad_secrets.reference import Reference
from nomad_secrets.server import oidc
from nomad_secrets.server.exchange import Incoming, LogValue, Outgoing, failure, json_answer, text
from nomad_secrets.server.settings import (
    BITBUCKET_PLACEHOLDERS,
    BitbucketSettings,
    Settings,
    normalize_bitbucket,
)
from nomad_secrets.server.stores import ServerStores

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
        self.default_store = settings.server.store
        self.max_output_bytes = settings.config.plugin.max_output_bytes
        self.pool = pool

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
            refs = self.references(step)
            if not refs:
                return json_answer({}, names=0, **log)
            stores = [ref.scheme or self.default_store for ref in refs]
            caller = Caller(fields=tuple(step.items()), placeholders=BITBUCKET_PLACEHOLDERS)
            check_policy(refs, stores, caller, self.settings.policy, request.deadline)
            with self.pool.backends(request.deadline) as backend_for:
                values = resolve(refs, stores, backend_for, request.deadline, self.max_output_bytes)
            for ref, store in zip(refs, stores, strict=True):
                if ref.name not in values:
                    raise InvalidSecret(
                        ref.text,
                        STORE_LABELS[store],
                        "the secret gives no single value (it is a JSON object, or binary)",
                        f"select one field for {ref.name} with #field in [[bitbucket.rule]]",
                    )
        except PluginError as exc:
            return failure(exc, request.deadline, **log)
        return json_answer({str(ref.name): values[str(ref.name)] for ref in refs}, names=len(refs), **log)

    def references(self, step: dict[str, str]) -> list[Reference]:
        """Every NAME = reference the matching rules give, once each."""
        chosen: dict[str, Reference] = {}
        for rule in self.settings.rules:
            if not all(glob_match(glob, step.get(key, "")) for key, glob in rule.when):
                continue
            for ref in rule.secrets:
                name = str(ref.name)
                if name in chosen and chosen[name].text != ref.text:
                    raise ConfigError(
                        f"two [[bitbucket.rule]]s give this step {name}, as {chosen[name].text!r} and"
                        f" {ref.text!r}; make the rules exclusive"
                    )
                chosen[name] = ref
        return list(chosen.values())


def caller_fields(claims: dict[str, Any]) -> dict[str, str]:
    return normalize_bitbucket({field: _claim(claims, claim) for field, claim in CLAIMS.items()})


def _claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def unauthorized() -> Outgoing:
    return Outgoing(401, content_type=None, headers={"WWW-Authenticate": "Bearer"}, outcome="unauthorized")
