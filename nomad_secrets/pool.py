"""Warm store clients for a long-lived process (the node agent).

A fetch in process makes its clients and drops them; a process that answers
many fetches keeps them, so that each answer costs the call alone. Only a
client that does not depend on the job is kept: an AWS client made with the
operator's credentials, per store, settings and region. A client made with
a job's workload identity is that job's and is never shared, and Vault is
opened per fetch (its login's token is revoked at the end of each).

Creation is serialized (botocore's client creation is not thread-safe; its
clients are), and the pool is bounded: regions come from jobs, and each
client holds connections.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from nomad_secrets.backends import Backend, open_backend
from nomad_secrets.backends.aws import region_for
from nomad_secrets.config import Config
from nomad_secrets.deadline import Deadline
from nomad_secrets.request import Identity, JobOptions

MAX_CLIENTS = 32


class StorePool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: OrderedDict[tuple[str, str, str | None], Backend] = OrderedDict()

    def backend(
        self, store: str, config: Config, options: JobOptions, identity: Identity, deadline: Deadline
    ) -> Backend | None:
        """A warm client for ``store``, for the fetch of ``deadline``, or
        None when this fetch needs its own."""
        if store not in ("aws-sm", "aws-ssm") or config.aws.web_identity_role_arn:
            return None
        key = (store, repr(config.aws), region_for(config.aws, options))
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                # The process's deadline, not a fetch's: the client outlives it.
                lifetime = Deadline(config.plugin.deadline_seconds)
                client = open_backend(store, config, options, identity, lifetime)
                self._clients[key] = client
                while len(self._clients) > MAX_CLIENTS:
                    self._clients.popitem(last=False)[1].close()
            self._clients.move_to_end(key)
            return client

    def __len__(self) -> int:
        return len(self._clients)
