"""The store clients every request shares: the one seam between the doors
and the backends (``backends.open_backend``).

- AWS (``aws-sm``, ``aws-ssm``): one botocore client per store for the
  server's whole life, made at start in the main thread (botocore's client
  creation is not thread-safe; its clients are), with call timeouts of
  ``server.request_seconds``. Each request still has its own deadline:
  ``resolve`` stops waiting for a store at it.
- Vault: opened for each request and closed after it, so a login method
  (AppRole, cert) logs in per request and revokes its token at the end.
  A long-lived Vault token, renewed in the background and shared like the
  AWS clients, belongs here (``vault_for``) once the Vault backend can
  keep one; until then a Vault read costs a login.

The server reads with its own credentials, never a job's: no job options,
no workload identity (settings.py refuses ``vault.auth_method = "jwt"`` and
``aws.web_identity_role_arn``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nomad_secrets.backends import Backend, open_backend
from nomad_secrets.config import AwsSettings, Config
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import ConfigError, PluginError
from nomad_secrets.request import Identity, JobOptions

AWS_STORES = ("aws-sm", "aws-ssm")
_NO_JOB = (JobOptions(), Identity(namespace=None, job_id=None))


class StorePool:
    def __init__(self, config: Config, call_seconds: float, default_store: str) -> None:
        """Make the AWS clients now (call in the main thread), when the config
        has an [aws] section or the default store is an AWS one."""
        self.config = config
        self._aws: dict[str, Backend] = {}
        self._aws_failure: dict[str, PluginError] = {}
        if config.aws == AwsSettings() and default_store not in AWS_STORES:
            return
        for store in AWS_STORES:
            try:
                self._aws[store] = open_backend(store, config, *_NO_JOB, Deadline(call_seconds))
            except PluginError as exc:
                self._aws_failure[store] = ConfigError(
                    f"the server cannot read {store} ({exc.message.split(':')[0]}): set aws.region"
                    f" (and credentials, or use the node's instance profile) in {config.path}"
                )

    @contextmanager
    def backends(self, deadline: Deadline) -> Iterator[Callable[[str], Backend]]:
        """``backend_for`` for one request (``fetch.resolve``); what the
        request opened for itself is closed when it ends."""
        opened: list[Backend] = []

        def backend_for(store: str) -> Backend:
            if store in AWS_STORES:
                return self.aws_for(store)
            backend = self.vault_for(deadline)
            opened.append(backend)
            return backend

        try:
            yield backend_for
        finally:
            for backend in opened:
                backend.close()

    def aws_for(self, store: str) -> Backend:
        if store in self._aws:
            return self._aws[store]
        raise self._aws_failure.get(store) or ConfigError(
            f"the server has no [aws] section in {self.config.path}, so it cannot read {store}:"
            " add one with region (and credentials, or use the node's instance profile)"
        )

    def vault_for(self, deadline: Deadline) -> Backend:
        """A Vault client for one request (see the module's docstring)."""
        return open_backend("vault", self.config, *_NO_JOB, deadline)

    def problems(self) -> list[str]:
        """Why a store cannot be read, for the start-up log."""
        return [failure.message for failure in self._aws_failure.values()]

    def close(self) -> None:
        for backend in self._aws.values():
            backend.close()
        self._aws.clear()
