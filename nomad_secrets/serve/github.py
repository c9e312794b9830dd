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

import re
from urllib.parse import quote

from nomad_secrets.process.deadline import Deadline
from nomad_secrets.serve import fetchjson
from nomad_secrets.serve.settings import GitHubSettings

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
        }
        self._http = fetchjson.Fetcher(settings.ca_cert)

    def org_member(self, org: str, login: str, deadline: Deadline) -> bool:
        return self._active(f"/orgs/{quote(org, safe='')}/memberships/{quote(login, safe='')}", deadline)

    def team_member(self, team: str, login: str, deadline: Deadline) -> bool:
        org, _, slug = team.partition("/")
        path = f"/orgs/{quote(org, safe='')}/teams/{quote(slug, safe='')}/memberships/{quote(login, safe='')}"
        return self._active(path, deadline)

    def _active(self, path: str, deadline: Deadline) -> bool:
        try:
            status, document = self._http.get(self.base + path, self._headers, deadline, MAX_ANSWER_BYTES)
        except fetchjson.NoAnswer as exc:
            raise GitHubUnavailable(str(exc)) from None
        if status == 404:
            return False
        if status != 200:
            raise GitHubUnavailable(f"{self.base} answered {status} to GET {path}")
        state = document.get("state") if isinstance(document, dict) else None
        if state not in ("active", "pending"):
            raise GitHubUnavailable(f"{self.base} answered GET {path} without a membership state")
        return bool(state == "active")
