"""The node agent's store reads: single flight, the opt-in cache, and
stale-if-error, in front of each fetch's store client (docs/agent.md).

A fetch reaches here only once the policy allowed every reference it names
(fetch.check_policy) and its workload identity's claims are its job's: what
this serves, the caller was allowed to read. Two reads are the same read
(``SharedBackend.key``) when they name the same store, locator and options (the
``#selector`` and ``NAME =`` are each caller's own: shape.py applies them
per caller), through the same provider with the same store settings, in
the same region, with the same credentials: the node's, or one workload
identity token, byte for byte (the store verifies its signature, not the
plugin: a token that copies another's claims shares nothing with it). A
job's identity never shares a call or an entry with another's.

The key is names and digests: no value, no token, no credential is in it,
and nothing here logs. A change of the config file empties the cache at
once (``config_seen``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from nomad_secrets.agent.flight import Call, Flights
from nomad_secrets.agent.memo import PINNED_FACTOR, Memo, undumpable
from nomad_secrets.core.config import AwsSettings, Config, Provider, VaultSettings
from nomad_secrets.core.reference import Reference
from nomad_secrets.core.request import JobOptions
from nomad_secrets.core.shape import Raw
from nomad_secrets.process import debuglog
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import AccessDenied, NotFound, PluginError, TimedOut
from nomad_secrets.stores import keep
from nomad_secrets.stores.aws.batch import rode_along
from nomad_secrets.stores.registry import STORE_LABELS, Backend

if TYPE_CHECKING:
    from collections.abc import Mapping

# What the audit record and the metrics count, per store.
EVENTS = ("calls", "shared", "hits", "stale", "evictions")
# The store failures a stale value may stand in for: the store is down,
# throttling or slow. Never "not found" or "denied": a secret deleted or
# revoked is never served again, and its entry is dropped.
STALE_KINDS = ("unreachable", "store-error", "throttled", "timed-out")
# A stale value, when there is one, is served this long before the
# fetch's deadline if the store has not answered by then.
STALE_MARGIN = 0.5
PINNED_OPTIONS = ("version", "version_id")


class Tally:
    """One fetch's counts of EVENTS, per store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, store: str, event: str, n: int = 1) -> None:
        with self._lock:
            counts = self._counts.setdefault(store, dict.fromkeys(EVENTS, 0))
            counts[event] += n

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {store: dict(counts) for store, counts in self._counts.items()}


class FetchReads:
    """One fetch's reads through the agent's ``SharedReads``, and what they
    cost the stores (nomad/fetch.py's ``Reads``)."""

    def __init__(self, shared: SharedReads) -> None:
        self.shared, self.tally = shared, Tally()

    def wrap(
        self,
        backend: Backend,
        store: str,
        provider: Provider,
        options: JobOptions,
        claims: Mapping[str, object] | None,
        deadline: Deadline,
    ) -> Backend:
        return SharedBackend(self.shared, backend, store, provider, options, claims, deadline, self.tally)

    def counts(self) -> dict[str, dict[str, int]]:
        return self.tally.counts()


class SharedReads:
    """The agent's one instance: its calls in flight and its cache."""

    def __init__(self) -> None:
        self.flights: Flights[Raw] = Flights()
        self.memo = Memo()
        self._config: Config | None = None
        self._digest = ""
        self._lock = threading.Lock()
        self.undumpable = False

    def config_seen(self, config: Config) -> None:
        """Empty the cache when the config is another than the last one seen
        (a policy or a provider's settings may have changed), and make the
        process undumpable once a provider keeps values."""
        if config is self._config:
            return
        digest = _digest(repr(config))
        with self._lock:
            changed = self._config is not None and digest != self._digest
            self._config, self._digest = config, digest
        if changed:
            dropped = self.memo.clear()
            if dropped:
                debuglog.log("agent-cache-emptied", reason="the config changed", entries=dropped)
        if not self.undumpable and config.keeps_values():
            self.undumpable = undumpable()


class SharedBackend:
    """A fetch's client for one store, behind the agent's single flight and cache."""

    def __init__(
        self,
        shared: SharedReads,
        backend: Backend,
        store: str,
        provider: Provider,
        options: JobOptions,
        claims: Mapping[str, object] | None,
        deadline: Deadline,
        tally: Tally,
    ) -> None:
        self.shared, self.backend, self.store = shared, backend, store
        self.label = backend.label
        self.deadline, self.tally = deadline, tally
        self.settings = provider.settings_for(store)
        # The provider and its settings: its own part of the cache, and its
        # own bound. A config change makes another part (and empties all).
        self.part = (provider.name, _digest(repr(self.settings)))
        self.credentials = _credentials(self.settings, options, claims)

    def key(self, ref: Reference) -> Hashable:
        return (self.store, ref.locator, ref.options, self.credentials)

    def read(self, ref: Reference) -> Raw:
        key, settings = self.key(ref), self.settings
        kept = self.shared.memo.get(self.part, key) if settings.cache_seconds > 0 else None
        if kept is not None and kept[1]:
            self.tally.add(self.store, "hits")
            return kept[0]
        stale = kept[0] if kept is not None and settings.stale_if_error_seconds > 0 else None
        call, led = self.shared.flights.join(
            (self.part, key), lambda: self._call(ref, key), self.deadline.at, ref.text
        )
        if not led:
            self.tally.add(self.store, "shared")
        wait = self.deadline.remaining() - (STALE_MARGIN if stale is not None else 0.0)
        if not call.done.wait(max(wait, 0.0)):
            if stale is not None:
                return self._stale(ref, stale, "no answer in time")
            call.done.wait(max(self.deadline.remaining(), 0.0))
            if not call.done.is_set():
                raise TimedOut(
                    ref.text,
                    STORE_LABELS[self.store],
                    f"no answer within the plugin's {self.deadline.seconds:g} s deadline",
                    "check that the store is reachable from the node; the operator sets"
                    " plugin.deadline_seconds",
                )
        if call.error is None:
            return call.value  # type: ignore[return-value]
        if stale is not None and isinstance(call.error, PluginError) and call.error.kind in STALE_KINDS:
            return self._stale(ref, stale, call.error.kind)
        raise _as_own(call, ref)

    def _call(self, ref: Reference, key: Hashable) -> Raw:
        """The store call, in the flight's thread: its value, kept when the
        settings and the store's answer allow."""
        settings = self.settings
        keep.start(self.store != "vault")
        try:
            value = self.backend.read(ref)
        except (NotFound, AccessDenied):
            self.shared.memo.drop(self.part, key)  # deleted or revoked: never served again
            raise
        finally:  # a read that took its answer from the fetch's one BatchGetSecretValue shared it
            self.tally.add(self.store, "shared" if rode_along() else "calls")
        keepable, at_most = keep.verdict()
        if settings.cache_seconds <= 0 or not keepable:
            return value
        seconds = settings.cache_seconds
        if any(option in PINNED_OPTIONS for option, _ in ref.options):
            seconds *= PINNED_FACTOR
        stale = settings.stale_if_error_seconds
        if at_most is not None:  # a lease's end: the value is not kept past it, stale or not
            seconds = min(seconds, at_most)
            stale = max(min(stale, at_most - seconds), 0.0)
        evicted = self.shared.memo.put(self.part, key, value, seconds, stale, settings.cache_max_bytes)
        if evicted:
            self.tally.add(self.store, "evictions", evicted)
        return value

    def _stale(self, ref: Reference, value: Raw, why: str) -> Raw:
        self.tally.add(self.store, "stale")
        debuglog.log("agent-stale", reference=ref.text, store=self.store, reason=why)
        return value

    def close(self) -> None:
        self.backend.close()


def _credentials(
    settings: AwsSettings | VaultSettings, options: JobOptions, claims: Mapping[str, object] | None
) -> tuple[str | None, str]:
    """Whose credentials a read uses, as part of its key: (AWS region, the
    node's or one job identity's digest)."""
    if isinstance(settings, AwsSettings):
        from nomad_secrets.stores.aws.store import region_for

        region, job_identity = region_for(settings, options), bool(settings.web_identity_role_arn)
    else:
        region, job_identity = None, settings.auth_method == "jwt"
    if not job_identity:
        return region, "node"
    token = options.workload_token
    if claims is None or token is None:  # the store will refuse the read: nothing to share
        return region, "none:" + _digest(str(time.monotonic_ns()))
    # The exact token the store checks, not its claims: the plugin does not
    # verify the signature (the store does, at the call), so a token that
    # copies another's claims with a signature of its own must never share
    # that one's call or entry. Each allocation's token is its own key.
    return region, "token:" + _digest(token)


def _as_own(call: Call[Raw], ref: Reference) -> BaseException:
    """The call's failure as this caller's: our messages name the
    reference, and this caller may have written it otherwise (a selector,
    a name) than the one that made the call."""
    error = call.error
    assert error is not None
    led = call.about
    if not isinstance(error, PluginError) or not led or led == ref.text:
        return error
    prefix = repr(led)
    if not error.message.startswith(prefix):
        return error
    own = type(error).__new__(type(error))
    own.__dict__.update(error.__dict__)
    own.args = (repr(ref.text) + error.message[len(prefix) :],)
    if hasattr(own, "reference"):
        own.reference = ref.text
    return own


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
