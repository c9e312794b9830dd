"""Where the plugin's Vault token comes from, and how long it is kept.

``Login`` is the token and its lease, shared by every fetch a process
serves: the one fetch of a plugin process, or many in the node agent
(``warm.py``). ``Auth`` is one fetch's side of it: that fetch's client
(its deadline), the token it logged in for, a login failure its references
share, and whether Vault accepted the token during it.

- ``token``: read from ``vault.token_file``; the operator's, never renewed
  nor revoked. A long-lived process reads the file again for each fetch
  (``Login.reread``), so a rotated token is used from the next fetch on.
- ``approle``, ``cert``: one login, lazily, on the first read, under a lock;
  kept while its lease lasts. Once less than a third of it is left, the
  next fetch renews it (``auth/token/renew-self``) if Vault lets it, else
  logs in again (a new secret_id in ``vault.secret_id_file`` is read then);
  meanwhile the other fetches keep using it. A token Vault no longer
  accepts is dropped, and the fetch that found it logs in again.
  ``close`` revokes the login's token when ``vault.revoke_token`` is set.
- ``jwt``: the job's workload identity, so one login per fetch, never
  shared. fetch.py has already checked that the workload token's claims
  name the job Nomad says is asking (identity.py).
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from nomad_secrets.core.config import VaultSettings
from nomad_secrets.core.reference import Reference
from nomad_secrets.core.request import JobOptions
from nomad_secrets.process import debuglog
from nomad_secrets.process.errors import AccessDenied, ConfigError, RequestError, StoreError
from nomad_secrets.stores.vault.client import LABEL, UI_MOUNTS, Client

METHODS = ("token", "approle", "cert", "jwt")
LOGIN_HINTS = {
    "approle": "check vault.role_id and vault.secret_id_file, and that the secret_id has not expired"
    " or run out of uses",
    "cert": "check that the cert auth role (vault.role) trusts vault.client_cert",
    "jwt": "check vault.role and the role's bound audiences and claims against the job's workload identity",
}
# What to do when Vault no longer accepts the token a method gave.
TOKEN_HINTS = {
    "token": "the operator renews the token in vault.token_file",
    **{
        method: f"the login's token ended at once: check the {kind} role's token_ttl and token_num_uses"
        for method, kind in (("approle", "AppRole"), ("cert", "cert"), ("jwt", "JWT"))
    },
}
_CREDENTIAL = re.compile(r"[\x21-\x7e]+\Z")  # one header-safe word: no space, no newline
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")
RENEW_FRACTION = 1 / 3  # renew (or log in again) once less than this part of the lease is left
EXPIRY_MARGIN = 2.0  # seconds: a token this close to its end counts as ended
RETIRED_KEPT = 4  # replaced tokens and secret_ids still blanked out of messages


@dataclass(frozen=True)
class Lease:
    """A token and how long Vault lets it live."""

    token: str
    owned: bool  # a login here made it (so close may revoke it)
    expires: float = math.inf  # time.monotonic(); inf: no TTL (a token_file token, a root token)
    ttl: float = 0.0  # seconds granted by the login or the last renewal
    renewable: bool = False

    def alive(self) -> bool:
        """Not yet at its end, by Vault's word at the login (or the renewal)."""
        return self.expires > time.monotonic()

    def usable(self) -> bool:
        """Alive, with a margin for a fetch's reads."""
        return self.expires - time.monotonic() > EXPIRY_MARGIN

    def fresh(self) -> bool:
        """Good for another fetch without a word to Vault."""
        left = self.expires - time.monotonic()
        return left > EXPIRY_MARGIN and left > self.ttl * RENEW_FRACTION


class Login:
    """The token of a process (or of one fetch, for ``jwt``), shared by its fetches."""

    def __init__(self, settings: VaultSettings, options: JobOptions, client: Client) -> None:
        """Check the method's settings and read its credentials; no network here.

        ``client`` holds the credentials to blank out of messages; each
        network call goes through the client of the fetch making it.
        """
        self.client = client
        self.method = settings.auth_method
        self.mount = (settings.auth_mount or self.method).strip("/")
        self.revoke_token = settings.revoke_token
        self.held: Lease | None = None  # read without the lock: replaced whole, never changed
        self._body: dict[str, str] = {}
        self._token_file = settings.token_file
        self._secret_id_file = settings.secret_id_file
        self._retired: list[str] = []
        if self.method == "token":
            self.held = Lease(self._read(settings.token_file, "vault.token_file", "a Vault token"), False)
        elif self.method == "approle":
            if not settings.role_id:
                raise ConfigError('vault.auth_method = "approle" needs vault.role_id; set it in the config')
            secret_id = self._read(settings.secret_id_file, "vault.secret_id_file", "an AppRole secret_id")
            client.credentials.append(settings.role_id)
            self._body = {"role_id": settings.role_id, "secret_id": secret_id}
        elif self.method == "cert":
            if not client.base.startswith("https://") or not settings.client_cert:
                raise ConfigError(
                    'vault.auth_method = "cert" needs an https:// vault.address and vault.client_cert'
                    " (and vault.client_key unless the key is in that file); set them in the config"
                )
            if settings.role:
                self._body = {"name": settings.role}
        elif self.method == "jwt":
            jwt = options.workload_token
            if not jwt:
                raise RequestError(
                    "this node's Vault login uses the job's workload identity: add an identity block"
                    " (env = true) to the task and set NOMAD_WORKLOAD_TOKEN ="
                    ' "${NOMAD_TOKEN_<identity name>}" in the secret block\'s env'
                )
            client.credentials.append(jwt)
            if not _JWT.match(jwt):
                raise RequestError(
                    "NOMAD_WORKLOAD_TOKEN is not a JWT; set it to"
                    ' "${NOMAD_TOKEN_<identity name>}" (Nomad before 1.11.3 does not interpolate'
                    " the secret block's env)"
                )
            self._body = {"jwt": jwt}
            if settings.role:
                self._body["role"] = settings.role
        else:
            raise ConfigError(f"vault.auth_method is {self.method!r}; use one of {', '.join(METHODS)}")
        self.attempts = 0  # logins tried
        self.lock = threading.Lock()  # held by the fetch that logs in or renews
        self._closed = False
        self._state = threading.Lock()  # short sections: held, _closed, _retired

    def reread(self) -> None:
        """For a long-lived process, before each fetch: the token in
        ``vault.token_file`` as it is now (the operator may have rotated it)."""
        if self.method != "token":
            return
        token = self._read(self._token_file, "vault.token_file", "a Vault token")
        held = self.held
        if held is None or held.token != token:
            self.held = Lease(token, False)
            if held is not None:
                self._retire(held.token)

    def refresh(self, ref: Reference, client: Client) -> str:
        """A token for the fetch of ``client``, the caller holding ``lock``:
        the held one renewed if Vault extends it enough, else a new login."""
        held = self.held
        if held is not None and held.owned and held.renewable and held.alive():
            renewed = self._renew(ref, client, held)
            # Worth it only if Vault extends the lease: near the role's max
            # TTL it gives what is left, and a new login is due.
            if renewed is not None and renewed.expires - held.expires > held.ttl * RENEW_FRACTION:
                self.held = renewed
                return renewed.token
        if self.attempts and self.method == "approle":  # the operator may have put a new secret_id there
            secret_id = self._read(self._secret_id_file, "vault.secret_id_file", "an AppRole secret_id")
            if secret_id != self._body["secret_id"]:
                self._retire(self._body["secret_id"])
                self._body["secret_id"] = secret_id
        self.attempts += 1
        lease = self._login(ref, client)
        with self._state:
            closed = self._closed
            if not closed:
                self.held = lease
        if closed:  # the fetch (or the process) ended while we logged in: leave no token behind
            self._revoke(client, lease.token)
            raise client.timed_out(ref)
        if held is not None:  # near its end, or dead: left to its TTL
            self._retire(held.token)
        return lease.token

    def drop(self, token: str) -> None:
        """Vault no longer accepts ``token``: the next fetch logs in again."""
        with self._state:
            dropped = self.held is not None and self.held.token == token
            if dropped:
                self.held = None
        if dropped:
            self._retire(token)

    def close(self, client: Client) -> None:
        """Revoke a login's token (if vault.revoke_token); twice is harmless, never raises."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            held = self.held
        if held is not None and held.owned and held.alive():
            self._revoke(client, held.token)

    def _login(self, ref: Reference, client: Client) -> Lease:
        api_path = f"auth/{self.mount}/login"
        where = f"the {self.method} auth method at auth/{self.mount}/"
        started = time.monotonic()
        status, body = answer = client.call(ref, "POST", api_path, token=None, payload=self._body)
        seconds = round(time.monotonic() - started, 3)
        debuglog.log("vault-login", method=self.method, mount=self.mount, status=status, seconds=seconds)
        said = client.said(body)
        if status == 403:  # what Vault and OpenBao answer where no auth method is enabled
            raise AccessDenied(
                ref.text,
                LABEL,
                f"no auth method answers at auth/{self.mount}/ (HTTP 403){said}",
                f"check vault.auth_mount (the path the {self.method} auth method is enabled at)"
                " and vault.namespace",
            )
        if status in (400, 401):
            raise AccessDenied(ref.text, LABEL, f"login with {where} failed{said}", LOGIN_HINTS[self.method])
        if status == 404:
            raise StoreError(
                ref.text, LABEL, f"no login endpoint at {api_path}{said}", "check vault.auth_mount"
            )
        if status != 200:
            raise client.unexpected(ref, answer)
        lease = _lease(body, started)
        if lease is None:
            raise StoreError(
                ref.text,
                LABEL,
                f"login with {where} gave no client token",
                "check vault.address and the method",
            )
        client.credentials.append(lease.token)
        return lease

    def _renew(self, ref: Reference, client: Client, held: Lease) -> Lease | None:
        """The held token with a longer lease, or None if Vault did not give one."""
        started = time.monotonic()
        try:
            status, body = client.call(ref, "POST", "auth/token/renew-self", token=held.token, payload={})
        except StoreError as exc:
            debuglog.log("vault-renew-failed", error=type(exc).__name__)
            return None
        lease = _lease(body, started) if status == 200 else None
        debuglog.log("vault-renew", status=status, ttl=lease.ttl if lease else None)
        return lease if lease is not None and lease.token == held.token else None

    def _revoke(self, client: Client, token: str) -> None:
        if self.revoke_token:
            client.revoke(token)

    def _retire(self, secret: str) -> None:
        """``secret`` was replaced: blank it out of messages a while longer
        (a fetch may still be reading with it), then forget it."""
        with self._state:
            self._retired.append(secret)
            if len(self._retired) <= RETIRED_KEPT:
                return
            old = self._retired.pop(0)
            held = self.held
            in_use = {*self._retired, held.token if held else "", self._body.get("secret_id", "")}
        if old not in in_use:  # a file rotated back to an old value stays blanked out
            self.client.forget(old)

    def _read(self, path: str | None, key: str, what: str) -> str:
        if not path:
            raise ConfigError(
                f"vault.auth_method = {self.method!r} needs {key}: set it to a file holding {what}"
            )
        try:
            with open(path, "rb") as f:
                raw = f.read(64 * 1024)
        except OSError as exc:
            raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from None
        text = raw.decode("utf-8", "replace").strip()
        if not text or not _CREDENTIAL.match(text):
            raise ConfigError(f"{key} {path} does not hold {what} (one line of printable ASCII)")
        if text not in self.client.credentials:
            self.client.credentials.append(text)
        return text


class Auth:
    """One fetch's token: through that fetch's client, from the process's ``Login``."""

    def __init__(self, login: Login, client: Client) -> None:
        self.login, self.client = login, client
        self.method = login.method
        self._got: str | None = None  # the token this fetch logged in for
        self._failure: BaseException | None = None
        self._alive: str | None = None  # the token check_alive proved alive
        self._dead: set[str] = set()  # tokens check_alive found dead

    @property
    def owned(self) -> bool:
        """Did a login make the token (so close may revoke it)?"""
        held = self.login.held
        return held is not None and held.owned

    def token(self, ref: Reference) -> str:
        """The token, logging in (or renewing) when the process holds none good enough.

        Lazily, not in __init__: __init__ runs in the main thread before
        fetch.py starts its deadline-bounded wait, so a login here counts
        against the same deadline as the reads, and its failure is a
        StoreError naming a reference. One login at a time: the first
        reader logs in while the others wait on the lock (at most until
        their fetch's deadline), then share its token, or within a fetch
        its failure, so an AppRole secret_id with limited uses is spent
        once. A token that still lives is used while another fetch renews
        it, and kept if that fails.
        """
        login = self.login
        held = login.held
        if held is not None and (held.token == self._got or held.fresh()):
            return held.token
        if not login.lock.acquire(blocking=False):
            if held is not None and held.usable():
                return held.token  # another fetch is renewing it
            if not login.lock.acquire(timeout=max(self.client.deadline.remaining(), 0.0)):
                raise self.client.timed_out(ref)
        try:
            if self._failure is not None:
                raise self._failure
            held = login.held
            if held is not None and (held.token == self._got or held.fresh()):
                return held.token
            try:
                self._got = login.refresh(ref, self.client)
            except BaseException as exc:
                if held is not None and held.usable() and held is login.held:
                    debuglog.log("vault-token-kept", error=type(exc).__name__)
                    return held.token
                self._failure = exc
                raise
            return self._got
        finally:
            login.lock.release()

    def check_alive(self, ref: Reference, token: str) -> None:
        """After a 403: raise if Vault does not accept the token at all.

        Vault and OpenBao answer a dead token (revoked, expired, unknown)
        and a policy denial alike, "permission denied", so ask once: listing
        the mounts (``sys/internal/ui/mounts``, no path) needs a live token
        and no policy, so a 403 there can only mean the token is dead. Asked
        once per fetch and token: a live token stays so for the fetch's seconds.
        """
        if self._alive == token:
            return
        status, _ = self.client.call(ref, "GET", UI_MOUNTS, token=token)
        if status == 403:
            self._dead.add(token)
            raise AccessDenied(
                ref.text,
                LABEL,
                "Vault does not accept the plugin's token (invalid, expired or revoked)",
                TOKEN_HINTS[self.method],
            )
        self._alive = token

    def replace_dead(self, token: str) -> bool:
        """After a read failed: may the fetch log in again and read once more?

        Only when Vault found ``token`` dead and it is a login's token from
        an earlier fetch of a long-lived process; a token this fetch logged
        in for, or one the operator's file holds, fails the fetch, as in a
        plugin process.
        """
        if token not in self._dead or token == self._got or self.method == "token":
            return False
        self.login.drop(token)
        return True


def _lease(body: dict[str, Any] | None, started: float) -> Lease | None:
    """The lease of a login's or a renewal's answer; None without a token."""
    auth = body.get("auth") if body else None
    token = auth.get("client_token") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or not isinstance(token, str) or not _CREDENTIAL.match(token):
        return None
    ttl = auth.get("lease_duration")
    ttl = float(ttl) if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0 else 0.0
    expires = started + ttl if ttl else math.inf
    return Lease(token, True, expires, ttl, auth.get("renewable") is True)
