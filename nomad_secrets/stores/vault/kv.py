"""Mounts and reads: which secrets engine holds a path, and reading it.

The mount and its kind come from ``vault.kv_mounts`` (longest matching
prefix) or else from Vault's ``sys/internal/ui/mounts/<path>`` preflight,
asked once per mount and process (a long-lived one asks again after
``MOUNT_TTL``). Vault's own machinery (``sys/``,
``auth/``, ``identity/``, ``cubbyhole/``, and any mount of those types) is
refused: ``auth/token/lookup-self`` would hand the job the plugin's token.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from nomad_secrets.core.reference import Reference
from nomad_secrets.core.shape import Raw
from nomad_secrets.process import debuglog
from nomad_secrets.process.errors import AccessDenied, NotFound, RequestError, StoreError
from nomad_secrets.stores import keep
from nomad_secrets.stores.vault.auth import Auth
from nomad_secrets.stores.vault.client import LABEL, UI_MOUNTS, Answer, Client

OPTIONS = ("version",)
# First path segments that are Vault's own API, never a secrets engine.
RESERVED_PREFIXES = ("sys", "auth", "identity", "cubbyhole")
# Mount types that are Vault's machinery (ns_* are the copies in a namespace).
SYSTEM_TYPES = frozenset(
    {"system", "token", "identity", "cubbyhole", "ns_system", "ns_token", "ns_identity", "ns_cubbyhole"}
)
MOUNT_TTL = 60.0  # seconds a preflight's answer is kept; an operator may remount
# Vault's warning when a KV v2 mount is read as v1: the mount was tuned to v2
# since its preflight (``bao secrets tune -version=2``), or kv_mounts is wrong.
READ_AS_V1 = "Invalid path for a versioned K/V secrets engine."
MAX_LOCKS = 256
_VERSION = re.compile(r"[1-9][0-9]{0,9}\Z")


class ReadAsV1(NotFound):
    """A KV v2 mount read as version 1 (READ_AS_V1)."""


@dataclass(frozen=True)
class Mount:
    path: str  # as used in API paths, no trailing slash ("secret", "ns1/team/kv")
    type: str  # "kv" or the engine's type
    kv_version: int = 0  # 1 or 2 for "kv", else 0


class Mounts:
    """The mounts known to a process: configured, or found by a preflight.

    Configured mounts are kept for good; a preflight's answer for
    ``MOUNT_TTL`` seconds, so that a long-lived process (the node agent)
    sees an operator's remount within a minute while its fetches skip the
    preflight. Every fetch of a process shares them: they come from the
    process's own token (a ``jwt`` login, the job's, has its own per fetch).
    """

    def __init__(self, kv_mounts: dict[str, int]) -> None:
        self._configured = {m.strip("/"): Mount(m.strip("/"), "kv", v) for m, v in kv_mounts.items()}
        self._found: dict[str, tuple[Mount, float]] = {}  # path: (mount, when found)
        self._state = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def holding(self, ref: Reference, locator: str, token: str, auth: Auth) -> Mount:
        """The mount holding ``locator``: configured, cached, or preflighted
        (through the fetch's client, ``auth.client``).

        Preflights are serialized per first path segment (every mount
        holding a locator starts with it), so concurrent references to one
        mount cost one preflight, and different mounts preflight in parallel.
        """
        found = self._lookup(locator)
        if found is not None:
            return found
        segment = locator.split("/", 1)[0]
        with self._state:
            if len(self._locks) >= MAX_LOCKS:  # segments come from jobs: forget the idle ones
                self._locks = {s: lock for s, lock in self._locks.items() if lock.locked()}
            lock = self._locks.setdefault(segment, threading.Lock())
        client = auth.client
        if not lock.acquire(timeout=max(client.deadline.remaining(), 0.0)):
            raise client.timed_out(ref)
        try:
            found = self._lookup(locator)
            if found is None:
                found = _preflight(ref, locator, token, auth)
                now = time.monotonic()
                with self._state:
                    self._found = {p: f for p, f in self._found.items() if now - f[1] < MOUNT_TTL}
                    self._found[found.path] = (found, now)
            return found
        finally:
            lock.release()

    def forget(self, mount: Mount) -> bool:
        """Drop a preflight's answer that Vault contradicts; False for a
        configured mount (the operator's word) or one not kept."""
        with self._state:
            kept = self._found.get(mount.path)
            if kept is None or kept[0] != mount:
                return False
            del self._found[mount.path]
            return True

    def _lookup(self, locator: str) -> Mount | None:
        now = time.monotonic()
        with self._state:
            found = [m for m, at in self._found.values() if now - at < MOUNT_TTL]
        matches = [m for m in (*self._configured.values(), *found) if locator.startswith(m.path + "/")]
        return max(matches, key=lambda m: len(m.path), default=None)


def _preflight(ref: Reference, locator: str, token: str, auth: Auth) -> Mount:
    client = auth.client
    status, body = answer = client.call(ref, "GET", f"{UI_MOUNTS}/{locator}", token=token)
    if status == 403:  # also OpenBao's answer for a mount that does not exist
        auth.check_alive(ref, token)
        raise AccessDenied(
            ref.text,
            LABEL,
            f"permission denied looking up the mount of {locator!r}{client.in_namespace()}",
            "check that the mount exists; the Vault policy of this token needs some capability"
            " on a path in that mount, or the operator lists it in vault.kv_mounts",
        )
    if status == 404:
        raise NotFound(
            ref.text,
            LABEL,
            f"no such mount or namespace{client.said(body)}",
            "check the mount (the first part of the path) and vault.namespace",
        )
    if status != 200:
        raise client.unexpected(ref, answer)
    data = body.get("data") if body else None
    if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data.get("type"):
        raise client.malformed(ref)
    mount_type = str(data["type"])
    mount_path = _mount_in(locator, data["path"].strip("/"), client.namespace)
    if mount_path is None:
        raise client.malformed(ref)
    # Vault reserves these names at the top of every namespace, so in a
    # mount path they mean its own API (auth/approle/role/x/role-id, ...).
    # A KV mount so named can still be read by listing it in vault.kv_mounts.
    if mount_type in SYSTEM_TYPES:
        raise RequestError(
            f"{ref.text!r} ({LABEL}): {mount_path!r} is Vault's {mount_type!r} mount, not a secrets"
            " engine; the plugin reads secrets engines only (KV, database, ...)"
        )
    reserved = sorted(set(mount_path.split("/")) & set(RESERVED_PREFIXES))
    if reserved:
        raise RequestError(
            f"{ref.text!r} ({LABEL}): the mount {mount_path!r} is named like Vault's own API"
            f" ({reserved[0]}/), so the plugin does not read it; if it is a KV mount, the"
            " operator lists it in vault.kv_mounts"
        )
    version = 0
    if mount_type in ("kv", "generic"):
        options = data.get("options")
        raw = options.get("version") if isinstance(options, dict) else None
        version = 2 if str(raw) == "2" else 1
        mount_type = "kv"
    debuglog.log("vault-mount", mount=mount_path, type=mount_type, kv_version=version)
    return Mount(mount_path, mount_type, version)


class Reader:
    """The reads: KV v2's ``data.data`` (of a version), anything else's ``data``."""

    def __init__(self, client: Client, auth: Auth) -> None:
        self.client, self.auth = client, auth

    def kv2(self, ref: Reference, token: str, mount: Mount, rest: str, version: str | None) -> Raw:
        api_path = f"{mount.path}/data/{rest}"
        query = {"version": version} if version is not None else None
        status, body = answer = self.client.call(ref, "GET", api_path, token=token, query=query)
        if status == 404:
            data = body.get("data") if body else None
            meta = data.get("metadata") if isinstance(data, dict) else None
            if isinstance(meta, dict) and (meta.get("destroyed") is True or meta.get("deletion_time")):
                which = f"version {meta.get('version')}" if meta.get("version") else "this version"
                done = "destroyed" if meta.get("destroyed") is True else "deleted"
                raise NotFound(
                    ref.text,
                    LABEL,
                    f"{which} of the secret was {done}",
                    "pin another version with ?version=N"
                    + (", or undelete it (vault kv undelete)" if done == "deleted" else ""),
                )
        inner = self._data(ref, token, answer, api_path, version=version).get("data")
        if not isinstance(inner, dict):
            raise self.client.malformed(ref)
        return inner

    def data(self, ref: Reference, token: str, api_path: str) -> Raw:
        answer = self.client.call(ref, "GET", api_path, token=token)
        return self._data(ref, token, answer, api_path)

    def _data(
        self, ref: Reference, token: str, answer: Answer, api_path: str, *, version: str | None = None
    ) -> dict[str, Any]:
        """The ``data`` map of a read's answer, or the error its status means."""
        status, body = answer
        said = self.client.said(body)
        if status == 200:
            keep.lease(body)  # for the node agent's cache: a leased value is never kept
            data = body.get("data") if body else None
            if not isinstance(data, dict):
                raise StoreError(
                    ref.text,
                    LABEL,
                    "Vault answered with no data",
                    "check that the path reads a secret (some engines need a write, such as pki/issue)",
                )
            return data
        if status == 404:  # its warnings say what is wrong, such as a KV v2 mount read as v1
            pinned = f" (version {version})" if version is not None else ""
            warnings = body.get("warnings") if body else None
            as_v1 = isinstance(warnings, list) and any(str(w).startswith(READ_AS_V1) for w in warnings)
            kind = ReadAsV1 if as_v1 else NotFound
            raise kind(ref.text, LABEL, f"not found at {api_path}{pinned}{said}", "check the mount and path")
        if status == 403:
            self.auth.check_alive(ref, token)
            raise AccessDenied(
                ref.text,
                LABEL,
                f"permission denied{self.client.in_namespace()}",
                f"the Vault policy of this token needs read on {api_path!r}",
            )
        if status == 400:
            raise StoreError(ref.text, LABEL, f"Vault refused the read{said}", "check the reference")
        if status == 405:  # pki/issue/<role>, transit/encrypt/<key>, ...
            raise StoreError(
                ref.text,
                LABEL,
                f"Vault serves {api_path} to writes only (HTTP 405)",
                "the plugin never writes: read a path that answers a read (vault read)",
            )
        raise self.client.unexpected(ref, answer)


def check_locator(ref: Reference) -> str:
    """``mount/path`` without empty, ``.`` or ``..`` segments, and not Vault's own API."""
    segments = ref.locator.split("/")
    if len(segments) < 2 or any(s in ("", ".", "..") for s in segments):
        raise RequestError(
            f"{ref.text!r} ({LABEL}): write the path as <mount>/<path>, without empty, '.' or '..' parts"
        )
    if segments[0] in RESERVED_PREFIXES:
        raise RequestError(
            f"{ref.text!r} ({LABEL}): {segments[0]}/ is Vault's own API, not a secrets engine;"
            " the plugin reads secrets engines only (KV, database, ...)"
        )
    return ref.locator


def version_option(ref: Reference) -> str | None:
    version = ref.options_for(LABEL, OPTIONS).get("version")
    if version is not None and not _VERSION.match(version):
        raise RequestError(
            f"{ref.text!r} ({LABEL}): the option version must be a positive integer, such as ?version=3"
        )
    return version


def _mount_in(locator: str, mount: str, namespace: str | None) -> str | None:
    """Where the preflight's mount path sits in ``locator``: at its start,
    or after a namespace prefix written in the path (``ns1/secret/x``).

    For a mount in a child of the configured namespace, OpenBao gives the
    path from the root namespace (``ns1/child/kv`` for ``child/kv/x`` with
    namespace ``ns1``): the configured namespace is taken off first.
    """
    prefix = (namespace or "").strip("/") + "/"
    if prefix != "/" and mount.startswith(prefix) and not locator.startswith(prefix):
        mount = mount[len(prefix) :]
    start = 0
    while True:
        if (locator + "/")[start:].startswith(mount + "/"):
            return locator[: start + len(mount)]
        start = locator.find("/", start) + 1
        if start == 0:
            return None
