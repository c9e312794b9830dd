"""Nomad's front door: the path and the environment Nomad gives the plugin
become references and a caller; the stores answer (stores/resolve.py).

The node agent runs the same function, with warm clients from its pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from nomad_secrets.core import policy
from nomad_secrets.core.config import Config, Provider, check_files, require_policy
from nomad_secrets.core.identity import check_workload_token
from nomad_secrets.core.reference import parse_path
from nomad_secrets.core.request import Identity, JobOptions, parse_environment
from nomad_secrets.process import limits
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.stores.registry import Backend, batched, open_backend
from nomad_secrets.stores.resolve import check_policy, resolve

if TYPE_CHECKING:
    from nomad_secrets.stores.pool import StorePool


class Reads(Protocol):
    """What a long-lived process puts in front of each store client of one
    fetch, and counts (the node agent's single flight and cache,
    agent/reads.py). It sees only references the policy allowed."""

    def wrap(
        self,
        backend: Backend,
        store: str,
        provider: Provider,
        options: JobOptions,
        claims: Mapping[str, object] | None,
        deadline: Deadline,
    ) -> Backend: ...

    def counts(self) -> dict[str, dict[str, int]]: ...


def fetch(
    path: str,
    environ: Mapping[str, str],
    provider_name: str,
    config: Config,
    deadline: Deadline,
    *,
    pool: StorePool | None = None,
    reads: Reads | None = None,
) -> dict[str, str]:
    """Nomad's question, answered; ``pool`` lends warm clients and ``reads``
    shares and keeps their reads (the agent)."""
    identity, options = parse_environment(environ)
    refs = parse_path(path)
    caller = policy.nomad_caller(identity.namespace, identity.job_id)
    provider = config.provider(provider_name)
    stores = [ref.scheme or provider.store for ref in refs]
    require_policy(config)
    check_policy(refs, stores, caller, config.policy, deadline)
    check_files(config, provider, stores)
    claims = None
    if options.workload_token is not None:
        claims = check_workload_token(options.workload_token, identity)
        # The store sees the job as its token names it: a child as its parent.
        identity = Identity(identity.namespace, str(claims["nomad_job_id"]))
    backends: dict[str, Backend] = {}

    def backend_for(store: str) -> Backend:
        seconds = config.plugin.deadline_seconds
        warm = None if pool is None else pool.backend(store, provider, seconds, options, identity, deadline)
        if warm is None:
            if store not in backends:
                backends[store] = open_backend(store, provider, options, identity, deadline)
            warm = backends[store]
        # Several secrets of the block in one call where the store can (BatchGetSecretValue).
        warm = batched(store, warm, [ref for ref, at in zip(refs, stores, strict=True) if at == store])
        return warm if reads is None else reads.wrap(warm, store, provider, options, claims, deadline)

    try:
        return resolve(refs, stores, backend_for, deadline, config.plugin.max_output_bytes)
    except BaseException as exc:
        # A library reports a limit as something else ("cannot connect"): say which limit.
        limit = limits.exhausted(exc)
        if limit is None:
            raise
        raise limit from None
    finally:
        for backend in backends.values():
            backend.close()
