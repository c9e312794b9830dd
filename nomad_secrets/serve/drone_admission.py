"""Drone's admission extension: the Drone server asks, at each login and
registration, whether a user may in, and whether as an admin.

The request is signed like the secret extension's (httpsig.py), with
``Accept: application/vnd.drone.admission.v1+json`` and the body
``{"event": "login" | "register", "user": {"id", "login", "email", "admin", ...}}``.

The rules (``[admission]``), each optional, all that are set must pass:

- ``logins`` and ``email_domains``: globs on the login and on the part of
  the email after its last ``@`` (lower case); set either, and the user must
  match one of them;
- ``[admission.github]``: the user must be an active member of one of
  ``orgs``, ``teams`` or ``admin_teams`` (github.py);
- ``admins`` (globs on the login) and ``admin_teams`` make the user an admin.

Answers, as Drone's server reads them (drone plugin/admission/external.go):
403 with the reason to deny; 204 to admit; 200 with the user and
``"admin": true`` to admit as an admin. Drone sets the user's admin flag
from every answer, so 204 also takes away an admin flag given elsewhere:
with this extension, ``admins`` and ``admin_teams`` are the admins.
"""

from __future__ import annotations

import json

from nomad_secrets.core.policy import glob_match
from nomad_secrets.serve import httpsig
from nomad_secrets.serve.exchange import Incoming, LogValue, Outgoing, json_answer, string_field, text
from nomad_secrets.serve.github import LOGIN, GitHub, GitHubUnavailable
from nomad_secrets.serve.settings import AdmissionSettings, Keys, Settings

MEDIA_TYPE = "application/vnd.drone.admission.v1+json"
EVENTS = ("login", "register")
MAX_FIELD = 512


class Denied(Exception):
    """The user may not in; the text says why (and is the 403's body)."""


class DroneAdmission:
    route: str = "/drone/admission"
    methods: tuple[str, ...] = ("POST",)

    def __init__(self, settings: Settings, keys: Keys) -> None:
        assert settings.admission is not None
        self.rules: AdmissionSettings = settings.admission
        self.secret = keys.admission
        self.skew = settings.server.clock_skew_seconds
        self.github = GitHub(self.rules.github, keys.github_token) if self.rules.github is not None else None

    def handle(self, request: Incoming) -> Outgoing:
        try:
            event, user = httpsig.read_extension(self.secret, request, self.skew, MEDIA_TYPE, parse_request)
        except httpsig.BadSignature as exc:
            return text(400, str(exc), exc.outcome)
        login, email = str(user["login"]), str(user.get("email") or "")
        log: dict[str, LogValue] = {"event": event, "login": login}
        try:
            admin = self.decide(login, email, request)
        except Denied as exc:
            return text(403, str(exc), "denied", **log)
        except GitHubUnavailable as exc:
            return text(
                403, f"cannot check the GitHub membership of {login!r}: {exc}", "github-unavailable", **log
            )
        if not admin:
            return Outgoing(204, content_type=None, log=log)
        answer: dict[str, object] = {key: user[key] for key in ("id", "login", "email") if key in user}
        return json_answer({**answer, "admin": True}, admin=True, **log)

    def decide(self, login: str, email: str, request: Incoming) -> bool:
        """True to admit as an admin, False to admit; Denied otherwise."""
        rules, name = self.rules, login.lower()
        if any(glob_match(glob, name) for glob in rules.admins):
            return True
        github = rules.github
        if github is not None and self.github is not None:
            if not LOGIN.match(login):
                raise Denied(f"the login {login!r} is not a GitHub user name")
            deadline = request.deadline
            if any(self.github.team_member(team, login, deadline) for team in github.admin_teams):
                return True
        if rules.logins or rules.email_domains:
            domain = email.rpartition("@")[2].lower() if "@" in email else ""
            by_login = any(glob_match(glob, name) for glob in rules.logins)
            by_email = bool(domain) and any(glob_match(glob, domain) for glob in rules.email_domains)
            if not (by_login or by_email):
                raise Denied(
                    f"the login {login!r} is not admitted here (neither its login nor its email domain)"
                )
        if github is not None and self.github is not None:
            deadline = request.deadline
            member = any(self.github.team_member(team, login, deadline) for team in github.teams) or any(
                self.github.org_member(org, login, deadline) for org in github.orgs
            )
            if not member:
                raise Denied(
                    f"the login {login!r} is not an active member of the GitHub orgs or teams admitted here"
                )
        return False


def parse_request(body: bytes) -> tuple[str, dict[str, object]]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), dict):
        raise ValueError("the body must be an object with a user object")
    event, user = data.get("event"), data["user"]
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)}")
    string_field(user, "login", MAX_FIELD)
    string_field(user, "email", MAX_FIELD, required=False)
    return str(event), user
