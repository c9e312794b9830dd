"""Vault kept warm by a long-lived process (the node agent, pool.py).

A plugin process opens Vault for its one fetch: new connections, a login,
a mount preflight, and the token revoked at the end. A process that serves
many fetches keeps what does not depend on the job and lends it to each
fetch with that fetch's own deadline (``Vault.lent``):

- the connections (one urllib3 pool: TLS set up once, then reused);
- the operator's token: ``token_file`` read again for each fetch, an
  ``approle`` or ``cert`` login kept while its lease lasts, renewed or
  replaced near its end (auth.py), revoked by ``close``;
- the mounts found by preflights, for ``MOUNT_TTL`` seconds (kv.py).

A ``jwt`` login is the job's own: it is never kept here (pool.py opens
Vault per fetch for it). Nothing here holds a secret value.
"""

from __future__ import annotations

from nomad_secrets.core.config import VaultSettings
from nomad_secrets.core.request import JobOptions
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.stores.vault.auth import Login
from nomad_secrets.stores.vault.client import REVOKE_TIMEOUT, Client
from nomad_secrets.stores.vault.kv import Mounts
from nomad_secrets.stores.vault.store import Vault


class WarmVault:
    def __init__(self, settings: VaultSettings, lifetime: Deadline) -> None:
        """Check the config and read the credentials; no network here.
        ``lifetime``: the client's own deadline, never a fetch's (each
        fetch's calls get that fetch's)."""
        if settings.auth_method == "jwt":
            raise ValueError("a jwt login is the job's own: open Vault per fetch")
        self.client = Client(settings, lifetime)
        self.login = Login(settings, JobOptions(), self.client)
        self.mounts = Mounts(settings.kv_mounts)

    def lend(self, deadline: Deadline) -> Vault:
        """The backend for one fetch, with its deadline. Reads the token
        file again (``token``): a ConfigError here is the fetch's, as when
        a plugin process opens Vault."""
        self.login.reread()
        return Vault.lent(self.client.with_deadline(deadline), self.login, self.mounts)

    def close(self) -> None:
        """Revoke the login's token (if vault.revoke_token); never raises."""
        self.login.close(self.client.with_deadline(Deadline(REVOKE_TIMEOUT)))
