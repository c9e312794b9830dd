"""The failures a fetch can end in, each one message for the job author.

Nomad shows the message in ``nomad alloc status``. So every message names
what failed (the reference and its store, or the config file and key) and
says what to check, and none carries a secret value, a token or a traceback:
messages are built here from our own words and the reference text only.
"""

from __future__ import annotations


class PluginError(Exception):
    """Any failure that ends a fetch with ``{"result": {}, "error": msg}``."""

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

    kind = "store"

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
    kind = "access-denied"


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
