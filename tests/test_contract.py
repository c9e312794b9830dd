"""The built executable under Nomad's contract: fingerprint, fetch, failures.

Every run goes through tests/support/nomad.py, which runs the plugin as Nomad's
client does and fails the test on any stderr byte after exit 0.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, aws_config, write_config
from support.netutil import HangingServer, dead_port_url
from support.nomad import NomadClient, nomad_env, run_plugin

from nomad_secrets._version import GO_VERSION

SPEC_ENV = {"AWS_REGION": "us-east-2"}  # the env block of the spec's example job


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_failed(fetched: Any, *needles: str) -> None:
    """An error object, exit 0, naming what it should (Nomad shows it)."""
    assert fetched.run.returncode == 0, fetched.run
    assert not fetched.ok
    assert fetched.result == {}
    assert json.loads(fetched.run.stdout)["result"] == {}
    assert fetched.plugin_error, fetched.run.stdout
    for needle in needles:
        assert needle in fetched.plugin_error, (needle, fetched.plugin_error)


# --- fingerprint -------------------------------------------------------------


def test_fingerprint_prints_exactly_the_version_line(nomad: NomadClient) -> None:
    fp = nomad.fingerprint("aws")
    assert fp.ok, fp
    assert fp.version == GO_VERSION
    assert fp.run.stdout == b'{"type": "secrets", "version": "%s"}\n' % GO_VERSION.encode()


def test_fingerprint_from_cpi_operation_when_argv_is_empty(nomad: NomadClient) -> None:
    run = run_plugin(nomad.executable("aws"), [], {"CPI_OPERATION": "fingerprint"})
    assert run.returncode == 0 and not run.stderr
    assert json.loads(run.stdout) == {"type": "secrets", "version": GO_VERSION}


def test_fingerprint_does_not_unpack_anything(decoder: Any, tmp_path: Path) -> None:
    from conftest import build_artifact

    cache = tmp_path / "cache"
    exe = build_artifact(tmp_path / "nomad-secrets", cache)
    run = run_plugin(exe, ["fingerprint"], {"CPI_OPERATION": "fingerprint"})
    assert decoder.decode_fingerprint(run.stdout).ok
    assert not cache.exists()


# --- fetch: success ----------------------------------------------------------


def test_spec_example_json_secret_gives_one_key_per_field(nomad: NomadClient, secretsmanager: Any) -> None:
    name = unique("my-aws-secret")
    secretsmanager.create_secret(
        Name=name, SecretString=json.dumps({"username": "app", "password": "pw", "port": 5432, "tls": True})
    )
    fetched = nomad.fetch("aws", name, SPEC_ENV)
    assert fetched.ok, fetched
    assert fetched.result == {"username": "app", "password": "pw", "port": "5432", "tls": "true"}
    assert b'"error"' not in fetched.run.stdout


def test_plain_string_secret_gives_value(nomad: NomadClient, secretsmanager: Any) -> None:
    name = unique()
    secretsmanager.create_secret(Name=name, SecretString="just text, not {json}")
    fetched = nomad.fetch("aws", name, SPEC_ENV)
    assert fetched.ok and fetched.result == {"value": "just text, not {json}"}


def test_argv_wins_over_a_forged_cpi_operation(nomad: NomadClient, secretsmanager: Any) -> None:
    name = unique()
    secretsmanager.create_secret(Name=name, SecretString="v")
    fetched = nomad.fetch("aws", name, {**SPEC_ENV, "CPI_OPERATION": "fingerprint"})
    assert fetched.ok and fetched.result == {"value": "v"}


def test_works_with_no_config_region_from_env_only(
    nomad: NomadClient, secretsmanager: Any, moto_endpoint: str
) -> None:
    config = aws_config(moto_endpoint).replace('region = "us-east-2"\n', "")
    write_config(nomad.plugin_dir, config)
    name = unique()
    secretsmanager.create_secret(Name=name, SecretString="v")
    assert nomad.fetch("aws", name, SPEC_ENV).result == {"value": "v"}
    assert_failed(nomad.fetch("aws", name, {}), "no AWS region", "AWS_REGION")


# --- fetch: every failure is an error object with exit 0 ----------------------


def test_no_path(nomad: NomadClient) -> None:
    run = run_plugin(nomad.executable("aws"), ["fetch"], nomad_env("fetch", {}, "j", "default"))
    fetched = nomad.decoder.decode_fetch(run.stdout)
    assert run.returncode == 0 and not run.stderr and not fetched.ok
    assert "no secret path" in fetched.plugin_error


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("", "empty"),
        ("a\x1b[31mb", "control character"),
        ("aws-sm:", "names no secret"),
        ("name?version_stage", "malformed option"),
        ("name?bogus=1", "unknown option 'bogus'"),
        ("name#", "empty #selector"),
        ("just one line\n", "NAME = reference"),
    ],
)
def test_malformed_path(nomad: NomadClient, path: str, needle: str) -> None:
    assert_failed(nomad.fetch("aws", path, SPEC_ENV), needle)


def test_unknown_operation(nomad: NomadClient) -> None:
    run = run_plugin(nomad.executable("aws"), ["frobnicate"], {"CPI_OPERATION": "frobnicate"})
    assert run.returncode == 0 and not run.stderr
    assert "unknown operation 'frobnicate'" in json.loads(run.stdout)["error"]


def test_not_found_names_reference_and_store(nomad: NomadClient) -> None:
    assert_failed(
        nomad.fetch("aws", "no-such-secret", SPEC_ENV), "'no-such-secret'", "AWS Secrets Manager", "not found"
    )


def test_store_down(nomad: NomadClient) -> None:
    write_config(nomad.plugin_dir, aws_config(dead_port_url()))
    assert_failed(nomad.fetch("aws", "anything", SPEC_ENV), "'anything'", "cannot reach")


def test_unknown_env_key_is_named(nomad: NomadClient) -> None:
    assert_failed(nomad.fetch("aws", "x", {**SPEC_ENV, "AWS_REGOIN": "us-east-1"}), "'AWS_REGOIN'")


def test_bad_region(nomad: NomadClient) -> None:
    assert_failed(nomad.fetch("aws", "x", {"AWS_REGION": "evil.example.com/"}), "AWS_REGION")


def test_unconfigured_provider_name(nomad: NomadClient, artifact: Path) -> None:
    (nomad.plugin_dir / "secrets" / "mystery").symlink_to(artifact)
    assert_failed(
        nomad.fetch("mystery", "x", {}), "provider 'mystery' is not configured", "[providers.mystery]"
    )


@pytest.mark.parametrize(
    ("config", "needles"),
    [
        ("[aws]\nregoin = 'x'\n", ("unknown key 'aws.regoin'", "nomad-secrets.toml")),
        ("[plugin]\ndeadline_seconds = 'soon'\n", ("plugin.deadline_seconds", "must be a number")),
        ("[aws\n", ("not valid TOML",)),
        ("[providers.vault]\nstore = 'vault'\n", ("never runs a plugin named 'vault'",)),
    ],
)
def test_config_errors_name_key_and_file(nomad: NomadClient, config: str, needles: tuple[str, ...]) -> None:
    write_config(nomad.plugin_dir, config)
    assert_failed(nomad.fetch("aws", "x", SPEC_ENV), *needles)


@pytest.mark.process
def test_crash_inside_the_code_is_an_error_object(tmp_path: Path) -> None:
    """An unexpected exception still gives Nomad an error object, exit 0,
    and no traceback; run through the same entry point as the executable."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import nomad_secrets.nomad.fetch as f\n"
        "def boom(*a, **k): raise RuntimeError('secret-looking detail')\n"
        "f.fetch = boom\n"
        "sys.argv = [sys.argv[0], 'fetch', 'x']\n"
        "from nomad_secrets.cli import run\n"
        "run()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], env={"CPI_OPERATION": "fetch"}, capture_output=True, cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stderr == b""
    error = json.loads(proc.stdout)["error"]
    assert "internal error in nomad-secrets (RuntimeError)" in error
    assert "secret-looking detail" not in error


# --- deadline and SIGTERM ------------------------------------------------------


def test_sigterm_during_a_slow_fetch_answers_before_the_kill(nomad: NomadClient, moto_endpoint: str) -> None:
    """Nomad's SIGTERM to a fetch stuck on its store: the answer and exit 0
    come before the SIGKILL (a killed run has no exit 0). How soon is
    scripts/bench's "sigterm" case."""
    with HangingServer() as hanging:
        write_config(nomad.plugin_dir, aws_config(hanging.url, "[plugin]\ndeadline_seconds = 60\n"))
        fetched = nomad.fetch("aws", "slow", SPEC_ENV, timeout=1.5)
    run = fetched.run
    assert run.terminated and run.returncode == 0, run
    assert "stopped by Nomad (SIGTERM)" in json.loads(run.stdout)["error"]


def test_deadline_answers_before_nomad_kills(nomad: NomadClient) -> None:
    with HangingServer() as hanging:
        write_config(nomad.plugin_dir, aws_config(hanging.url, "[plugin]\ndeadline_seconds = 1.5\n"))
        fetched = nomad.fetch("aws", "slow", SPEC_ENV, timeout=5)
    assert not fetched.run.terminated
    assert_failed(fetched, "'slow'", "no answer")


# --- debug log -----------------------------------------------------------------


def test_debug_log_is_private_and_holds_no_values(
    nomad: NomadClient, secretsmanager: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    log = tmp_path / "debug.log"
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, f'[plugin]\ndebug_log = "{log}"\n'))
    name = unique()
    canary = uuid.uuid4().hex
    secretsmanager.create_secret(Name=name, SecretString=json.dumps({"password": canary}))
    assert nomad.fetch("aws", name, SPEC_ENV).result == {"password": canary}
    assert_failed(nomad.fetch("aws", "missing-" + name, SPEC_ENV), "not found")
    text = log.read_text()
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    assert name in text and "fetched" in text and "NotFound" in text
    assert canary not in text


def test_the_deadline_counts_from_when_nomad_started_the_process(
    nomad: NomadClient, moto_endpoint: str
) -> None:
    """Nomad's timeout counts from its exec; the plugin's deadline did from
    when its own code ran, which under a burst of task starts came seconds
    later. A wrapper that sleeps 2 s and then execs the plugin (WRAPPER: same pid,
    same start time) stands for a slow start: with a 1.5 s deadline, spent
    before the plugin's code runs, it says the node was too busy and asks
    no store (the one here never answers: counting from its code, it would
    ask it, and say there was no answer)."""
    from conftest import aws_config, interpreter, write_config
    from support.netutil import HangingServer
    from support.nomad import nomad_env, run_plugin

    with HangingServer() as hanging:
        write_config(nomad.plugin_dir, aws_config(hanging.url, "[plugin]\ndeadline_seconds = 1.5\n"))
        run = run_plugin(
            Path(interpreter()),
            ["-I", "-S", "-c", WRAPPER, str(nomad.executable("aws")), "fetch", "x"],
            nomad_env("fetch", {"AWS_REGION": "us-east-2"}, "j", "default"),
        )
    assert run.returncode == 0 and not run.terminated, run
    said = json.loads(run.stdout)["error"]
    assert "of the plugin's 1.5 s deadline had passed before it could ask any store" in said, said


WRAPPER = "import os, sys, time; time.sleep(2); os.execv(sys.argv[1], sys.argv[1:])"
