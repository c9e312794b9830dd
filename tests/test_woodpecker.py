"""Woodpecker's secret extension over real HTTP: ``nomad-secrets serve`` on
127.0.0.1, AWS on moto's server, and requests signed and sent as a
Woodpecker server does, by two signers independent of the server's
verifier (tests/support/woodpecker.py): Go's crypto/ed25519 and net/http, and one
written on cryptography. Both hold one key, so one server serves both."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import aws_config, go_builds, put_secret
from support import gocheck
from support.serverutil import Server, server_config, write_secret
from support.woodpecker import PyWoodpecker, Woodpecker, go_woodpecker

SEED = bytes(range(32))  # the Woodpecker server's key (made on its first start)
ENDPOINT_TOKEN = "5d41402abc4b2a76b9719d911017c592aa5ef0b9b2a4e1f3c6d7e8f90a1b2c3d"  # openssl rand -hex 32
OTHER_SEED = bytes(range(1, 33))
NETRC_PASSWORD = "netrc-hunter2-forge-token"
VALUES = ("deploy-hunter2", "npm-hunter2", "test-hunter2", "public-hunter2", NETRC_PASSWORD)
RULES = """
[[woodpecker.rule]]                 # pushes to main: the deploy key
repo = "acme/*"
event = "push"
branch = "main"
secrets = { deploy_key = "aws-sm:ci/woodpecker/deploy#key" }

[[woodpecker.rule]]                 # every pipeline of acme's repos but pull requests and forks
repo = "acme/*"
secrets = { npm_token = "aws-sm:ci/woodpecker/npm#token" }

[[woodpecker.rule]]                 # pull requests of acme's own repos
repo = "acme/*"
event = "pull_request"
secrets = { test_token = "aws-sm:ci/woodpecker/test#token" }

[[woodpecker.rule]]                 # pull requests from forks: public test data only
repo = "acme/*"
event = "pull_request"
fork = true
secrets = { public_token = "aws-sm:ci/woodpecker/public#token" }

[[woodpecker.rule]]                 # a reference outside what the guard allows
repo = "acme/*"
event = "manual"
secrets = { other = "aws-sm:elsewhere/thing#x" }

[[woodpecker.rule]]                 # a store the server cannot read: a 5xx
repo = "acme/*"
event = "cron"
secrets = { broken = "vault:secret/nothing#x" }

[[woodpecker.policy]]
repo = "acme/*"
allow = ["aws-sm:ci/woodpecker/**", "vault:secret/**"]

[[woodpecker.policy]]
repo = "acme/*"
fork = true
allow = ["aws-sm:ci/woodpecker/public"]
"""


PIPELINES = itertools.count(1)


def pipeline_body(
    repo: str = "acme/web",
    event: str = "push",
    branch: str = "main",
    fork: bool = False,
    deploy_to: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """A request as Woodpecker's SecretListPipeline sends it (most fields of
    its models left out), with netrc sending on. Each is another pipeline:
    the same body signed in the same second is the same signature."""
    owner, _, name = repo.partition("/")
    pipeline: dict[str, Any] = {
        "id": next(PIPELINES),
        "number": 7,
        "event": event,
        "branch": branch,
        "ref": "refs/pull/3/head" if event.startswith("pull_request") else f"refs/heads/{branch}",
        "commit": "2fff90f8d288a4640e90f05049fe30e61a14fd50",
        "deploy_to": deploy_to,
        "author": "octocat",
        "sender": "octocat",
        "changed_files": ["README.md"],
        **extra,
    }
    if fork:
        pipeline["from_fork"] = True  # omitempty: only a fork's says it
    return {
        "repo": {"id": 100, "owner": owner, "name": name, "full_name": repo, "private": True},
        "pipeline": pipeline,
        "netrc": {"machine": "github.com", "login": "octocat", "password": NETRC_PASSWORD},
    }


@pytest.fixture(scope="module", params=["go", "python"])
def woodpecker(request: pytest.FixtureRequest) -> Woodpecker:
    if request.param == "python":
        return PyWoodpecker(SEED)
    with go_builds(request.config) as shared:
        try:
            return go_woodpecker(shared, SEED)
        except gocheck.GoMissing as missing:
            pytest.skip(str(missing))


def woodpecker_server(tmp: Path, moto_endpoint: str, secretsmanager: Any) -> Server:
    """A server (not started) with RULES, the secrets they read, and the
    Woodpecker server's public key."""
    for name, field, value in (
        ("deploy", "key", "deploy-hunter2"),
        ("npm", "token", "npm-hunter2"),
        ("test", "token", "test-hunter2"),
        ("public", "token", "public-hunter2"),
    ):
        put_secret(secretsmanager, f"ci/woodpecker/{name}", json.dumps({field: value}))
    key_file = tmp / "woodpecker.pem"
    key_file.write_bytes(PyWoodpecker(SEED).public_pem())  # the Go signer's PEM is checked equal below
    key_file.chmod(0o644)  # a public key: anyone may read it, only its owner change it
    token_file = write_secret(tmp / "endpoint-token", ENDPOINT_TOKEN + "\n")
    body = aws_config(moto_endpoint) + woodpecker_section(key_file, token_file) + RULES
    return Server(*server_config(tmp, body, server_extra="max_body_bytes = 65536\n"))


def woodpecker_section(key_file: Path | str, token_file: Path | str) -> str:
    return f'[woodpecker]\npublic_key_file = "{key_file}"\nendpoint_token_file = "{token_file}"\n'


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str, secretsmanager: Any
) -> Iterator[Server]:
    with woodpecker_server(tmp_path_factory.mktemp("woodpecker"), moto_endpoint, secretsmanager) as running:
        yield running


def url(server: Server) -> str:
    """WOODPECKER_SECRET_EXTENSION_ENDPOINT, as docs/ci.md has it."""
    return f"http://127.0.0.1:{server.port}/woodpecker/secrets/{ENDPOINT_TOKEN}"


def post(server: Server, data: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """A request signed beforehand (PyWoodpecker.signed), sent as it is."""
    answer = server.request("POST", urlsplit(url(server)).path, data, headers)
    return answer.status, answer.body.decode()


def secrets(server: Server, woodpecker: Woodpecker, **pipeline: Any) -> tuple[int, Any]:
    ((status, text),) = woodpecker.send(url(server), pipeline_body(**pipeline))
    return status, (json.loads(text) if status == 200 else text)


def names(answer: tuple[int, Any]) -> dict[str, str]:
    status, body = answer
    assert status == 200, answer
    assert all(set(s) == {"name", "value"} for s in body["secrets"])  # no events or images
    return {s["name"]: s["value"] for s in body["secrets"]}


@pytest.mark.process
def test_both_signers_hold_the_key_the_server_reads(woodpecker: Woodpecker) -> None:
    assert woodpecker.public_pem() == PyWoodpecker(SEED).public_pem()
    assert woodpecker.public_pem().startswith(b"-----BEGIN PUBLIC KEY-----\n")


def test_a_push_on_the_protected_branch_gets_what_its_rules_give(
    server: Server, woodpecker: Woodpecker
) -> None:
    assert names(secrets(server, woodpecker)) == {"deploy_key": "deploy-hunter2", "npm_token": "npm-hunter2"}
    assert names(secrets(server, woodpecker, branch="feature/x")) == {"npm_token": "npm-hunter2"}
    assert names(secrets(server, woodpecker, event="tag", branch="")) == {"npm_token": "npm-hunter2"}


def test_a_pull_request_reads_only_what_a_rule_naming_pull_requests_gives(
    server: Server, woodpecker: Woodpecker
) -> None:
    """Its branch is its target: a pull request into main is not a push to main."""
    assert names(secrets(server, woodpecker, event="pull_request")) == {"test_token": "test-hunter2"}
    assert secrets(server, woodpecker, event="pull_request_closed") == (204, "")


def test_a_fork_pull_request_reads_only_what_fork_rules_give(server: Server, woodpecker: Woodpecker) -> None:
    fork = names(secrets(server, woodpecker, event="pull_request", fork=True))
    assert fork == {"public_token": "public-hunter2"}


def test_no_rule_for_the_pipeline_is_204(server: Server, woodpecker: Woodpecker) -> None:
    assert secrets(server, woodpecker, repo="someone/else") == (204, "")
    assert secrets(server, woodpecker, event="push", fork=True) == (204, "")  # a fork's push: no fork rule


def test_the_guard_and_the_stores_answer_as_for_every_door(server: Server, woodpecker: Woodpecker) -> None:
    status, message = secrets(server, woodpecker, event="manual")
    assert status == 403 and "'aws-sm:elsewhere/thing#x'" in message and "hunter2" not in message
    # A store failure is a 5xx, which Woodpecker sends again with the same
    # signature within the second: not a replay, since nothing was given.
    body = pipeline_body(event="cron")
    answers = woodpecker.send(url(server), body, times=2)
    assert [status for status, _ in answers] == [answers[0][0]] * 2 and answers[0][0] >= 500


def test_a_signature_by_another_key_is_refused(server: Server) -> None:
    ((status, text),) = PyWoodpecker(OTHER_SEED).send(url(server), pipeline_body())
    assert (status, text) == (
        400,
        "Invalid Signature: it does not verify with woodpecker.public_key_file's key\n",
    )


def test_a_tampered_body_is_refused(server: Server, woodpecker: Woodpecker) -> None:
    # Signed for a push to feature/x, sent as a push to main.
    sent = json.dumps(pipeline_body()) + "\n"
    ((status, text),) = woodpecker.send(url(server), pipeline_body(branch="feature/x"), send_body=sent)
    assert (status, text) == (400, "Invalid Signature: Content-Digest is not the body's\n")


@pytest.mark.parametrize(
    ("offset", "said"),
    [(-400, r"made (399|40\d) s ago"), (400, r"made (39\d|400) s ahead of this server's clock")],
)
def test_a_created_time_out_of_the_window_is_refused(
    server: Server, woodpecker: Woodpecker, offset: int, said: str
) -> None:
    """``created`` is whole seconds, so the age said is the offset give or take one."""
    ((status, text),) = woodpecker.send(url(server), pipeline_body(), created_offset=offset)
    assert status == 400 and re.search(said, text) and "server.clock_skew_seconds (300 s)" in text
    assert "hunter2" not in text


def test_a_replayed_request_is_refused(server: Server, woodpecker: Woodpecker) -> None:
    first, again = woodpecker.send(url(server), pipeline_body(), times=2)
    assert first[0] == 200 and "deploy-hunter2" in first[1]
    assert again == (400, "Invalid Signature: this signature was already used (a replay)\n")


def test_a_request_signed_before_the_server_started_is_refused(
    tmp_path: Path, moto_endpoint: str, secretsmanager: Any
) -> None:
    """The spent signatures are kept in memory: after a restart, a request
    answered before it could be sent again within the window (hostile
    review of issue 25). So a signature made before the server started,
    or in the second it started, is refused."""
    woodpecker = PyWoodpecker(SEED)
    running = woodpecker_server(tmp_path, moto_endpoint, secretsmanager)
    with running:
        data, headers = woodpecker.signed(urlsplit(url(running)).path, pipeline_body())
        first = post(running, data, headers)
        assert first[0] == 200 and "deploy-hunter2" in first[1]
        assert running.terminate() == 0
        running.start()
        before = running.log_mark()
        status, text = post(running, data, headers)
        assert (status, text) == (
            400,
            "Invalid Signature: it was made before this server started (a request from before a"
            " restart, sent again; or the Woodpecker server's clock is behind this one's: NTP)\n",
        )
        (line,) = running.logged(before, 1)
        assert (line["status"], line["outcome"]) == (400, "stale-signature")
        fresh = woodpecker.signed(urlsplit(url(running)).path, pipeline_body())
        assert post(running, *fresh)[0] == 200


def test_only_the_endpoint_with_its_token_answers(server: Server, woodpecker: Woodpecker) -> None:
    """Woodpecker signs the path and query, not the host: a request it
    signs for any URL with the door's path verifies here, such as one for
    a repository's own config or registry extension, whose URL that
    repository's admins set to a host of theirs (hostile review of issue
    25). Only the operator's token in the path, which such a request
    cannot carry, is answered; a request without it is told no more than
    a path that does not exist, and the token is never logged."""
    before = server.log_mark()
    door = f"http://127.0.0.1:{server.port}/woodpecker/secrets"
    for elsewhere in (
        door,
        f"{door}?token={ENDPOINT_TOKEN}",
        f"{door}/{ENDPOINT_TOKEN[:-1]}",
        f"{door}/{ENDPOINT_TOKEN}x",
        f"{door}/{'0' * 64}",
    ):
        assert woodpecker.send(elsewhere, pipeline_body()) == [(404, "Not Found\n")], elsewhere
    wrong_method = server.get(f"/woodpecker/secrets/{ENDPOINT_TOKEN}")
    assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "POST")
    assert names(secrets(server, woodpecker)) == {"deploy_key": "deploy-hunter2", "npm_token": "npm-hunter2"}
    lines = server.logged(before, 7)
    assert [(line["path"], line["status"], line["outcome"]) for line in lines] == [
        ("/woodpecker/secrets", 404, "no-such-path"),
        ("/woodpecker/secrets", 404, "no-such-path"),
        ("/woodpecker/secrets/{token}", 404, "no-such-path"),
        ("/woodpecker/secrets/{token}", 404, "no-such-path"),
        ("/woodpecker/secrets/{token}", 404, "no-such-path"),
        ("/woodpecker/secrets/{token}", 405, "wrong-method"),
        ("/woodpecker/secrets/{token}", 200, "ok"),
    ]
    assert "repo" not in lines[2]  # refused before anything of the request was read
    assert ENDPOINT_TOKEN not in "".join(server.stdout) + "".join(server.stderr)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"netrc": None}, "a null netrc"),
        ({"configuration": [{"name": ".woodpecker.yaml", "data": "steps: []\n"}]}, "configuration"),
    ],
)
def test_a_request_shaped_for_the_config_extension_is_refused(
    server: Server, woodpecker: Woodpecker, change: dict[str, Any], said: str
) -> None:
    """Woodpecker's config extension always sends netrc (null when it is
    off) and the pipeline's configuration files; its secret extension sends
    netrc only when it is on, and never configuration (its
    server/services/config/http.go and secret/http.go). Such a body, even
    signed for this door's URL, is not a secret request."""
    ((status, text),) = woodpecker.send(url(server), {**pipeline_body(), **change})
    assert (status, text) == (
        400,
        f"Invalid Input: the body carries {said}, as Woodpecker's config extension's request does"
        " and its secret extension's never does\n",
    )


def test_a_signed_body_that_is_not_a_pipeline_is_400(server: Server, woodpecker: Woodpecker) -> None:
    body = pipeline_body()
    del body["repo"]["full_name"]
    ((status, text),) = woodpecker.send(url(server), body)
    assert (status, text) == (400, "Invalid Input: full_name is missing\n")


def test_a_lone_surrogate_is_400_naming_the_field_and_logged(server: Server) -> None:
    """JSON may escape half of a surrogate pair, which is no text (Go's
    encoder never writes one, so only the signer written here sends it):
    refused where the field is read, and logged like any refusal, never a
    traceback and a bare 500 after the stores were read."""
    before = server.log_mark()
    ((status, text),) = PyWoodpecker(SEED).send(url(server), pipeline_body(branch="\ud800"))
    assert (status, text) == (
        400,
        "Invalid Input: branch holds a lone surrogate (\\ud800 to \\udfff), which is not text\n",
    )
    (line,) = server.logged(before, 1)
    assert (line["status"], line["outcome"]) == (400, "invalid-input")
    assert "Traceback" not in "".join(server.stderr)


def test_a_body_over_the_limit_is_refused_before_it_is_read(server: Server, woodpecker: Woodpecker) -> None:
    """A pull request that changes many files makes a large body."""
    files = [f"src/module_{n:05d}/file.py" for n in range(4000)]
    ((status, text),) = woodpecker.send(url(server), pipeline_body(changed_files=files))
    assert status == 413 and "65536 bytes" in text


def test_the_access_log_names_the_pipeline_never_a_value_or_the_netrc(
    server: Server, woodpecker: Woodpecker
) -> None:
    before = server.log_mark()
    secrets(server, woodpecker, branch="main")
    PyWoodpecker(OTHER_SEED).send(url(server), pipeline_body())
    ok, refused = server.logged(before, 2)
    assert (ok["path"], ok["status"], ok["outcome"], ok["names"]) == (
        "/woodpecker/secrets/{token}",
        200,
        "ok",
        2,
    )
    assert (ok["repo"], ok["event"], ok["branch"], ok["fork"]) == ("acme/web", "push", "main", False)
    assert (refused["status"], refused["outcome"]) == (400, "bad-signature")
    everything = "".join(server.stdout) + "".join(server.stderr)
    assert not [value for value in VALUES if value in everything]
    assert ENDPOINT_TOKEN not in everything


def test_a_key_file_that_is_not_an_ed25519_public_key_does_not_start(
    tmp_path: Path, moto_endpoint: str
) -> None:
    """A common slip: the server's own TLS key or an RSA key in its place."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_file = tmp_path / "woodpecker.pem"
    key_file.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    token_file = write_secret(tmp_path / "endpoint-token", ENDPOINT_TOKEN)
    body = aws_config(moto_endpoint) + woodpecker_section(key_file, token_file) + RULES
    config, port = server_config(tmp_path, body)
    with pytest.raises(RuntimeError, match=r"does not hold an ed25519 public key in PEM: write what your"):
        Server(config, port).start()


@pytest.mark.parametrize(
    ("token", "mode", "said"),
    [
        ("a/b" + "c" * 40, 0o600, "must hold one token of letters, digits, - and _"),
        ("short", 0o600, "it needs at least 32"),
        (ENDPOINT_TOKEN, 0o644, "is readable by everyone"),
    ],
)
def test_an_endpoint_token_that_cannot_serve_does_not_start(
    tmp_path: Path, moto_endpoint: str, token: str, mode: int, said: str
) -> None:
    key_file = tmp_path / "woodpecker.pem"
    key_file.write_bytes(PyWoodpecker(SEED).public_pem())
    token_file = write_secret(tmp_path / "endpoint-token", token)
    Path(token_file).chmod(mode)
    body = aws_config(moto_endpoint) + woodpecker_section(key_file, token_file) + RULES
    config, port = server_config(tmp_path, body)
    with pytest.raises(RuntimeError, match=re.escape(said)):
        Server(config, port).start()


@pytest.mark.long
def test_a_stuck_store_is_answered_before_woodpecker_gives_up(tmp_path: Path, secretsmanager: Any) -> None:
    """Woodpecker's client gives up at 10 s and tries again: with the
    server's default request_seconds (10) its 504 came after that, never
    seen. The door keeps 8 s, and says so."""
    from support.netutil import HangingServer

    with HangingServer() as stuck, woodpecker_server(tmp_path, stuck.url, secretsmanager) as running:
        status, text = secrets(running, PyWoodpecker(SEED), branch="main", event="push")
    assert status == 504 and "no answer within the server's 8 s deadline" in text, (status, text)
