"""A request and its answer as the doors see them: plain data, no HTTP stack.

The app reads the request (bounded in size and time) into an ``Incoming``,
a door turns it into an ``Outgoing`` in a worker thread, and the app writes
that back and logs it. So every door is a plain function, and only app.py
knows Starlette.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import (
    AccessDenied,
    ConfigError,
    InvalidSecret,
    NotFound,
    PluginError,
    PolicyDenied,
    RequestError,
    Throttled,
    TimedOut,
)

LogValue = Union[str, int, float, bool, None]
_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")  # control characters, lone surrogates


@dataclass(frozen=True)
class Incoming:
    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]  # lower-case names, in the order sent
    body: bytes
    deadline: Deadline
    peer: str = ""  # the address the request came from (no proxy header is believed)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def header(self, name: str) -> str | None:
        """The header's one value; None when it is missing or sent twice
        (two values are ambiguous: which one did the sender sign?)."""
        found = self.values(name)
        return found[0] if len(found) == 1 else None


@dataclass
class Outgoing:
    status: int
    body: bytes = b""
    content_type: str | None = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "ok"  # for the access log: ok, denied, not-found, bad-signature, ...
    log: dict[str, LogValue] = field(default_factory=dict)  # who asked for what; never a value


def json_objects(body: bytes, *members: str) -> tuple[dict[str, object], ...]:
    """A request's JSON body, an object, then each of its ``members``, each
    an object; ValueError says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    found: list[dict[str, object]] = []
    for name in members:
        member = data.get(name)
        if not isinstance(member, dict):
            raise ValueError(f"{' and '.join(members)} must be objects")
        found.append(member)
    return (data, *found)


def string_field(data: Mapping[str, object], key: str, limit: int, *, required: bool = True) -> str:
    """A string field of a request's JSON body, checked; ValueError says
    what is wrong (a door answers it as invalid input). JSON may escape
    half of a surrogate pair (``\\ud800``), which Python's json reads into
    a string that no UTF-8 writer (the stores' clients, the log) takes:
    refused here, where the field is named."""
    value = data.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if required and not value:
        raise ValueError(f"{key} is missing")
    bad = _NOT_TEXT.search(value)
    if bad is not None and bad.group() >= "\ud800":
        raise ValueError(f"{key} holds a lone surrogate (\\ud800 to \\udfff), which is not text")
    if len(value) > limit or bad is not None:
        raise ValueError(f"{key} is longer than {limit} characters or holds a control character")
    return value


def text(status: int, message: str, outcome: str, **log: LogValue) -> Outgoing:
    """A plain-text answer; the message is ours, never a secret value."""
    return Outgoing(status=status, body=(message + "\n").encode(), outcome=outcome, log=dict(log))


def json_answer(value: object, **log: LogValue) -> Outgoing:
    body = json.dumps(value, separators=(",", ":")).encode()
    return Outgoing(status=200, body=body, content_type="application/json", log=dict(log))


# Which HTTP status answers which failure of policy, reference or store.
_STATUS: tuple[tuple[type[PluginError], int, str], ...] = (
    (PolicyDenied, 403, "denied"),
    (NotFound, 404, "not-found"),
    (RequestError, 400, "invalid-request"),
    (InvalidSecret, 422, "invalid-secret"),
    (TimedOut, 504, "store-timed-out"),
    (Throttled, 503, "store-throttled"),
    (AccessDenied, 502, "store-denied"),
    (ConfigError, 500, "config-error"),
)


def failure(exc: PluginError, deadline: Deadline, **log: LogValue) -> Outgoing:
    """The answer to a failure of the shared path (policy, stores, shaping):
    its status, and its message, which names the reference and the store
    and says what to check (errors.py: never a value). A store too slow is
    said in the server's words: the shared path's message names the
    plugin's deadline, but here the request's deadline applies."""
    if isinstance(exc, TimedOut):
        exc = TimedOut(
            exc.reference,
            exc.store,
            f"no answer within the server's {deadline.seconds:g} s deadline",
            "check that the store is reachable from the server; the operator sets server.request_seconds",
        )
    for kind, status, outcome in _STATUS:
        if isinstance(exc, kind):
            return text(status, exc.message, outcome, **log)
    return text(502, exc.message, "store-error", **log)  # the store failed or is unreachable


def internal_error(exc: BaseException, **log: LogValue) -> Outgoing:
    """An unexpected exception: its type for the log, never its text (that
    could quote a value)."""
    return text(500, "internal error in nomad-secrets; the server's log has the details", "internal-error",
                error=type(exc).__name__, **log)  # fmt: skip
