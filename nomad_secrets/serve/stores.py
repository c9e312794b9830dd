"""The store clients of the server's requests: the one seam between the
doors and the backends.

Which of the two ways a store's client is had comes from its row in the
registry (stores/registry.py), in ``ServerStores.table``:

- shared, AWS (``aws-sm``, ``aws-ssm``): warm clients from the process's
  ``pool.StorePool``, the pool the node agent keeps too (botocore's client
  creation is serialized there; its clients are thread-safe), made at start
  in the main thread so that a missing region or credentials is said then,
  with call timeouts of ``server.request_seconds``. Each request still has
  its own deadline: ``resolve`` stops waiting for a store at it.
- lent, Vault: warm from the same pool, as the node agent keeps it: one login
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

from nomad_secrets.core.config import SECTIONS, Config, Provider
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, PluginError
from nomad_secrets.stores import registry
from nomad_secrets.stores.aws.store import NoRegion
from nomad_secrets.stores.pool import StorePool
from nomad_secrets.stores.registry import Backend, SharedClient, open_backend

NO_JOB = JobOptions()
NO_IDENTITY = Identity(namespace=None, job_id=None)


class ServerStores:
    def __init__(self, config: Config, call_seconds: float, default_store: str) -> None:
        """Make the shared clients now (call in the main thread) of every
        store whose section the config has, or whose section the default
        store reads."""
        self.config = config
        self.call_seconds = call_seconds  # what the pool times a warm client's calls by
        # The server reads with the top-level sections' settings ([aws], [vault]).
        self.provider = Provider(name="serve", store=default_store, aws=config.aws, vault=config.vault)
        self.pool = StorePool()
        # The server's store table: how each registered store's client is had.
        self.table: dict[str, Callable[[str, Deadline], Backend]] = {
            name: self.shared_for if isinstance(entry.warm, SharedClient) else self.lent_for
            for name, entry in registry.STORES.items()
        }
        self._failure: dict[str, PluginError] = {}
        default_section = registry.store(default_store).section
        self._ready = {
            section
            for section, settings_class in SECTIONS.items()
            if getattr(config, section) != settings_class() or section == default_section
        }
        for store, entry in registry.STORES.items():
            if isinstance(entry.warm, SharedClient) and entry.section in self._ready:
                try:
                    self.pool.backend(store, self.provider, call_seconds, NO_JOB, NO_IDENTITY)
                except PluginError as exc:
                    self._failure[store] = self._cannot_read(store, exc)

    def _cannot_read(self, store: str, exc: PluginError) -> ConfigError:
        if isinstance(exc, NoRegion):
            return ConfigError(
                f"the server cannot read {store} (no AWS region): set aws.region"
                f" (and credentials, or use the node's instance profile) in {self.config.path}"
            )
        return ConfigError(f"the server cannot read {store}: {exc.message}")

    @contextmanager
    def backends(self, deadline: Deadline) -> Iterator[Callable[[str], Backend]]:
        """``backend_for`` for one request (``resolve.resolve``); what the
        request opened for itself is closed when it ends."""
        opened: list[Backend] = []

        def backend_for(store: str) -> Backend:
            get = self.table[registry.store(store).scheme]  # an unknown store: the registry's error
            backend = get(store, deadline)
            if get == self.lent_for:
                opened.append(backend)  # a lent view: closing it keeps the pool's login
            return backend

        try:
            yield backend_for
        finally:
            for backend in opened:
                backend.close()

    def shared_for(self, store: str, deadline: Deadline | None = None) -> Backend:
        """The warm client every request shares (made at start)."""
        if store in self._failure:
            raise self._failure[store]
        section = registry.store(store).section
        if section not in self._ready:
            raise ConfigError(
                f"the server has no [{section}] section in {self.config.path}, so it cannot read {store}:"
                " add one with region (and credentials, or use the node's instance profile)"
            )
        warm = self.pool.backend(store, self.provider, self.call_seconds, NO_JOB, NO_IDENTITY)
        if warm is None:  # the pool keeps every shared client made without a job's identity
            raise ConfigError(f"the server cannot keep a client for {store}")
        return warm

    def lent_for(self, store: str, deadline: Deadline) -> Backend:
        """The warm store, lent for one request (see the module's docstring)."""
        warm = self.pool.backend(store, self.provider, self.call_seconds, NO_JOB, NO_IDENTITY, deadline)
        if warm is None:  # only a jwt login is never pooled, and settings.py refuses it here
            return open_backend(store, self.provider, NO_JOB, NO_IDENTITY, deadline)
        return warm

    def close(self) -> None:
        """At shutdown: revoke the Vault login's token; never raises."""
        self.pool.close()

    def problems(self) -> list[str]:
        """Why a store cannot be read, for the start-up log."""
        return [failure.message for failure in self._failure.values()]
