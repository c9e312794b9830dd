"""The node agent's memory cache of store values: off unless a provider's
section sets ``cache_seconds`` (docs/agent.md, "The cache").

Values live in the agent's memory only: never on disk, never in a plugin
process, and the agent is made undumpable while a cache is configured
(``undumpable``: no core dump, no ptrace by another user). Each provider has
its own part, bounded by its ``cache_max_bytes`` and emptied least recently
used first. An entry is fresh for its ``seconds``; after that, for its
``stale_seconds`` (``stale_if_error_seconds``), it may only stand in for a
store that is down (reads.py decides when), and then it is gone.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from nomad_secrets.core.config import AwsSettings, VaultSettings
from nomad_secrets.core.shape import Raw

PR_SET_DUMPABLE = 4  # prctl(2)
# A read pinned to a version (?version=N, ?version_id=...) names a value
# that never changes: it is kept this many times cache_seconds.
PINNED_FACTOR = 10


@dataclass
class Entry:
    value: Raw
    size: int
    fresh_until: float  # time.monotonic()
    stale_until: float


class Memo:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[Hashable, OrderedDict[Hashable, Entry]] = {}
        self._sizes: dict[Hashable, int] = {}

    def get(self, part: Hashable, key: Hashable) -> tuple[Raw, bool] | None:
        """(the value, whether it is still fresh), or None: none kept, or
        past its stale time (then dropped)."""
        now = time.monotonic()
        with self._lock:
            entries = self._parts.get(part)
            entry = entries.get(key) if entries is not None else None
            if entries is None or entry is None:
                return None
            if now >= entry.stale_until:
                self._remove(part, key)
                return None
            entries.move_to_end(key)
            return entry.value, now < entry.fresh_until

    def put(
        self, part: Hashable, key: Hashable, value: Raw, seconds: float, stale_seconds: float, max_bytes: int
    ) -> int:
        """Keep ``value``; how many entries were evicted to make room. The
        key counts too: its name and options come from jobs."""
        size = _size(value) + len(repr(key))
        if size > max_bytes:
            return 0
        now = time.monotonic()
        entry = Entry(value, size, now + seconds, now + seconds + stale_seconds)
        evicted = 0
        with self._lock:
            entries = self._parts.setdefault(part, OrderedDict())
            if key in entries:
                self._remove(part, key)
            entries[key] = entry
            self._sizes[part] = self._sizes.get(part, 0) + size
            while self._sizes[part] > max_bytes:
                self._remove(part, next(iter(entries)))
                evicted += 1
        return evicted

    def drop(self, part: Hashable, key: Hashable) -> None:
        """Forget ``key``: the store said the secret is gone, or not ours to read."""
        with self._lock:
            if key in self._parts.get(part, {}):
                self._remove(part, key)

    def kept_until(self) -> float:
        """When the last kept value may no longer stand in for a store that
        is down (time.monotonic()); 0 when none is kept."""
        with self._lock:
            return max(
                (e.stale_until for entries in self._parts.values() for e in entries.values()), default=0.0
            )

    def clear(self) -> int:
        """Forget everything (the config changed); how many entries were kept."""
        with self._lock:
            count = sum(len(entries) for entries in self._parts.values())
            self._parts.clear()
            self._sizes.clear()
        return count

    def _remove(self, part: Hashable, key: Hashable) -> None:
        entry = self._parts[part].pop(key)
        self._sizes[part] -= entry.size

    def __len__(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._parts.values())


def meaning(settings: AwsSettings | VaultSettings, store: str) -> str:
    """For ``check``: what the cache settings mean, for a secret revoked in the store."""
    if settings.cache_seconds <= 0:
        return (
            "cache: off (cache_seconds = 0): every fetch asks the store, only identical fetches at the"
            " same moment share one call; a secret deleted or revoked is never served after that"
        )
    text = (
        f"cache: the node agent keeps values {settings.cache_seconds:g} s in memory"
        f" ({settings.cache_max_bytes:,} bytes at most): a secret changed, deleted or revoked in the store"
        f" can still be served for up to {settings.cache_seconds:g} s"
        f" ({settings.cache_seconds * PINNED_FACTOR:g} s for a read pinned to a version)"
    )
    if store == "vault":
        text += "; Vault values with a lease (dynamic secrets) and engines other than KV are never kept"
    if settings.stale_if_error_seconds > 0:
        text += (
            f"; while the store is down, throttling or timing out, for up to"
            f" {settings.stale_if_error_seconds:g} s more (stale_if_error_seconds), but never once the"
            " store has said not found or denied"
        )
    return text


def _size(value: Raw) -> int:
    """Bytes a value takes, near enough for a bound (what it would be as JSON)."""
    if isinstance(value, (str, bytes)):
        return len(value) + 64
    return len(json.dumps(value, default=str)) + 64


def undumpable() -> bool:
    """No core dump of this process, and no ptrace by another user
    (prctl PR_SET_DUMPABLE 0): it holds secret values. Whether it took."""
    try:
        import ctypes

        return int(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
