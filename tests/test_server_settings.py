"""The server's sections: each key checked with a message that names it,
and every server config the docs and examples show is valid as written."""

from __future__ import annotations

import re
from pathlib import Path

import hcl2
import pytest
from conftest import ROOT
from test_examples import fenced, hcl_string

from nomad_secrets.core import config
from nomad_secrets.core.policy import Caller, check
from nomad_secrets.process.errors import ConfigError
from nomad_secrets.serve.settings import DRONE_PLACEHOLDERS, Settings, parse_settings

SERVER = '[server]\nlisten = "0.0.0.0:8443"\nplain_http = true\n'
DRONE = '[drone]\nsecret_file = "/s"\n[[drone.policy]]\nrepo = "acme/*"\nallow = ["aws-sm:ci/{repo}/**"]\n'
ADMISSION = '[admission]\nsecret_file = "/s"\n'
GITHUB = ADMISSION + '[admission.github]\ntoken_file = "/t"\n'
BITBUCKET = '[bitbucket]\nissuer = "https://i"\naudience = "a"\n'
WOODPECKER = '[woodpecker]\npublic_key_file = "/k.pem"\nendpoint_token_file = "/t"\n'
WOODPECKER_RULE = '[[woodpecker.rule]]\nrepo = "acme/*"\nsecrets = { token = "aws-sm:ci/x#token" }\n'


def settings(text: str) -> Settings:
    return parse_settings(config.parse(text.encode(), "t.toml"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "nothing to serve"),
        ('[server]\nplain_http = true\nlisten = "8443"\n' + DRONE, "server.listen in t.toml is '8443'"),
        ("[server]\n" + DRONE, "has no TLS"),
        ('[server]\ntls_cert = "/c"\n' + DRONE, "go together"),
        ('[server]\ntls_cert = "/c"\ntls_key = "/k"\nplain_http = true\n' + DRONE, "contradicts"),
        (SERVER + 'store = "s3"\n' + DRONE, "server.store in t.toml is 's3'"),
        (SERVER + "request_seconds = 0\n" + DRONE, "server.request_seconds in t.toml is 0"),
        (SERVER + "max_body_bytes = 10\n" + DRONE, "server.max_body_bytes"),
        (SERVER + "colour = 1\n" + DRONE, "unknown key 'server.colour'"),
        (SERVER + '[drone]\nsecret_file = "/s"\n', r"no [[drone.policy]]"),
        (SERVER + '[drone]\nsecret = "x"\n', "unknown key 'drone.secret'"),
        (SERVER + DRONE.replace('repo = "acme/*"', "fork = 1"), "fork in t.toml must be true or false"),
        (
            SERVER + DRONE.replace("{repo}/**", "{repo}-x/**"),
            "fills 2 segments, so it must stand alone",
        ),
        (SERVER + DRONE.replace("{repo}", "{job}"), "the placeholders here are {repo}"),
        (
            SERVER + DRONE.replace('repo = "acme/*"', 'namespace = "x"'),
            "key 'drone.policy #1.namespace'",
        ),
        (SERVER + ADMISSION + "", "admits no one"),
        (
            SERVER + ADMISSION + 'logins = "x"\n',
            "admission.logins in t.toml must be a list",
        ),
        (
            SERVER + GITHUB + "",
            "names no orgs, teams or admin_teams",
        ),
        (
            SERVER
            + '[admission]\nsecret_file = "/s"\n[admission.github]\ntoken_file = "/t"\nteams = ["acme"]\n',
            "is not org/team-slug",
        ),
        (SERVER + BITBUCKET + "", r"no [[bitbucket.rule]]"),
        (SERVER + '[bitbucket]\nissuer = "i"\naudience = "a"\n', "bitbucket.issuer in t.toml is 'i'"),
        (
            SERVER + BITBUCKET + '[[bitbucket.rule]]\nsecrets = { "A-B" = "x" }\n',
            "is not a variable name",
        ),
        (
            SERVER + BITBUCKET + '[[bitbucket.rule]]\nsecrets = { A = "x#" }\n',
            "bitbucket.rule #1.secrets.A in t.toml: the reference 'x#' has an empty #selector",
        ),
        (SERVER + DRONE + '[vault]\nauth_method = "jwt"\n', "logs in with a Nomad job's token"),
        (
            SERVER
            + '[drone]\nsecret_file = "/s"\n[[drone.policy]]\nallow = ["aws-sm:ci/**"]\nrepo = "acme/prod"\n',
            "drone.policy #1 in t.toml: write allow last, after repo, so that a file cut short",
        ),
        (SERVER + DRONE + '[aws]\nweb_identity_role_arn = "arn:x"\n', "needs a Nomad job's token"),
        (
            SERVER + "max_connections = 100\nmax_connections_per_peer = 26\n" + DRONE,
            "server.max_connections_per_peer in t.toml is 26, more than a quarter of"
            " server.max_connections (100): two addresses could hold half of all connections",
        ),
        (SERVER + WOODPECKER, r"no [[woodpecker.rule]]"),
        (
            SERVER + '[woodpecker]\npublic_key = "/k"\n' + WOODPECKER_RULE,
            "unknown key 'woodpecker.public_key'",
        ),
        (
            SERVER + '[woodpecker]\nendpoint_token_file = "/t"\n' + WOODPECKER_RULE,
            "woodpecker.public_key_file is missing",
        ),
        (
            SERVER + '[woodpecker]\npublic_key_file = "/k.pem"\n' + WOODPECKER_RULE,
            "woodpecker.endpoint_token_file is missing in t.toml: the door answers only at"
            " /woodpecker/secrets/<the token in that file>",
        ),
        (
            SERVER + WOODPECKER + WOODPECKER_RULE.replace('repo = "acme/*"', 'fork = "yes"'),
            "woodpecker.rule.fork in t.toml must be true or false",
        ),
        (
            SERVER + WOODPECKER + WOODPECKER_RULE.replace("repo =", "pipeline ="),
            "unknown key 'woodpecker.rule #1.pipeline'",
        ),
        (
            SERVER + WOODPECKER + WOODPECKER_RULE + '[[woodpecker.policy]]\nallow = ["aws-sm:ci/{job}/*"]\n',
            "the placeholders here are {repo}",
        ),
    ],
)
def test_each_mistake_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(text)
    assert message in raised.value.message


def test_a_peers_share_is_a_quarter_of_all_connections_unless_set() -> None:
    assert settings(SERVER + DRONE).server.max_connections_per_peer == 256
    assert settings(SERVER + "max_connections = 100\n" + DRONE).server.max_connections_per_peer == 25
    assert settings(SERVER + "max_connections = 2\n" + DRONE).server.max_connections_per_peer == 1
    assert settings(SERVER + "max_connections = 9000\n" + DRONE).server.max_connections_per_peer == 256
    shared = SERVER + "max_connections = 100\nmax_connections_per_peer = 25\n" + DRONE
    assert settings(shared).server.max_connections_per_peer == 25


def test_drone_rules_deny_forks_unless_they_say_so() -> None:
    parsed = settings(SERVER + DRONE + '[[drone.policy]]\nfork = true\nallow = ["aws-sm:ci/public/*"]\n')
    assert parsed.drone is not None
    own, forks = parsed.drone.policy
    assert own.when == (("repo", "acme/*"), ("fork", "false"))
    assert forks.when == (("fork", "true"),)

    def caller(fork: str) -> Caller:
        fields = (("repo", "acme/web"), ("event", "pull_request"), ("branch", "main"), ("fork", fork))
        return Caller(fields=fields, placeholders=DRONE_PLACEHOLDERS)

    check(parsed.drone.policy, caller("false"), "aws-sm", "ci/acme/web/x", "x")
    check(parsed.drone.policy, caller("true"), "aws-sm", "ci/public/x", "x")
    with pytest.raises(Exception, match=r"does not let repo 'acme/web'.* fork 'true'"):
        check(parsed.drone.policy, caller("true"), "aws-sm", "ci/acme/web/x", "x")


def test_woodpecker_rules_deny_forks_unless_they_say_so() -> None:
    parsed = settings(
        SERVER + WOODPECKER + WOODPECKER_RULE + WOODPECKER_RULE.replace("repo =", "fork = true\nrepo =")
    )
    assert parsed.woodpecker is not None and parsed.woodpecker.policy is None
    own, forks = parsed.woodpecker.rules
    assert own.when == (("repo", "acme/*"), ("fork", "false"))
    assert forks.when == (("repo", "acme/*"), ("fork", "true"))
    assert own.secrets[0].name == "token"


def test_bitbucket_uuids_are_matched_without_braces_or_case() -> None:
    text = (
        SERVER
        + '[bitbucket]\nissuer = "https://i"\naudience = "a"\n'
        + '[[bitbucket.rule]]\nrepository = "{ABC-1}"\nsecrets = { A = "aws-sm:x#y" }\n'
    )
    parsed = settings(text)
    assert parsed.bitbucket is not None
    assert parsed.bitbucket.rules[0].when == (("repository", "abc-1"),)
    assert parsed.bitbucket.rules[0].secrets[0].name == "A"
    assert parsed.bitbucket.policy is None


def server_configs() -> list[tuple[str, str]]:
    """Every server config shown: the docs' ```toml blocks with a server
    section, examples/ci/*.toml, and the config inside examples/ci's job."""
    found = [
        (w, t)
        for w, t in fenced("toml")
        if re.search(r"^\[(server|drone|admission|bitbucket|woodpecker)", t, re.M)
    ]
    found += [(p.name, p.read_text()) for p in sorted((ROOT / "examples" / "ci").glob("*.toml"))]
    for job in sorted((ROOT / "examples" / "ci").glob("*.hcl")):
        for number, template in enumerate(re.findall(r"<<-?EOT\n(.*?)EOT", job.read_text(), re.S)):
            if "[server]" in template:
                found.append((f"{job.name}#template{number + 1}", template))
    return found


CONFIGS = server_configs()


def test_the_docs_show_each_set_up() -> None:
    shown = "\n".join(text for _, text in CONFIGS)
    for section in (
        "[drone]",
        "[admission]",
        "[bitbucket]",
        "[woodpecker]",
        "[[drone.policy]]",
        "[[bitbucket.rule]]",
        "[[woodpecker.rule]]",
    ):
        assert section in shown
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize(("where", "text"), CONFIGS, ids=[w for w, _ in CONFIGS])
def test_server_configs_shown_are_valid(where: str, text: str) -> None:
    # Nomad's template syntax ({{ ... }}) renders before serve reads the file.
    rendered = re.sub(r"\{\{[^}]*\}\}", "127.0.0.1:8443", text)
    parsed = settings(rendered)
    assert parsed.drone or parsed.admission or parsed.bitbucket or parsed.woodpecker


def test_the_nomad_job_runs_several_checked_instances_with_tls_from_variables() -> None:
    (job_file,) = (ROOT / "examples" / "ci").glob("*.nomad.hcl")
    text = job_file.read_text()
    (job,) = hcl2.loads(text)["job"][0].values()
    (group,) = job["group"][0].values()
    assert group["count"] >= 2
    assert [hcl_string(c["operator"]) for c in group["constraint"]] == ["distinct_hosts"]
    check = group["service"][0]["check"][0]
    assert (hcl_string(check["type"]), hcl_string(check["protocol"])) == ("http", "https")
    assert hcl_string(check["path"]) == "/healthz"
    (task,) = group["task"][0].values()
    args = [hcl_string(a) for a in task["config"][0]["args"]]
    assert args[0] == "serve" and "--nomad-task" in args
    assert hcl_string(task["kill_timeout"]) == "35s"  # above the config's shutdown_seconds = 30
    destinations = {hcl_string(t["destination"]): t for t in task["template"]}
    assert set(destinations) == {
        "secrets/tls.crt",
        "secrets/tls.key",
        "secrets/drone-secret",
        "local/config.toml",
    }
    for name in ("secrets/tls.crt", "secrets/tls.key", "secrets/drone-secret"):
        assert "nomadVar" in hcl_string(destinations[name]["data"])
    for template in destinations.values():
        assert hcl_string(template["perms"]) == "0400" and template["uid"] == 65534
    assert "shutdown_seconds = 30" in hcl_string(destinations["local/config.toml"]["data"])


@pytest.mark.parametrize(("nomad_task", "flags"), [(False, ""), (True, " --nomad-task")])
def test_a_server_config_that_cannot_be_parsed_names_serves_own_check(
    tmp_path: Path, nomad_task: bool, flags: str
) -> None:
    """The plugin's message names the plugin's check, which reads no server
    config: the server's names `serve --check` with the same file."""
    from nomad_secrets.serve import settings as server_settings

    path = tmp_path / "serve.toml"
    path.write_bytes(b"[server\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as raised:
        server_settings.load(str(path), nomad_task=nomad_task)
    assert str(raised.value.message).endswith(
        f"correct it there, then run `nomad-secrets serve --config {path}{flags} --check`,"
        " which reads it the same way"
    ), raised.value.message
