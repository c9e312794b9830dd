"""Drone's admission extension over real HTTP, with the GitHub rule against
a local server answering GitHub's documented membership endpoints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support.serverutil import (
    ADMISSION_MEDIA,
    SECRET_MEDIA,
    Answer,
    JsonService,
    Server,
    drone_headers,
    server_config,
    write_secret,
)

SECRET = "3c6e0b8a9c15224a8228b9a98ca1531d3c6e0b8a9c15224a"
TOKEN = "ghp_localtesttoken0123456789"
# What the local GitHub says: org memberships and team memberships.
ORG = {"alice": "active", "bob": "pending", "dave": "active", "erin": "active"}
TEAMS = {("drone-admins", "carol"): "active", ("drone-admins", "frank"): "pending"}


class GitHubDouble(JsonService):
    """GitHub's REST API for org and team memberships (GET
    /orgs/{org}/memberships/{user}, /orgs/{org}/teams/{slug}/memberships/{user})
    under /api/v3, as GitHub Enterprise serves it. The login ``flaky`` gets
    a 502, as GitHub does when it is down."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        super().__init__()
        self.url = self.base + "/api/v3"

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        self.requests.append((path, headers))
        parts = path.split("/")
        state = None
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Bad credentials"}
        if parts[-1] == "flaky":
            return 502, {"message": "Server Error"}
        if parts[:4] == ["", "api", "v3", "orgs"] and parts[4] == "acme":
            if parts[5] == "memberships" and len(parts) == 7:
                state = ORG.get(parts[6])
            elif parts[5] == "teams" and parts[7] == "memberships" and len(parts) == 9:
                state = TEAMS.get((parts[6], parts[8]))
        if state is None:
            return 404, {"message": "Not Found"}
        return 200, {"state": state, "role": "member", "organization": {"login": "acme"}}


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubDouble]:
    double = GitHubDouble()
    yield double
    double.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, github: GitHubDouble) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("admission")
    secret_file = write_secret(tmp / "admission-secret", SECRET)
    token_file = write_secret(tmp / "github-token", TOKEN + "\n")
    body = f"""
[admission]
secret_file = "{secret_file}"
email_domains = ["example.com", "*.example.com"]
logins = ["octo*"]
admins = ["root-*"]

[admission.github]
api_url = "{github.url}"
token_file = "{token_file}"
orgs = ["acme"]
admin_teams = ["acme/drone-admins"]
"""
    config, port = server_config(tmp, body)
    with Server(config, port) as running:
        yield running


def admit(server: Server, login: str, email: str = "", event: str = "login", **kw: Any) -> Answer:
    body = json.dumps(
        {"event": event, "user": {"id": 42, "login": login, "email": email, "admin": False}}
    ).encode()
    return server.request(
        "POST", "/drone/admission", body, drone_headers(SECRET, body, accept=ADMISSION_MEDIA, **kw)
    )


def test_a_member_with_an_allowed_email_is_admitted_with_204(server: Server) -> None:
    answer = admit(server, "alice", "alice@example.com")
    assert (answer.status, answer.body) == (204, b"")
    assert admit(server, "alice", "alice@ci.example.com", event="register").status == 204


def test_a_login_glob_admits_whatever_the_email(server: Server) -> None:
    # octo* passes the identity rule; the GitHub rule still applies: not a member.
    answer = admit(server, "octopus", "")
    assert answer.status == 403 and b"not an active member" in answer.body


def test_an_admin_team_member_is_admitted_as_admin(server: Server) -> None:
    answer = admit(server, "carol", "carol@elsewhere.org")
    assert answer.status == 200
    assert answer.json() == {"id": 42, "login": "carol", "email": "carol@elsewhere.org", "admin": True}
    assert admit(server, "frank", "frank@example.com").status == 403  # pending: not yet a member


def test_admins_by_login_glob_need_no_other_rule(server: Server, github: GitHubDouble) -> None:
    before = len(github.requests)
    answer = admit(server, "Root-Ops", "")
    assert answer.status == 200 and answer.json()["admin"] is True
    assert len(github.requests) == before  # decided without asking GitHub


def test_wrong_domain_pending_member_and_stranger_are_denied(server: Server) -> None:
    for login, email, reason in (
        ("dave", "dave@evil.com", b"neither its login nor its email domain"),
        ("erin", "erin@example.com.evil.com", b"neither its login nor its email domain"),
        ("bob", "bob@example.com", b"not an active member"),
        ("mallory", "mallory@example.com", b"not an active member"),
    ):
        answer = admit(server, login, email)
        assert answer.status == 403 and reason in answer.body, (login, answer)


def test_github_down_fails_closed(server: Server) -> None:
    answer = admit(server, "flaky", "flaky@example.com")
    assert answer.status == 403 and b"cannot check the GitHub membership" in answer.body


def test_github_is_asked_with_the_token_as_documented(server: Server, github: GitHubDouble) -> None:
    before = len(github.requests)
    admit(server, "alice", "alice@example.com")
    asked = github.requests[before:]
    assert [path for path, _ in asked] == [
        "/api/v3/orgs/acme/teams/drone-admins/memberships/alice",
        "/api/v3/orgs/acme/memberships/alice",
    ]
    for _, headers in asked:
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["accept"] == "application/vnd.github+json"
        assert headers["x-github-api-version"] == "2022-11-28"


def test_signature_accept_and_input_are_checked(server: Server) -> None:
    body = json.dumps({"event": "login", "user": {"login": "alice", "email": "alice@example.com"}}).encode()
    assert (
        server.request(
            "POST", "/drone/admission", body, drone_headers("y" * 48, body, accept=ADMISSION_MEDIA)
        ).status
        == 400
    )
    answer = server.request(
        "POST", "/drone/admission", body, drone_headers(SECRET, body, accept=SECRET_MEDIA)
    )
    assert answer.status == 400 and b"Invalid Input" in answer.body
    for bad in (b"{}", json.dumps({"event": "logout", "user": {"login": "a"}}).encode()):
        answer = server.request(
            "POST", "/drone/admission", bad, drone_headers(SECRET, bad, accept=ADMISSION_MEDIA)
        )
        assert answer.status == 400 and b"Invalid Input" in answer.body
    not_github = admit(server, "a.b_c", "a@example.com")
    assert not_github.status == 403 and b"not a GitHub user name" in not_github.body


def test_a_lone_surrogate_in_the_login_is_400_naming_it(server: Server) -> None:
    answer = admit(server, "mallory\ud800", "mallory@example.com")
    assert (answer.status, answer.body) == (
        400,
        b"Invalid Input: login holds a lone surrogate (\\ud800 to \\udfff), which is not text\n",
    )


def test_the_access_log_names_the_login_and_outcome(server: Server) -> None:
    before = server.log_mark()
    admit(server, "alice", "alice@example.com")
    admit(server, "mallory", "mallory@example.com")
    lines = server.logged(before, 2)
    assert [(line["login"], line["status"], line["outcome"]) for line in lines] == [
        ("alice", 204, "ok"),
        ("mallory", 403, "denied"),
    ]
    assert TOKEN not in "".join(server.stdout) + "".join(server.stderr)
