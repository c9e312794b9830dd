"""The failures a fetch can end in, each one message for the job author.

Nomad shows the message in ``nomad alloc status``. So every message names
what failed (the reference and its store, or the config file and key) and
says what to check, and none carries a secret value, a token or a traceback:
messages are built here from our own words and the reference text only.

Each class has a ``kind``: the audit record's ``error_kind`` and the
metrics' ``outcome``, the names an operator alerts on (``KINDS``; the rules
in examples/monitoring/ use them). The kinds of a store failure answer the
operator's first question, whose side is broken: the network
(``unreachable``), the store (``store-error``: an HTTP 5xx, an answer that
is not the store's), the store's limits (``throttled``), the time
(``timed-out``), or the caller (``denied``, ``not-found``).
"""

from __future__ import annotations


class PluginError(Exception):
    """Any failure that ends a fetch with an error object (endings.encode_error)."""

    kind = "error"

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.kind


class ConfigError(PluginError):
    """The operator's configuration is missing, malformed or not trusted."""

    kind = "config"


class RequestError(PluginError):
    """The job's request (operation, path, env block) is malformed."""

    kind = "request"


class PolicyDenied(PluginError):
    """The operator's access policy does not let this job read a reference."""

    kind = "denied-by-policy"


class StoreError(PluginError):
    """A store answered with a failure, or did not answer in time."""

    kind = "store-error"  # the store answered, but with a failure (5xx) or not as the store does

    def __init__(self, reference: str, store: str, what: str, hint: str = "") -> None:
        text = f"{reference!r} ({store}): {what}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)
        self.reference = reference
        self.store = store


class NotFound(StoreError):
    kind = "not-found"


class AccessDenied(StoreError):
    kind = "denied"


class Throttled(StoreError):
    kind = "throttled"


class Unreachable(StoreError):
    kind = "unreachable"


class TimedOut(StoreError):
    kind = "timed-out"


class InvalidSecret(StoreError):
    """The store answered, but the secret cannot be given to Nomad as asked."""

    kind = "invalid-secret"


class NodeBusy(PluginError):
    """The fetch ran out of its deadline before it asked any store: the
    node was busy (its CPU, a burst of task starts), not the store."""

    kind = "node-busy"

    @classmethod
    def late(cls, path: str, age: float, seconds: float) -> NodeBusy:
        shown = path if len(path) <= 200 else path[:200] + "..."
        return cls(
            f"{shown!r}: {age:.1f} s of the plugin's {seconds:g} s deadline had passed before it could ask"
            " any store (nothing was sent): the node was too busy, starting many tasks at once; start the"
            " task again, and see docs/agent.md"
        )


# Every kind a fetch ends in, with what it tells the operator. Kinds made
# outside this module: ``resource-limit`` (limits.py), ``terminated`` and
# ``internal`` (the answer's).
KINDS = {
    "unreachable": "no connection to the store (refused, DNS, TLS): the network or the address",
    "store-error": "the store answered with a failure (HTTP 5xx, sealed) or not as the store does",
    "throttled": "the store's rate limit (after retries)",
    "timed-out": "the store did not answer within the plugin's deadline",
    "node-busy": "the fetch ran out of time before it sent anything: the node itself was too busy",
    "terminated": "Nomad's SIGTERM at its timeout ended the fetch",
    "denied": "the store refused the node's or the job's credentials",
    "denied-by-policy": "the operator's [[policy]] does not let the job read the reference",
    "not-found": "no such secret, version or field",
    "invalid-secret": "the store's value cannot be given to Nomad as asked",
    "request": "the job's path or env block is malformed",
    "config": "the operator's config is missing, malformed or not trusted",
    "resource-limit": "the process ran out of file descriptors or memory",
    "internal": "an unexpected failure (its type is in the debug log)",
    "error": "any other failure the message names",
}
