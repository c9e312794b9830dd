"""The executable run by a person (a terminal on stdout, or --help and
--version anywhere) answers as a person expects; Nomad's calls (stdout a
pipe, `fingerprint`, `fetch <path>`) keep their exact answers."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
from support.nomad import NomadClient, nomad_env, run_plugin

from nomad_secrets._version import GO_VERSION, __version__

VERSION_LINE = f"nomad-secrets {__version__} (fingerprint version {GO_VERSION})"


def on_terminal(argv: list[str]) -> tuple[int, str, bytes]:
    """Run ``argv`` with its stdout on a pseudo-terminal, as in a shell."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env={}, cwd="/"
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, out.decode().replace("\r\n", "\n"), err


def piped(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, env={}, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def aws(plugin_dir: Path) -> str:
    return str(plugin_dir / "secrets" / "aws")


def test_no_arguments_at_a_terminal_print_usage_and_version(aws: str) -> None:
    code, out, err = on_terminal([aws])
    assert code == 2 and err == b""
    assert out.startswith(VERSION_LINE)
    assert "usage: aws <command> [options]" in out
    assert "aws fetch <path>" in out and "aws check [--format json]" in out
    assert "install --common-plugin-dir DIR" in out


def test_a_typo_at_a_terminal_says_what_was_meant(aws: str) -> None:
    code, out, _ = on_terminal([aws, "fecth", "prod/db"])
    assert code == 2
    assert out.startswith("aws: unknown command 'fecth' (did you mean 'fetch'?)")
    assert "usage: aws <command>" in out
    code, out, _ = on_terminal([aws, "chek"])
    assert code == 2 and "(did you mean 'check'?)" in out


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_anywhere(aws: str, flag: str) -> None:
    run = piped([aws, flag])
    assert run.returncode == 0 and run.stderr == b""
    assert run.stdout.decode().startswith(VERSION_LINE) and b"aws fingerprint" in run.stdout


@pytest.mark.parametrize("flag", ["--version", "-V", "version"])
def test_version_anywhere(aws: str, flag: str) -> None:
    run = piped([aws, flag])
    assert run.returncode == 0 and run.stderr == b""
    assert run.stdout.decode().startswith(VERSION_LINE)


def test_nomads_calls_keep_their_answers(aws: str, nomad: NomadClient) -> None:
    """stdout is a pipe for Nomad: no arguments and unknown operations still
    get the JSON error, with exit 0 and nothing on stderr."""
    for argv in ([aws], [aws, "fecth"]):
        run = piped(argv)
        assert run.returncode == 0 and run.stderr == b""
        answer = json.loads(run.stdout)
        assert answer["result"] == {}
        assert answer["error"].startswith("unknown operation")
        assert "Nomad runs this plugin as `fingerprint` or `fetch <path>`" in answer["error"]
        assert "`aws --help` lists its commands" in answer["error"]
    assert "(did you mean 'fetch'?)" in json.loads(piped([aws, "fecth"]).stdout)["error"]
    fingerprint = nomad.fingerprint("aws")
    assert fingerprint.ok and fingerprint.run.stdout == (
        b'{"type": "secrets", "version": "%s"}\n' % GO_VERSION.encode()
    )
    # a job's path is never a flag: `fetch --help` is a fetch of the secret
    # "--help", and so is any path that starts with "-": a JSON error object
    # that Go decodes, never the help text a person gets at a terminal
    for path in ("--help", "-h", "-x"):
        fetched = nomad.fetch("aws", path, {"AWS_REGION": "us-east-2"})
        error = fetched.plugin_error or ""
        assert not fetched.ok and f"'{path}' (AWS Secrets Manager): not found" in error, fetched
        assert "usage:" not in fetched.run.stdout.decode()
    asked = run_plugin(
        nomad.executable("aws"), ["fingerprint", "--help"], nomad_env("fingerprint", None, None, None)
    )
    assert asked.stderr == b""
    assert asked.stdout == b'{"type": "secrets", "version": "%s"}\n' % GO_VERSION.encode()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_fetch_and_fingerprint_help_at_a_terminal(aws: str, plugin_dir: Path, flag: str) -> None:
    """README and docs/troubleshooting.md: --help after any command. At a
    terminal (a person: Nomad reads a pipe) `fetch --help` is help, read
    without the config (an unusable one is no matter) or the agent."""
    (plugin_dir / "secrets" / "nomad-secrets.toml").chmod(0o666)  # a fetch would refuse it
    code, out, err = on_terminal([aws, "fetch", flag])
    assert (code, err) == (0, b""), out
    assert out.startswith("usage: aws fetch <path>\n") and "aws fetch 'prod/db#password'" in out
    assert 'piped, as Nomad runs\nit, `fetch --help` reads the secret named "--help"' in out
    code, out, err = on_terminal([aws, "fingerprint", flag])
    assert (code, err) == (0, b"") and out.startswith("usage: aws fingerprint\n"), out
    # any other path that starts with "-" is still a path there
    code, out, _ = on_terminal([aws, "fetch", "-x"])
    assert code == 0 and json.loads(out)["error"].startswith("refusing to run: the config file"), out


def test_fetch_at_a_terminal_is_still_a_fetch(aws: str) -> None:
    code, out, err = on_terminal([aws, "fetch"])
    assert code == 0 and err == b""
    assert json.loads(out)["error"].startswith("no secret path")


def test_check_help_does_not_run_the_check(aws: str, plugin_dir: Path) -> None:
    (plugin_dir / "secrets" / "nomad-secrets.toml").chmod(0o666)  # the check would fail on it
    run = piped([aws, "check", "--help"])
    assert run.returncode == 0 and run.stderr == b""
    out = run.stdout.decode()
    assert out.startswith("usage: aws check [-h] [--format {text,json}]")
    assert "files:" not in out and "PROBLEM" not in out and "result:" not in out


def test_install_help_is_plain_text(aws: str) -> None:
    run = piped([aws, "install", "--help"])
    assert run.returncode == 0 and run.stderr == b""
    out = run.stdout.decode()
    assert out.startswith("usage: aws install [-h] [--common-plugin-dir DIR]")
    assert "``" not in out and "::" not in out and "--plugin-dir" not in out
    assert "the common plugin dir: the Nomad client's common_plugin_dir" in " ".join(out.split())
