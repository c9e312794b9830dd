"""What a read said about keeping its value: the node agent's cache asks.

A store's answer can say that its value must not outlive the call: a Vault
read that returned a lease (database/creds, aws/creds: a credential made
for this read, which the next read would not get), or any Vault engine
that is not KV. The reading thread notes it here, and the cache
(agent/memo.py) takes the verdict in the same thread after the read.
Nothing here holds a value; without the agent nothing reads the notes.
"""

from __future__ import annotations

import threading

_local = threading.local()


def start(keepable: bool) -> None:
    """Before a read: whether the store's values may be kept unless the read
    says otherwise (AWS: yes; Vault: only what a KV read says)."""
    _local.keepable, _local.at_most, _local.leased = keepable, None, False


def kv() -> None:
    """The read was of a KV engine: its value may be kept (unless a lease says not)."""
    _local.keepable = not getattr(_local, "leased", False)


def lease(body: object) -> None:
    """A Vault answer's lease: a lease_id (a dynamic secret) forbids keeping
    the value at all; a lease_duration alone (KV v1's ttl hint) bounds it."""
    if not isinstance(body, dict):
        return
    if body.get("lease_id") or body.get("renewable") is True:
        _local.leased, _local.keepable = True, False
        return
    seconds = body.get("lease_duration")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        _local.at_most = float(seconds)


def verdict() -> tuple[bool, float | None]:
    """(may the value be kept, for at most how many seconds); resets the notes."""
    keepable = bool(getattr(_local, "keepable", False))
    at_most = getattr(_local, "at_most", None)
    _local.keepable, _local.at_most, _local.leased = False, None, False
    return keepable, at_most
