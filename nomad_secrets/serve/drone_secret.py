"""Drone's secret extension (v1): a runner asks for one secret of a pipeline.

The pipeline says (``.drone.yml``)::

    kind: secret
    name: docker_password
    get:
      path: aws-sm:ci/docker      # a reference, in the grammar Nomad jobs use
      name: password              # the field

and the runner POSTs ``{"path", "name", "repo": {"slug", ...}, "build":
{"event", "target", "source_repo", ...}}``, signed (httpsig.py). The path is
a reference without ``#selector`` (``name`` picks the field, as drone-vault
and drone-amazon-secrets do; an empty name means ``value``, the whole text
of a secret that is not a JSON object). The caller is the repo, the event,
the branch (``build.target``) and whether the build is a pull request from a
fork (its ``source_repo`` is another repo, or empty or missing);
``[[drone.policy]]`` decides (forks get nothing unless a rule says
``fork = true``). Then the secret's own filters, as drone-vault reads them:
``X-Drone-Events``, ``X-Drone-Repos``, ``X-Drone-Branches`` (comma lists of
globs, lower case, ``*`` within a path segment) and
``X-Drone-Disallow-Forks``; they are never returned as data.

Answers, as drone-go's handler and runner expect: 200 with ``{"name",
"data", "pull": true, "fork": true}`` (the policy already judged the event
and the fork, so the runner must not drop it again), AES-GCM encrypted when
the request says ``Accept-Encoding: aesgcm``; 400 for a bad signature or
input; 403 denied; 404 no such secret or field; 5xx when a store fails. A
message names the reference and never carries a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nomad_secrets.core.policy import Caller, glob_match
from nomad_secrets.core.reference import MAX_PATH_BYTES, parse_reference
from nomad_secrets.process.errors import NotFound, PluginError, PolicyDenied, RequestError
from nomad_secrets.serve import aesgcm, httpsig
from nomad_secrets.serve.exchange import (
    Incoming,
    LogValue,
    Outgoing,
    failure,
    json_objects,
    string_field,
    text,
)
from nomad_secrets.serve.settings import DRONE_PLACEHOLDERS, Keys, Settings
from nomad_secrets.serve.stores import ServerStores
from nomad_secrets.stores.registry import STORE_LABELS
from nomad_secrets.stores.resolve import check_policy, resolve

MEDIA_TYPE = "application/vnd.drone.secret.v1+json"
MAX_FIELD = 1024  # name, slug, event, branch: far above any real one
# drone-vault's filters, matched without regard to case (as it does).
EVENTS, REPOS, BRANCHES, NO_FORKS = (
    "x-drone-events",
    "x-drone-repos",
    "x-drone-branches",
    "x-drone-disallow-forks",
)
FILTER_KEYS = (EVENTS, REPOS, BRANCHES, NO_FORKS)


@dataclass(frozen=True)
class SecretRequest:
    path: str
    name: str
    repo: str  # the slug, owner/name
    event: str
    branch: str  # build.target
    fork: bool  # a pull request whose source repo is another, or not given

    def caller(self) -> Caller:
        fields = (("repo", self.repo), ("event", self.event), ("branch", self.branch))
        return Caller(
            fields=(*fields, ("fork", "true" if self.fork else "false")), placeholders=DRONE_PLACEHOLDERS
        )


class DroneSecret:
    route: str = "/drone/secret"
    methods: tuple[str, ...] = ("POST",)

    def __init__(self, settings: Settings, keys: Keys, pool: ServerStores) -> None:
        assert settings.drone is not None
        self.secret = keys.drone
        self.rules = settings.drone.policy
        self.skew = settings.server.clock_skew_seconds
        self.default_store = settings.server.store
        self.max_output_bytes = settings.config.plugin.max_output_bytes
        self.pool = pool

    def handle(self, request: Incoming) -> Outgoing:
        try:
            asked = httpsig.read_extension(self.secret, request, self.skew, MEDIA_TYPE, parse_request)
        except httpsig.BadSignature as exc:
            return text(400, str(exc), exc.outcome)
        log: dict[str, LogValue] = {
            "repo": asked.repo,
            "event": asked.event,
            "branch": asked.branch,
            "fork": asked.fork,
            "reference": asked.path,
            "name": asked.name,
        }
        try:
            data = self.find(asked, request)
        except PluginError as exc:
            return failure(exc, request.deadline, **log)
        body = json.dumps({"name": asked.name, "data": data, "pull": True, "fork": True}).encode()
        if request.header("accept-encoding") == "aesgcm":
            return Outgoing(
                200,
                aesgcm.seal(body, self.secret),
                "application/octet-stream",
                {"Content-Encoding": "aesgcm"},
                log=log,
            )
        return Outgoing(200, body, "application/json", log=log)

    def find(self, asked: SecretRequest, request: Incoming) -> str:
        ref = parse_reference(asked.path)
        if ref.selector is not None:
            raise RequestError(
                f"{ref.text!r}: drop the #selector from the secret's path; its name picks the field"
            )
        store = ref.scheme or self.default_store
        label = STORE_LABELS[store]
        check_policy([ref], [store], asked.caller(), self.rules, request.deadline)
        with self.pool.backends(request.deadline) as backend_for:
            values = resolve([ref], [store], backend_for, request.deadline, self.max_output_bytes)
        filters = {key.lower(): value for key, value in values.items() if key.lower() in FILTER_KEYS}
        for key, what, value in (
            (EVENTS, "event", asked.event),
            (REPOS, "repo", asked.repo),
            (BRANCHES, "branch", asked.branch),
        ):
            if not filter_allows(filters.get(key, ""), value):
                raise PolicyDenied(
                    f"{ref.text!r} ({label}): the secret's {key} filter does not allow this build's"
                    f" {what} {value!r}; ask the secret's owner"
                )
        if asked.fork and filters.get(NO_FORKS, "").strip().lower() in ("1", "t", "true"):
            raise PolicyDenied(f"{ref.text!r} ({label}): the secret's {NO_FORKS} filter refuses forks")
        field = asked.name or "value"
        if field.lower() in FILTER_KEYS or field not in values:
            raise NotFound(
                ref.text,
                label,
                f"the secret has no field {field!r}",
                "check the secret's name in .drone.yml (its keys are not shown, to keep values out of logs)",
            )
        return values[field]


def parse_request(body: bytes) -> SecretRequest:
    """The runner's request, each field checked; ValueError says what is wrong."""
    data, repo, build = json_objects(body, "repo", "build")
    path = string_field(data, "path", MAX_PATH_BYTES)
    name = string_field(data, "name", MAX_FIELD, required=False)
    slug = string_field(repo, "slug", MAX_FIELD)
    event = string_field(build, "event", MAX_FIELD)
    branch = string_field(build, "target", MAX_FIELD, required=False)
    source = string_field(build, "source_repo", MAX_FIELD, required=False)
    # A pull request is from a fork unless its source repo is the repo
    # itself. drone-vault reads an empty source as "not a fork", which is
    # right for a push but not here: a pull request that does not say
    # where its code came from is treated as a fork (fail closed).
    fork = event == "pull_request" and source.lower() != slug.lower()
    return SecretRequest(path=path, name=name, repo=slug, event=event, branch=branch, fork=fork)


def filter_allows(patterns: str, value: str) -> bool:
    """drone-vault's filter: no pattern allows all; else one must match,
    lower case, each ``/`` segment by its own glob (Go's path.Match: ``*``
    never crosses ``/``; ``[...]`` is not a class here, so it matches only
    itself, which can only refuse more)."""
    globs = [p.strip().lower() for p in patterns.split(",") if p.strip()]
    if not globs:
        return True
    parts = value.lower().split("/")
    for glob in globs:
        segments = glob.split("/")
        if len(segments) == len(parts) and all(map(glob_match, segments, parts)):
            return True
    return False
