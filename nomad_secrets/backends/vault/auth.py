"""Where the plugin's Vault token comes from, and how long it is kept.

``token``: read from ``vault.token_file``; the operator's, never revoked.
``approle``, ``cert``, ``jwt``: one login per process, lazily, on the first
read, under a lock (``Auth.token``); ``close`` revokes the login's token
when ``vault.revoke_token`` is set. For ``jwt``, fetch.py has already
checked that the workload token's claims name the job Nomad says is asking
(identity.py).
"""

from __future__ import annotations

import re
import threading
import time

from nomad_secrets import debuglog
from nomad_secrets.backends.vault.client import LABEL, UI_MOUNTS, Client
from nomad_secrets.config import VaultSettings
from nomad_secrets.errors import AccessDenied, ConfigError, RequestError, StoreError
from nomad_secrets.reference import Reference
from nomad_secrets.request import JobOptions

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


class Auth:
    def __init__(self, settings: VaultSettings, options: JobOptions, client: Client) -> None:
        """Check the method's settings and read its credentials; no network here."""
        self.client = client
        self.method = settings.auth_method
        self.mount = (settings.auth_mount or self.method).strip("/")
        self.revoke_token = settings.revoke_token
        self._token: str | None = None
        self._body: dict[str, str] = {}
        if self.method == "token":
            self._token = self._read(settings.token_file, "vault.token_file", "a Vault token")
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
        self.owned = False  # did a login here make the token (so close may revoke it)?
        self._closed = False
        self._alive = False  # proved by check_alive
        self._failure: BaseException | None = None
        self._state = threading.Lock()  # short sections: _token, owned, _closed, _alive
        self._login_lock = threading.Lock()  # held for the one login

    def token(self, ref: Reference) -> str:
        """The token, logging in on the first call.

        Lazily, not in __init__: __init__ runs in the main thread before
        fetch.py starts its deadline-bounded wait, so a login here counts
        against the same deadline as the reads, and its failure is a
        StoreError naming a reference. One login per process: the first
        reader logs in while the others wait on the lock (at most until the
        deadline), then share its token, or its failure, so an AppRole
        secret_id with limited uses is spent once.
        """
        token = self._token
        if token is not None:
            return token
        if not self._login_lock.acquire(timeout=max(self.client.deadline.remaining(), 0.0)):
            raise self.client.timed_out(ref)
        try:
            if self._token is not None:
                return self._token
            if self._failure is not None:
                raise self._failure
            try:
                token = self._login(ref)
            except BaseException as exc:
                self._failure = exc
                raise
            with self._state:
                closed = self._closed
                if not closed:
                    self._token, self.owned = token, True
            if closed:  # the fetch ended while we logged in: do not leave the token behind
                self._revoke(token)
                raise self.client.timed_out(ref)
            return token
        finally:
            self._login_lock.release()

    def close(self) -> None:
        """Revoke a login's token (if vault.revoke_token); twice is harmless, never raises."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            token = self._token if self.owned else None
        if token is not None:
            self._revoke(token)

    def check_alive(self, ref: Reference, token: str) -> None:
        """After a 403: raise if Vault does not accept the token at all.

        Vault and OpenBao answer a dead token (revoked, expired, unknown)
        and a policy denial alike, "permission denied", so ask once: listing
        the mounts (``sys/internal/ui/mounts``, no path) needs a live token
        and no policy, so a 403 there can only mean the token is dead. Asked
        once per process: a live token stays so for the fetch's seconds.
        """
        with self._state:
            if self._alive:
                return
        status, _ = self.client.call(ref, "GET", UI_MOUNTS, token=token)
        if status == 403:
            raise AccessDenied(
                ref.text,
                LABEL,
                "Vault does not accept the plugin's token (invalid, expired or revoked)",
                TOKEN_HINTS[self.method],
            )
        with self._state:
            self._alive = True

    def _login(self, ref: Reference) -> str:
        api_path = f"auth/{self.mount}/login"
        where = f"the {self.method} auth method at auth/{self.mount}/"
        started = time.monotonic()
        status, body = answer = self.client.call(ref, "POST", api_path, token=None, payload=self._body)
        seconds = round(time.monotonic() - started, 3)
        debuglog.log("vault-login", method=self.method, mount=self.mount, status=status, seconds=seconds)
        said = self.client.said(body)
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
            raise self.client.unexpected(ref, answer)
        auth = body.get("auth") if body else None
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not _CREDENTIAL.match(token):
            raise StoreError(
                ref.text,
                LABEL,
                f"login with {where} gave no client token",
                "check vault.address and the method",
            )
        self.client.credentials.append(token)
        return token

    def _revoke(self, token: str) -> None:
        if self.revoke_token:
            self.client.revoke(token)

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
        self.client.credentials.append(text)
        return text
