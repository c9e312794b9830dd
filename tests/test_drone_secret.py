"""Drone's secret extension over real HTTP: ``nomad-secrets serve`` on
127.0.0.1, AWS on moto's server, requests as drone-go's runner sends them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, put_secret
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support.serverutil import (
    ADMISSION_MEDIA,
    Server,
    drone_headers,
    http_date,
    secret_body,
    server_config,
    write_secret,
)

SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
DOCKER = {"username": "octo", "password": "hunter2-docker", "X-Drone-Events": "push,tag"}
VALUES = ("hunter2-docker", "hunter2-pr", "hunter2-public", "hunter2-ssm", "hunter2-text", "hunter2-branch")
POLICY = """
[[drone.policy]]                  # pushes and tags: the repo's own secrets, and shared ones
repo = "octocat/*"
event = "push"
allow = ["aws-sm:ci/{repo}/**", "aws-ssm:/ci/shared/*"]

[[drone.policy]]
repo = "octocat/*"
event = "tag"
allow = ["aws-sm:ci/{repo}/**"]

[[drone.policy]]
repo = "octocat/*"
event = "custom"
allow = ["aws-sm:ci/{repo}/**"]

[[drone.policy]]                  # pull requests from the repo itself
repo = "octocat/*"
event = "pull_request"
allow = ["aws-sm:ci/{repo}/pr/*"]

[[drone.policy]]                  # pull requests from forks: public secrets only
repo = "octocat/*"
event = "pull_request"
fork = true
allow = ["aws-sm:ci/public/*"]
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, secretsmanager: Any, ssm: Any
) -> Iterator[Server]:
    put_secret(secretsmanager, "ci/octocat/hello-world/docker", json.dumps(DOCKER))
    put_secret(secretsmanager, "ci/octocat/hello-world/pr/token", json.dumps({"token": "hunter2-pr"}))
    put_secret(secretsmanager, "ci/public/token", json.dumps({"token": "hunter2-public"}))
    put_secret(secretsmanager, "ci/octocat/hello-world/text", "hunter2-text")
    put_secret(
        secretsmanager,
        "ci/octocat/hello-world/filtered",
        json.dumps(
            {
                "key": "hunter2-branch",
                "x-drone-repos": "octocat/hello-*",
                "X-Drone-Branches": "main, release/*",
            }
        ),
    )
    ssm.put_parameter(Name="/ci/shared/token", Value="hunter2-ssm", Type="SecureString", Overwrite=True)
    tmp = tmp_path_factory.mktemp("drone")
    secret_file = write_secret(tmp / "drone-secret", SECRET + "\n")
    body = aws_config(moto_endpoint) + f'[drone]\nsecret_file = "{secret_file}"\n' + POLICY
    config, port = server_config(tmp, body, server_extra="max_body_bytes = 4096\n")
    with Server(config, port) as running:
        yield running


def ask(server: Server, path: str, name: str = "", **build: str) -> tuple[int, Any]:
    answer = server.drone_secret(SECRET, secret_body(path, name, **build))
    body = answer.json() if answer.headers.get("content-type") == "application/json" else answer.body.decode()
    return answer.status, body


def test_the_field_named_in_the_pipeline_is_the_answer(server: Server) -> None:
    status, body = ask(server, "aws-sm:ci/octocat/hello-world/docker", "password")
    assert status == 200
    assert body == {"name": "password", "data": "hunter2-docker", "pull": True, "fork": True}


def test_the_grammar_of_nomad_jobs_reaches_every_store(server: Server) -> None:
    assert ask(server, "ci/octocat/hello-world/docker", "username") == (
        200,
        {"name": "username", "data": "octo", "pull": True, "fork": True},
    )  # server.store is aws-sm: drone-amazon-secrets' paths work unchanged
    assert ask(server, "aws-ssm:/ci/shared/token")[1]["data"] == "hunter2-ssm"
    assert ask(server, "aws-sm:ci/octocat/hello-world/text")[1]["data"] == "hunter2-text"  # no name: value


def test_aesgcm_answer_round_trip(server: Server) -> None:
    body = secret_body("aws-sm:ci/octocat/hello-world/docker", "password")
    answer = server.request("POST", "/drone/secret", body, drone_headers(SECRET, body, encoding="aesgcm"))
    assert answer.status == 200
    assert answer.headers["content-encoding"] == "aesgcm"
    assert answer.headers["content-type"] == "application/octet-stream"
    assert b"hunter2" not in answer.body
    # As drone-go's client: key = the secret's first 32 bytes, nonce first.
    plain = AESGCM(SECRET.encode()[:32]).decrypt(answer.body[:12], answer.body[12:], None)
    assert json.loads(plain)["data"] == "hunter2-docker"


def test_tampered_body_header_or_date_is_400(server: Server) -> None:
    body = secret_body("aws-sm:ci/octocat/hello-world/docker", "password")
    headers = drone_headers(SECRET, body)
    other = secret_body("aws-sm:ci/octocat/hello-world/docker", "username")
    answer = server.request("POST", "/drone/secret", other, headers)
    assert (answer.status, answer.body) == (
        400,
        b"Invalid Signature: the Digest header is not the body's SHA-256\n",
    )
    for name, value in (("Accept-Encoding", "aesgcm"), ("Date", http_date(time.time() + 5))):
        answer = server.request("POST", "/drone/secret", body, {**headers, name: value})
        assert (answer.status, answer.body) == (400, b"Invalid Signature\n")
    answer = server.request("POST", "/drone/secret", body, drone_headers("x" * 64, body))
    assert (answer.status, answer.body) == (400, b"Invalid Signature\n")
    unsigned = {k: v for k, v in headers.items() if k != "Signature"}
    answer = server.request("POST", "/drone/secret", body, unsigned)
    assert (answer.status, answer.body) == (400, b"Invalid or Missing Signature\n")


def test_a_replay_outside_the_window_is_400(server: Server) -> None:
    body = secret_body("aws-sm:ci/octocat/hello-world/docker", "password")
    late = drone_headers(SECRET, body, date=http_date(time.time() - 301))
    answer = server.request("POST", "/drone/secret", body, late)
    assert answer.status == 400 and b"away from this server's clock" in answer.body
    assert b"hunter2" not in answer.body


def test_a_request_for_another_endpoint_is_refused(server: Server) -> None:
    body = secret_body("aws-sm:ci/octocat/hello-world/docker", "password")
    answer = server.request(
        "POST", "/drone/secret", body, drone_headers(SECRET, body, accept=ADMISSION_MEDIA)
    )
    assert answer.status == 400 and b"Invalid Input" in answer.body


def test_pull_requests_from_forks_get_only_what_a_fork_rule_allows(server: Server) -> None:
    fork = {"event": "pull_request", "source_repo": "mallory/hello-world"}
    status, message = ask(server, "aws-sm:ci/octocat/hello-world/pr/token", "token", **fork)
    assert status == 403 and "fork 'true'" in message and "hunter2" not in message
    assert ask(server, "aws-sm:ci/public/token", "token", **fork)[1]["data"] == "hunter2-public"
    own = {"event": "pull_request", "source_repo": "OctoCat/Hello-World"}  # the repo itself, any case
    assert ask(server, "aws-sm:ci/octocat/hello-world/pr/token", "token", **own)[1]["data"] == "hunter2-pr"
    assert ask(server, "aws-sm:ci/public/token", "token", **own)[0] == 403


def test_a_pull_request_that_does_not_name_its_source_is_a_fork(server: Server) -> None:
    """drone-vault reads an empty source_repo as a branch build; on a pull
    request it only means the sender did not say where the code came from,
    so it gets what forks get and no more (issue 25)."""
    empty = {"event": "pull_request", "source_repo": ""}
    status, message = ask(server, "aws-sm:ci/octocat/hello-world/pr/token", "token", **empty)
    assert status == 403 and "fork 'true'" in message and "hunter2" not in message
    assert ask(server, "aws-sm:ci/public/token", "token", **empty)[1]["data"] == "hunter2-public"
    body = json.loads(secret_body("aws-sm:ci/octocat/hello-world/pr/token", "token", event="pull_request"))
    del body["build"]["source_repo"]
    missing = server.drone_secret(SECRET, json.dumps(body).encode())
    assert missing.status == 403 and b"fork 'true'" in missing.body
    # A push says no source repo either, and is no fork.
    push = ask(server, "aws-sm:ci/octocat/hello-world/docker", "password", source_repo="")
    assert push[1]["data"] == "hunter2-docker"


def test_policy_is_per_repo_event_and_branch(server: Server) -> None:
    status, message = ask(server, "aws-sm:ci/octocat/other-repo/docker", "password")
    assert status == 403 and "repo 'octocat/hello-world'" in message
    status, message = ask(server, "aws-sm:ci/octocat/hello-world/docker", "password", event="cron")
    assert status == 403 and "no rule of the operator's policy matches" in message
    assert ask(server, "aws-sm:ci/octocat/hello-world/docker", "password", repo="someone/else")[0] == 403


def test_drone_vault_filters_in_the_secret_are_honoured_and_never_returned(server: Server) -> None:
    path = "aws-sm:ci/octocat/hello-world/docker"
    assert ask(server, path, "password", event="tag")[0] == 200
    status, message = ask(server, path, "password", event="custom")  # the policy allows, the secret not
    assert status == 403 and "x-drone-events filter does not allow this build's event 'custom'" in message
    filtered = "aws-sm:ci/octocat/hello-world/filtered"
    assert ask(server, filtered, "key", branch="release/1.2")[1]["data"] == "hunter2-branch"
    status, message = ask(server, filtered, "key", branch="dev")
    assert status == 403 and "x-drone-branches filter" in message and "hunter2" not in message
    status, message = ask(server, filtered, "key", branch="release/1.2/x")  # * stays in its segment
    assert status == 403
    for name in ("X-Drone-Events", "x-drone-repos", "X-DRONE-BRANCHES"):
        status, message = ask(server, filtered if name != "X-Drone-Events" else path, name)
        assert status == 404 and "no field" in message


def test_missing_secret_or_field_is_404_naming_the_reference(server: Server) -> None:
    status, message = ask(server, "aws-sm:ci/octocat/hello-world/nothing-here", "password")
    assert (
        status == 404
        and "'aws-sm:ci/octocat/hello-world/nothing-here' (AWS Secrets Manager): not found" in message
    )
    status, message = ask(server, "aws-sm:ci/octocat/hello-world/docker", "nope")
    assert status == 404 and "no field 'nope'" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "the body is not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"path": "x", "repo": {"slug": "a/b"}, "build": {}}).encode(), "event is missing"),
        (
            json.dumps({"path": 1, "repo": {"slug": "a/b"}, "build": {"event": "push"}}).encode(),
            "path must be",
        ),
        (secret_body("aws-sm:ci/octocat/hello-world/docker#password", "password"), "drop the #selector"),
        (secret_body("aws-sm:ci/x?bogus=1", "x"), "the operator's policy"),
        (secret_body("aws-sm:ci/x\u0001", "x"), "control character"),
    ],
)
def test_bad_input_is_a_clear_4xx(server: Server, body: bytes, expected: str) -> None:
    answer = server.drone_secret(SECRET, body)
    assert answer.status in (400, 403), answer
    assert expected in answer.body.decode()


def test_a_lone_surrogate_is_400_naming_the_field_and_logged(server: Server) -> None:
    """JSON may escape half of a surrogate pair (``\\ud800``), which is no
    text: refused where the field is read, never a traceback and a bare 500
    from the access log (hostile review of issue 25)."""
    before = server.log_mark()
    body = secret_body("aws-sm:ci/octocat/hello-world/\ud800", "password")
    assert b"\\ud800" in body
    answer = server.drone_secret(SECRET, body)
    assert (answer.status, answer.body) == (
        400,
        b"Invalid Input: path holds a lone surrogate (\\ud800 to \\udfff), which is not text\n",
    )
    (line,) = server.logged(before, 1)
    assert (line["path"], line["status"], line["outcome"]) == ("/drone/secret", 400, "invalid-input")
    assert "Traceback" not in "".join(server.stderr)


def test_a_body_over_the_limit_is_413(server: Server) -> None:
    body = secret_body("aws-sm:ci/octocat/hello-world/docker", "x" * 5000)
    assert server.drone_secret(SECRET, body).status == 413


def test_one_access_log_line_per_request_and_no_value_anywhere(server: Server) -> None:
    before = server.log_mark()
    ask(server, "aws-sm:ci/octocat/hello-world/docker", "password", branch="feature/x")
    ask(server, "aws-sm:ci/octocat/other-repo/docker", "password")
    lines = server.logged(before, 2)
    assert len(lines) == 2
    ok, denied = lines
    assert ok["path"] == "/drone/secret" and ok["status"] == 200 and ok["outcome"] == "ok"
    assert (ok["repo"], ok["event"], ok["branch"], ok["fork"]) == (
        "octocat/hello-world",
        "push",
        "feature/x",
        False,
    )
    assert ok["reference"] == "aws-sm:ci/octocat/hello-world/docker" and ok["name"] == "password"
    assert isinstance(ok["ms"], float) and ok["ms"] > 0
    assert (denied["status"], denied["outcome"]) == (403, "denied")
    everything = "".join(server.stdout) + "".join(server.stderr)
    assert not [value for value in VALUES if value in everything]
    assert SECRET not in everything


def test_requests_are_served_concurrently(server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        return ask(server, "aws-sm:ci/octocat/hello-world/docker", "password")[0]

    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(one, range(64))) == {200}


def test_a_server_config_without_drone_policy_does_not_start(tmp_path: Path, moto_endpoint: str) -> None:
    secret_file = write_secret(tmp_path / "s", SECRET)
    config, port = server_config(
        tmp_path, aws_config(moto_endpoint) + f'[drone]\nsecret_file = "{secret_file}"\n'
    )
    with pytest.raises(RuntimeError, match=r"no \[\[drone.policy\]\]"):
        Server(config, port).start()
