"""The Vault backend of a fetch: a reference's mount, the token, and the read."""

from __future__ import annotations

from nomad_secrets.core.config import VaultSettings
from nomad_secrets.core.reference import Reference
from nomad_secrets.core.request import JobOptions
from nomad_secrets.core.shape import Raw
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import AccessDenied, RequestError
from nomad_secrets.stores import keep
from nomad_secrets.stores.vault.auth import Auth, Login
from nomad_secrets.stores.vault.client import LABEL, Client
from nomad_secrets.stores.vault.kv import Mounts, ReadAsV1, Reader, check_locator, version_option


class Vault:
    """One fetch's reads, through that fetch's client (its deadline) and
    the process's login and mounts: made here, for a plugin process, or
    lent by a ``WarmVault`` (warm.py) in a long-lived one."""

    label = LABEL

    def __init__(self, settings: VaultSettings, options: JobOptions, deadline: Deadline) -> None:
        """Check the config and read the credentials; no network here."""
        client = Client(settings, deadline)
        self._fetching(client, Login(settings, options, client), Mounts(settings.kv_mounts), owner=True)

    @classmethod
    def lent(cls, client: Client, login: Login, mounts: Mounts) -> Vault:
        """A fetch's view of a warm backend's parts; its close gives nothing back."""
        vault = cls.__new__(cls)
        vault._fetching(client, login, mounts, owner=False)
        return vault

    def _fetching(self, client: Client, login: Login, mounts: Mounts, *, owner: bool) -> None:
        self.client, self.login, self.mounts = client, login, mounts
        self.auth = Auth(login, client)
        self.reader = Reader(client, self.auth)
        self._owner = owner

    def read(self, ref: Reference) -> Raw:
        version = version_option(ref)
        locator = check_locator(ref)
        token = self.auth.token(ref)
        try:
            return self._read(ref, locator, version, token)
        except AccessDenied:
            # A warm login's token that Vault dropped since (revoked, or
            # expired early): log in again and read once more.
            if not self.auth.replace_dead(token):
                raise
        return self._read(ref, locator, version, self.auth.token(ref))

    def _read(
        self, ref: Reference, locator: str, version: str | None, token: str, *, again: bool = True
    ) -> Raw:
        mount = self.mounts.holding(ref, locator, token, self.auth)
        rest = locator[len(mount.path) + 1 :]
        if not rest:
            raise RequestError(
                f"{ref.text!r} ({LABEL}): {mount.path!r} is a mount; name a secret in it, {mount.path}/<path>"
            )
        if version is not None and mount.kv_version != 2:
            kind = "a KV version 1 mount" if mount.type == "kv" else f"a {mount.type!r} engine"
            raise RequestError(
                f"{ref.text!r} ({LABEL}): the option 'version' applies to KV version 2 only;"
                f" {mount.path!r} is {kind}"
            )
        if mount.kv_version == 2:
            raw = self.reader.kv2(ref, token, mount, rest, version)
            keep.kv()
            return raw
        try:
            raw = self.reader.data(ref, token, locator)
            if mount.kv_version == 1:
                keep.kv()  # any other engine's value is never kept (keep.py)
            return raw
        except ReadAsV1:
            # Tuned to v2 since the preflight a long-lived process kept
            # (the node agent): ask again, and read once more.
            if not (again and self.mounts.forget(mount)):
                raise
        return self._read(ref, locator, version, token, again=False)

    def probe(self) -> None:
        """For ``nomad-secrets check``: prove the credentials work, reading no secret.

        A login method logs in (``close`` then revokes its token); a token
        from vault.token_file is looked up (auth/token/lookup-self, which
        Vault's default policy grants). Nothing of the answer is kept: it
        holds the token itself.
        """
        api_path = "auth/token/lookup-self"
        ref = Reference(text=api_path, scheme="vault", locator=api_path)
        token = self.auth.token(ref)
        if self.auth.owned:
            return
        answer = self.client.call(ref, "GET", api_path, token=token)
        if answer[0] == 200:
            return
        if answer[0] == 403:
            self.auth.check_alive(ref, token)
            raise AccessDenied(
                ref.text,
                LABEL,
                "Vault refused the token's lookup of itself",
                "the token lacks Vault's default policy, which grants it",
            )
        raise self.client.unexpected(ref, answer)

    def close(self) -> None:
        """Revoke a login's token (if vault.revoke_token) unless the backend
        is lent (its owner revokes); twice is harmless, never raises."""
        if self._owner:
            self.login.close(self.client)
