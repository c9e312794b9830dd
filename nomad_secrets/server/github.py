"""GitHub org and team membership, for the admission rule: REST API v3 at
a configurable base URL (``https://api.github.com``, or GitHub Enterprise's
``https://HOST/api/v3``), with a token that may read the memberships.

- ``GET /orgs/{org}/memberships/{username}``: 200 with ``state`` active or
  pending, 404 when not a member;
- ``GET /orgs/{org}/teams/{team_slug}/memberships/{username}``: the same
  for a team.

Only an ``active`` membership counts (an invitation not yet accepted does
not). Any other answer, or none in time, is ``GitHubUnavailable``: the
admission fails closed. The token never appears in a message.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import urllib3

from nomad_secrets._version import __version__
from nomad_secrets.deadline import Deadline
from nomad_secrets.server.settings import GitHubSettings

CONNECT_TIMEOUT = 3.0
MAX_ANSWER_BYTES = 64 * 1024
# GitHub's rule for user names: alphanumerics and single hyphens, 39 at most.
LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})\Z")


class GitHubUnavailable(Exception):
    """GitHub did not answer as documented; the text says how."""


class GitHub:
    def __init__(self, settings: GitHubSettings, token: str) -> None:
        self.base = settings.api_url.rstrip("/")
        self._headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {token}",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": f"nomad-secrets/{__version__}",
        }
        self._http = urllib3.PoolManager(
            num_pools=2, maxsize=8, retries=False, cert_reqs="CERT_REQUIRED", ca_certs=settings.ca_cert
        )

    def org_member(self, org: str, login: str, deadline: Deadline) -> bool:
        return self._active(f"/orgs/{quote(org, safe='')}/memberships/{quote(login, safe='')}", deadline)

    def team_member(self, team: str, login: str, deadline: Deadline) -> bool:
        org, _, slug = team.partition("/")
        path = f"/orgs/{quote(org, safe='')}/teams/{quote(slug, safe='')}/memberships/{quote(login, safe='')}"
        return self._active(path, deadline)

    def _active(self, path: str, deadline: Deadline) -> bool:
        timeout = urllib3.Timeout(
            connect=min(CONNECT_TIMEOUT, deadline.call_timeout()), read=deadline.call_timeout()
        )
        try:
            answer = self._http.request(
                "GET",
                self.base + path,
                headers=self._headers,
                timeout=timeout,
                preload_content=False,
                redirect=False,
            )
            try:
                body = answer.read(MAX_ANSWER_BYTES + 1)
            finally:
                answer.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise GitHubUnavailable(f"no answer from {self.base} ({type(exc).__name__})") from None
        if answer.status == 404:
            return False
        if answer.status != 200:
            raise GitHubUnavailable(f"{self.base} answered {answer.status} to GET {path}")
        try:
            state = json.loads(body).get("state") if len(body) <= MAX_ANSWER_BYTES else None
        except (ValueError, AttributeError, RecursionError):
            state = None
        if state not in ("active", "pending"):
            raise GitHubUnavailable(f"{self.base} answered GET {path} without a membership state")
        return bool(state == "active")

    def close(self) -> None:
        self._http.clear()
