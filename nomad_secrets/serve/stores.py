"""The store clients of the server's requests: the one seam between the
doors and the backends.

- AWS (``aws-sm``, ``aws-ssm``): warm clients from the process's
  ``pool.StorePool``, the pool the node agent keeps too (botocore's client
  creation is serialized there; its clients are thread-safe), made at start
  in the main thread so that a missing region or credentials is said then,
  with call timeouts of ``server.request_seconds``. Each request still has
  its own deadline: ``resolve`` stops waiting for a store at it.
- Vault: warm from the same pool, as the node agent keeps it: one login
  (AppRole, cert) or the token file, kept while its TTL lasts, renewed,
  replaced when Vault rejects it, revoked when the server stops; mount
  lookups kept for a minute; each request reads with its own deadline.

The server reads with its own credentials, never a job's: no job options,
no workload identity (settings.py refuses ``vault.auth_method = "jwt"`` and
``aws.web_identity_role_arn``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nomad_secrets.core.config import AwsSettings, Config, Provider
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, PluginError
from nomad_secrets.stores.pool import StorePool
from nomad_secrets.stores.registry import Backend, open_backend

AWS_STORES = ("aws-sm", "aws-ssm")
NO_JOB = JobOptions()
NO_IDENTITY = Identity(namespace=None, job_id=None)


class ServerStores:
    def __init__(self, config: Config, call_seconds: float, default_store: str) -> None:
        """Make the AWS clients now (call in the main thread), when the config
        has an [aws] section or the default store is an AWS one."""
        self.config = config
        self.call_seconds = call_seconds  # what the pool times a warm client's calls by
        # The server reads with the top-level [aws] and [vault] settings.
        self.provider = Provider(name="serve", store=default_store, aws=config.aws, vault=config.vault)
        self.pool = StorePool()
        self._aws_failure: dict[str, PluginError] = {}
        self._aws_ready = config.aws != AwsSettings() or default_store in AWS_STORES
        if not self._aws_ready:
            return
        for store in AWS_STORES:
            try:
                self.pool.backend(store, self.provider, call_seconds, NO_JOB, NO_IDENTITY)
            except PluginError as exc:
                self._aws_failure[store] = ConfigError(
                    f"the server cannot read {store} ({exc.message.split(':')[0]}): set aws.region"
                    f" (and credentials, or use the node's instance profile) in {config.path}"
                )

    @contextmanager
    def backends(self, deadline: Deadline) -> Iterator[Callable[[str], Backend]]:
        """``backend_for`` for one request (``resolve.resolve``); what the
        request opened for itself is closed when it ends."""
        opened: list[Backend] = []

        def backend_for(store: str) -> Backend:
            if store in AWS_STORES:
                return self.aws_for(store)
            backend = self.vault_for(deadline)
            opened.append(backend)  # a lent view: closing it keeps the pool's login
            return backend

        try:
            yield backend_for
        finally:
            for backend in opened:
                backend.close()

    def aws_for(self, store: str) -> Backend:
        if store in self._aws_failure:
            raise self._aws_failure[store]
        if not self._aws_ready:
            raise ConfigError(
                f"the server has no [aws] section in {self.config.path}, so it cannot read {store}:"
                " add one with region (and credentials, or use the node's instance profile)"
            )
        warm = self.pool.backend(store, self.provider, self.call_seconds, NO_JOB, NO_IDENTITY)
        if warm is None:  # the pool keeps every AWS client made without a job's identity
            raise ConfigError(f"the server cannot keep a client for {store}")
        return warm

    def vault_for(self, deadline: Deadline) -> Backend:
        """The warm Vault, lent for one request (see the module's docstring)."""
        warm = self.pool.backend("vault", self.provider, self.call_seconds, NO_JOB, NO_IDENTITY, deadline)
        if warm is None:  # only a jwt login is never pooled, and settings.py refuses it here
            return open_backend("vault", self.provider, NO_JOB, NO_IDENTITY, deadline)
        return warm

    def close(self) -> None:
        """At shutdown: revoke the Vault login's token; never raises."""
        self.pool.close()

    def problems(self) -> list[str]:
        """Why a store cannot be read, for the start-up log."""
        return [failure.message for failure in self._aws_failure.values()]
