"""Warm store clients for a long-lived process (the node agent).

A fetch in process makes its clients and drops them; a process that answers
many fetches keeps them, so that each answer costs the call alone. Only a
client that does not depend on the job is kept:

- an AWS client made with the operator's credentials, per store, settings
  and region; one made with a job's workload identity is that job's;
- a Vault backend per provider's effective Vault settings
  (backends/vault/warm.py: connections, the operator's token, found
  mounts), lent to each fetch with the fetch's deadline; a ``jwt`` login is
  the job's, so Vault is then opened per fetch.

A client is made outside the pool's lock: making one resolves credentials
(an instance profile's are a request away), and another fetch's warm client
must not wait for it. Each client has a botocore session of its own (a
session is not thread-safe, its clients are), and one key is made by one
thread at a time; the others of that key wait for it.

The pool is bounded: regions come from jobs, and each client holds
connections. A new client waits on probation (``MAX_NEW``) until it is
asked for again, and only then joins the warm ones (``MAX_CLIENTS``): a job
that cycles ``AWS_REGION`` churns the probation alone and evicts no warm
client (issue 23: it did). Vault's bound is its own, so that jobs naming
regions cannot evict the Vault login: its settings come from the operator.
``close`` (the agent's stop) revokes the Vault logins' tokens, as eviction
does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from nomad_secrets.backends import Backend, open_backend
from nomad_secrets.backends.aws import region_for
from nomad_secrets.config import Provider
from nomad_secrets.deadline import Deadline
from nomad_secrets.request import Identity, JobOptions

if TYPE_CHECKING:
    from nomad_secrets.agent.reads import SharedReads
    from nomad_secrets.backends.vault.warm import WarmVault

MAX_CLIENTS = 32
MAX_NEW = 8
MAX_VAULTS = 8

_Key = tuple[str, str, str | None]  # store, its settings, region


class StorePool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: OrderedDict[_Key, Backend] = OrderedDict()  # warm: asked for more than once
        self._new: OrderedDict[_Key, Backend] = OrderedDict()  # on probation: asked for once
        self._making: dict[_Key, threading.Lock] = {}  # one maker per key
        self._vaults: OrderedDict[str, WarmVault] = OrderedDict()
        # The node agent's single flight and cache (agent/reads.py): its own, set by it.
        self.shared: SharedReads | None = None

    def backend(
        self,
        store: str,
        provider: Provider,
        seconds: float,
        options: JobOptions,
        identity: Identity,
        deadline: Deadline | None = None,
    ) -> Backend | None:
        """A warm client for ``store`` with ``provider``'s settings, or None
        when this fetch needs its own. ``seconds``: plugin.deadline_seconds;
        ``deadline``: the fetch's, without which Vault is not lent."""
        if store == "vault":
            return self._vault(provider, seconds, deadline) if deadline is not None else None
        if store not in ("aws-sm", "aws-ssm") or provider.aws.web_identity_role_arn:
            return None
        key = (store, repr(provider.aws), region_for(provider.aws, options))
        with self._lock:
            client = self._kept(key)
            if client is not None:
                return client
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                client = self._kept(key)  # made by the thread this one waited for
            if client is not None:
                return client
            try:
                # The process's deadline, not a fetch's: the client outlives it.
                client = open_backend(store, provider, options, identity, Deadline(seconds))
            finally:
                with self._lock:
                    self._making.pop(key, None)
            with self._lock:
                self._new[key] = client
                evicted = _over(self._new, MAX_NEW)
        for old in evicted:
            old.close()
        return client

    def _kept(self, key: _Key) -> Backend | None:
        """The client kept for ``key``, marked as just used; one on
        probation joins the warm ones. Under the lock."""
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = self._new.pop(key, None)
        if client is not None:
            self._clients[key] = client
            for old in _over(self._clients, MAX_CLIENTS):
                old.close()  # an AWS client's close gives back nothing: cheap under the lock
        return client

    def _vault(self, provider: Provider, seconds: float, deadline: Deadline) -> Backend | None:
        settings = provider.vault  # the provider's own, over the top-level [vault]
        if settings.auth_method == "jwt":
            return None
        key = repr(settings)
        evicted: list[WarmVault] = []
        with self._lock:
            warm = self._vaults.get(key)
            if warm is None:
                from nomad_secrets.backends.vault.warm import WarmVault

                warm = WarmVault(settings, Deadline(seconds))
                self._vaults[key] = warm
                while len(self._vaults) > MAX_VAULTS:
                    evicted.append(self._vaults.popitem(last=False)[1])
            self._vaults.move_to_end(key)
        for old in evicted:  # revoking is a request: not under the lock
            old.close()
        return warm.lend(deadline)

    def close(self) -> None:
        """Give back what the pool holds (the Vault logins' tokens); never raises."""
        with self._lock:
            held: list[Backend | WarmVault] = [
                *self._clients.values(),
                *self._new.values(),
                *self._vaults.values(),
            ]
            self._clients.clear()
            self._new.clear()
            self._vaults.clear()
        for client in held:
            client.close()

    def __len__(self) -> int:
        return len(self._clients) + len(self._new) + len(self._vaults)


def _over(kept: OrderedDict[_Key, Backend], bound: int) -> list[Backend]:
    """Take the least recently used clients past ``bound`` out of ``kept``."""
    return [kept.popitem(last=False)[1] for _ in range(len(kept) - bound)]
