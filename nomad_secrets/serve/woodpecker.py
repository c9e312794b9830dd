"""Woodpecker CI's secret extension (Woodpecker 3.x): the Woodpecker server
asks, for each pipeline, which secrets to add to the repository's own.

The server (``WOODPECKER_SECRET_EXTENSION_ENDPOINT``) POSTs ``{"repo":
{...}, "pipeline": {...}, "netrc"?: {...}}`` (Go's json.Encoder output of
its models), signed with its ed25519 key (message_signatures.py), to
``/woodpecker/secrets/<token>``. The signature does not cover the host, and
a repository's admins may set that repository's extension URLs to a host of
theirs, which then receives requests Woodpecker signed (for that
repository's pipelines, a maintainer's push to main included): the token,
which only the server's environment holds, is what such a request lacks.
A path without it is answered as one that does not exist (404), before
anything else is read. The caller is ``repo.full_name``,
``pipeline.event``, ``branch`` (a pull request's is its target),
``ref``, ``deploy_to`` and ``from_fork`` (absent: false); ``netrc`` holds
a forge token and is never read.

Every ``[[woodpecker.rule]]`` whose globs all match gives the pipeline its
``NAME = reference`` pairs (named.py), except that forks and pull requests
read nothing unless a rule names them: a rule covers a fork only with
``fork = true`` (and then only forks), and a pull request (``pull_request``,
``pull_request_closed``, ``pull_request_metadata``) only when it sets
``event``: a rule for ``branch = "main"`` alone is for pushes to main, not
for pull requests into it. The optional ``[[woodpecker.policy]]`` guards
what the rules may read. Answers, as Woodpecker reads them:

- 200 ``{"secrets": [{"name", "value"}]}``, which Woodpecker puts over the
  repository's own secrets of those names (no ``events`` or ``images``:
  the rules have judged the event, and the secret exists for this
  pipeline only);
- 204 when no rule gives the pipeline anything;
- anything else fails the call (a 5xx is tried again, up to three times),
  and Woodpecker runs the pipeline with its own secrets only.

A signature is accepted once: ed25519 signatures are deterministic, so the
same request signed again within the same second (Woodpecker's retry after
a 5xx) repeats it. So a signature is spent only by an answer that is not a
5xx; a request with a spent signature, or one still being answered, is a
replay.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass

from nomad_secrets.process.errors import PluginError
from nomad_secrets.serve import message_signatures, named
from nomad_secrets.serve.exchange import (
    Incoming,
    LogValue,
    Outgoing,
    failure,
    json_answer,
    json_objects,
    string_field,
    text,
)
from nomad_secrets.serve.settings import (
    WOODPECKER_PLACEHOLDERS,
    Keys,
    NamedRule,
    Settings,
    WoodpeckerSettings,
)
from nomad_secrets.serve.stores import ServerStores

PREFIX = "/woodpecker/secrets/"  # then woodpecker.endpoint_token_file's token
MAX_FIELD = 1024  # full_name, event, branch, ref, deploy_to: far above any real one
PULL_EVENTS = ("pull_request", "pull_request_closed", "pull_request_metadata")
MAX_REMEMBERED = 100_000  # signatures within the window; only verified ones are kept


@dataclass(frozen=True)
class Pipeline:
    repo: str  # repo.full_name
    event: str
    branch: str
    ref: str
    deploy_to: str
    fork: bool

    def fields(self) -> dict[str, str]:
        return {
            "repo": self.repo,
            "event": self.event,
            "branch": self.branch,
            "ref": self.ref,
            "deploy_to": self.deploy_to,
            "fork": "true" if self.fork else "false",
        }


class Woodpecker:
    route: str = PREFIX + "{token}"
    methods: tuple[str, ...] = ("POST",)
    # Woodpecker's client gives up at 10 s (server/services/utils/http.go),
    # then tries again: a store's timeout must reach it first, as a 504.
    max_seconds: float = 8.0

    def __init__(self, settings: Settings, keys: Keys, pool: ServerStores) -> None:
        assert settings.woodpecker is not None and keys.woodpecker is not None
        assert keys.woodpecker_endpoint_token
        self.settings: WoodpeckerSettings = settings.woodpecker
        self.key = keys.woodpecker
        # Compared as digests: constant time, whatever the length sent.
        self._path = hashlib.sha256((PREFIX + keys.woodpecker_endpoint_token).encode()).digest()
        self.window = settings.server.clock_skew_seconds
        # Serve from the next whole second on: a signature's created is whole
        # seconds, so then every one made before this start (a request a
        # previous process answered) is older than `started`, and every one
        # made while this process serves is not. Made before the server
        # serves (main.py), so the wait (under 1 s) delays only the start.
        now = time.time()
        started = math.ceil(now)
        time.sleep(started - now)
        self.replays = Replays(self.window, started=started)
        self.secrets = named.NamedSecrets(
            "woodpecker", self.settings.rules, self.settings.policy, WOODPECKER_PLACEHOLDERS, settings, pool
        )

    def handle(self, request: Incoming) -> Outgoing:
        path = request.target.partition("?")[0].encode("latin-1")
        if not hmac.compare_digest(hashlib.sha256(path).digest(), self._path):
            return text(404, "Not Found", "no-such-path")  # as a path that does not exist (app.py)
        now = time.time()
        try:
            signed = message_signatures.verify(self.key, request, now, self.window)
        except message_signatures.BadSignature as exc:
            return text(400, str(exc), exc.outcome)
        refused = self.replays.claim(signed, now)
        if refused is not None:
            return refused
        answer = self.answer(request)
        if answer.status >= 500:  # Woodpecker tries again, maybe with this very signature
            self.replays.release(signed)
        return answer

    def answer(self, request: Incoming) -> Outgoing:
        try:
            pipeline = parse_request(request.body)
        except ValueError as exc:
            return text(400, f"Invalid Input: {exc}", "invalid-input")
        fields = pipeline.fields()
        log: dict[str, LogValue] = {**fields, "fork": pipeline.fork}
        try:
            values = self.secrets.values(fields, request.deadline, lambda rule: covers(rule, pipeline))
        except PluginError as exc:
            return failure(exc, request.deadline, **log)
        if not values:
            return Outgoing(204, content_type=None, log={**log, "names": 0})
        secrets = [{"name": name, "value": value} for name, value in values.items()]
        return json_answer({"secrets": secrets}, names=len(secrets), **log)


def covers(rule: NamedRule, pipeline: Pipeline) -> bool:
    """A pull request reads only what a rule that sets ``event`` gives (the
    fork glob already keeps forks to ``fork = true`` rules)."""
    return pipeline.event not in PULL_EVENTS or any(key == "event" for key, _ in rule.when)


def parse_request(body: bytes) -> Pipeline:
    """The Woodpecker server's request, each field used checked; ValueError
    says what is wrong. The config extension's request is refused by its
    shape: it always has ``netrc`` (null when off, where the secret
    extension leaves it out) and the pipeline's ``configuration`` files.
    (The registry extension's has the secret extension's shape: only the
    endpoint token tells them apart.)"""
    data, repo, pipeline = json_objects(body, "repo", "pipeline")
    for carries, present in (
        ("configuration", "configuration" in data),
        ("a null netrc", "netrc" in data and data["netrc"] is None),
    ):
        if present:
            raise ValueError(
                f"the body carries {carries}, as Woodpecker's config extension's request does"
                " and its secret extension's never does"
            )
    fork = pipeline.get("from_fork", False)  # omitempty: absent is false
    if not isinstance(fork, bool):
        raise ValueError("pipeline.from_fork must be true or false")
    return Pipeline(
        repo=string_field(repo, "full_name", MAX_FIELD),
        event=string_field(pipeline, "event", MAX_FIELD),
        branch=string_field(pipeline, "branch", MAX_FIELD, required=False),
        ref=string_field(pipeline, "ref", MAX_FIELD, required=False),
        deploy_to=string_field(pipeline, "deploy_to", MAX_FIELD, required=False),
        fork=fork,
    )


class Replays:
    """The signatures answered (or being answered) within the window, since
    this process started. What came before is not remembered (the set is in
    memory), so a signature made before ``started`` is refused: else a
    request answered before a restart could be sent again after it."""

    def __init__(self, window: float, started: int) -> None:
        self.window = window
        self.started = started  # a whole second of the wall clock, as created is
        self._seen: dict[bytes, float] = {}  # signature -> when (wall clock) it is stale anyway
        self._lock = threading.Lock()

    def claim(self, signed: message_signatures.Signed, now: float) -> Outgoing | None:
        """None when the signature is new (it is now taken), else the answer."""
        if signed.created < self.started:
            return text(
                400,
                "Invalid Signature: it was made before this server started (a request from before a"
                " restart, sent again; or the Woodpecker server's clock is behind this one's: NTP)",
                message_signatures.Stale.outcome,
            )
        with self._lock:
            if signed.signature in self._seen:
                return text(
                    400, "Invalid Signature: this signature was already used (a replay)", "replayed-signature"
                )
            self._forget(now)
            if len(self._seen) >= MAX_REMEMBERED:
                return text(
                    503,
                    f"more than {MAX_REMEMBERED} signed requests within server.clock_skew_seconds; try again",
                    "busy",
                )
            self._seen[signed.signature] = signed.created + self.window
            return None

    def release(self, signed: message_signatures.Signed) -> None:
        with self._lock:
            self._seen.pop(signed.signature, None)

    def _forget(self, now: float) -> None:
        """Drop what the window refuses anyway: from the oldest taken, and
        all through once when full."""
        while self._seen:
            oldest = next(iter(self._seen))
            if self._seen[oldest] >= now:
                break
            del self._seen[oldest]
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen = {s: until for s, until in self._seen.items() if until >= now}
