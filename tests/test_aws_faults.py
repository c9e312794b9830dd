"""What AWS never answers, and endpoints botocore cannot use, through the
built executable as Nomad runs it: aws_double.NotAws (a test double) where
aws.endpoint_url points. Each failure is one error object that names the
reference, or the config key, and says what to do: exit 0, nothing on
stderr, no traceback, no internal error."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, write_config
from support import nomad as nomad_module
from support.aws_double import NotAws
from support.nomad import Fetched, NomadClient, PluginRun
from test_check import check

LABELS = {
    "x": "AWS Secrets Manager",
    "aws-ssm:/x": "AWS SSM Parameter Store",
    "aws-ssm:/x/": "AWS SSM Parameter Store",
}
NOT_AWS = (
    "the endpoint's answer is not an AWS answer (an error page?);"
    " check aws.endpoint_url and any proxy in between"
)
TOO_LARGE = (
    "the endpoint's answer is larger than 4194304 bytes, more than any AWS answer;"
    " check aws.endpoint_url and any proxy in between"
)
GIB = 1024 * 1024 * 1024


def failed_with(fetched: Fetched, message: str) -> None:
    """The whole answer: one error object, nothing else, as Nomad reads it."""
    assert fetched.run.returncode == 0 and not fetched.run.terminated
    assert fetched.run.stderr == b""
    assert json.loads(fetched.run.stdout) == {"result": {}, "error": message}
    assert not fetched.ok and fetched.plugin_error == message


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (partial(NotAws, b"{}"), NOT_AWS),
        (partial(NotAws, b'{"Parameter": {}, "Parameters": [{}]}'), NOT_AWS),
        (
            partial(NotAws, b"\xff\xfe\x00\x89PNG"),
            NOT_AWS,
        ),  # not UTF-8: was internal error (UnicodeDecodeError)
        (partial(NotAws, b"\xff\xfe\x00\x89PNG", 500), NOT_AWS),
        # Closed unanswered (botocore: response=None): was internal error (AttributeError).
        (
            partial(NotAws, None),
            "cannot reach the AWS endpoint; check aws.endpoint_url and the node's network",
        ),
        (
            partial(NotAws, b'{"__type": "InternalFailure", "message": "boom"}', 500),
            "the endpoint failed with HTTP 500 (AWS said InternalFailure: boom);"
            " retry; if it lasts, check aws.endpoint_url and any proxy in between",
        ),
    ],
    ids=["empty", "wrong-shape", "binary", "binary-500", "closed", "5xx"],
)
@pytest.mark.parametrize("path", list(LABELS))
def test_an_answer_that_is_not_aws(
    nomad: NomadClient, answer: Callable[[], NotAws], message: str, path: str
) -> None:
    with answer() as double:
        write_config(nomad.plugin_dir, aws_config(double.url))
        fetched = nomad.fetch("aws", path)
    failed_with(fetched, f"{path!r} ({LABELS[path]}): {message}")


_PEAK = """
import pickle, resource, sys
sys.path.insert(0, sys.argv[1])
from support.nomad import run_plugin
args, kwargs = pickle.load(sys.stdin.buffer)
run = run_plugin(*args, **kwargs)
pickle.dump((run, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024), sys.stdout.buffer)
"""


@pytest.fixture
def peak_rss(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every plugin run of the test goes through a Python whose only child is
    the plugin (run exactly as before: tests/support/nomad.py's run_plugin), so that
    its RUSAGE_CHILDREN peak is the plugin's own; the peaks, in bytes."""
    peaks: list[int] = []

    def run_plugin(*args: Any, **kwargs: Any) -> PluginRun:
        child = subprocess.run(
            [sys.executable, "-c", _PEAK, str(Path(__file__).parent)],
            input=pickle.dumps((args, kwargs)),
            capture_output=True,
            check=True,
        )
        run, peak = pickle.loads(child.stdout)
        peaks.append(peak)
        return run  # type: ignore[no-any-return]

    monkeypatch.setattr(nomad_module, "run_plugin", run_plugin)
    return peaks


@pytest.mark.parametrize(
    "answer",
    [
        partial(NotAws, b"{", stream=2 * GIB, framing="length"),  # refused at the headers
        partial(
            NotAws, b"{", length=2 * GIB
        ),  # says 2 GiB, sends 1 byte: refused at the headers all the same
        partial(NotAws, b"{", stream=2 * GIB, framing="chunked"),  # no length: counted as read
        partial(NotAws, b"{", stream=2 * GIB, framing="close"),
    ],
    ids=["content-length", "content-length-lies", "chunked", "until-close"],
)
@pytest.mark.parametrize("path", ["x", "aws-ssm:/x/"])
def test_an_oversized_answer_is_refused_in_bounded_memory(
    nomad: NomadClient, peak_rss: list[int], answer: Callable[[], NotAws], path: str
) -> None:
    """The plugin used to read all of it: 2 GiB took 4.7 GB of memory until
    the deadline."""
    with answer() as double:
        write_config(nomad.plugin_dir, aws_config(double.url))
        fetched = nomad.fetch("aws", path)
    failed_with(fetched, f"{path!r} ({LABELS[path]}): {TOO_LARGE}")
    assert peak_rss[0] < 200 * 1024 * 1024, f"the plugin's peak RSS: {peak_rss[0] / 2**20:.0f} MiB"
    assert double.connections == 1  # not retried: it would send as much again
    assert double.sent < 64 * 1024 * 1024  # the plugin stopped reading near the bound


def test_a_large_aws_answer_is_read(nomad: NomadClient, secretsmanager: Any) -> None:
    """The bound leaves room: the largest secret AWS keeps (64 KiB), all of it
    control characters, which JSON escapes to six bytes each."""
    name, value = "largest-" + uuid.uuid4().hex[:8], "\x01" * 65536
    secretsmanager.create_secret(Name=name, SecretString=value)
    assert nomad.fetch("aws", name).result == {"value": value}


HOW = (
    "; write https:// or http://, a host name or address (IPv6 in [ ]) and, if needed,"
    " a port and a path, such as https://{service}.us-east-2.amazonaws.com or http://127.0.0.1:4566"
)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://[::1", "is not a URL (check the [ ] around an IPv6 address)"),
        ("ftp://x", "must start with https:// or http://"),
        ("127.0.0.1:4566", "must start with https:// or http://"),
        ("http://127.0.0.1:99999", "has a port that is not a number from 1 to 65535"),
        ("http://127.0.0.1:x", "has a port that is not a number from 1 to 65535"),
        ("http://127.0.0.1:4566/?a=b", "has a query (?) or a fragment (#)"),
        ("http://a b", "has no host name or address that botocore accepts"),
        ("http://", "has no host name or address that botocore accepts"),
    ],
    ids=["ipv6-unclosed", "ftp", "no-scheme", "port-99999", "port-x", "query", "space", "no-host"],
)
def test_a_bad_endpoint_url_names_its_key(nomad: NomadClient, url: str, problem: str) -> None:
    """Was internal error (ValueError), or failed (HTTPClientError) for ftp://."""
    write_config(nomad.plugin_dir, aws_config(url))
    failed_with(
        nomad.fetch("aws", "x"),
        f"aws.endpoint_url in the config {problem}" + HOW.format(service="secretsmanager"),
    )


@pytest.mark.parametrize(
    ("extra", "name", "key"),
    [
        ('[aws.endpoint_urls]\nssm = "http://[::1"\n', "aws", "aws.endpoint_urls.ssm"),
        (
            '[providers.p2]\nstore = "aws-ssm"\nendpoint_url = "http://[::1"\n',
            "p2",
            "providers.p2.endpoint_url",
        ),
    ],
    ids=["endpoint_urls", "provider"],
)
def test_the_key_named_is_the_one_used(
    nomad: NomadClient, artifact: Path, moto_endpoint: str, extra: str, name: str, key: str
) -> None:
    (nomad.plugin_dir / "secrets" / "p2").symlink_to(artifact)
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, extra))
    failed_with(
        nomad.fetch(name, "aws-ssm:/x"),
        f"{key} in the config is not a URL (check the [ ] around an IPv6 address)"
        + HOW.format(service="ssm"),
    )


def test_check_names_a_providers_own_bad_endpoint_url(
    plugin_dir: Path, artifact: Path, moto_endpoint: str
) -> None:
    """A provider's own endpoint_url is named as its own, as fetch names it."""
    (plugin_dir / "secrets" / "team").symlink_to(artifact)
    own = '[providers.team]\nstore = "aws-sm"\nendpoint_url = "http://[::1"\n'
    write_config(plugin_dir, aws_config(moto_endpoint, own))
    code, out = check(plugin_dir)
    assert code == 1
    assert "providers.team.endpoint_url in the config is not a URL" in out, out


def test_check_names_a_bad_endpoint_url(plugin_dir: Path) -> None:
    """check used to end in a traceback (ValueError) at the store probe."""
    write_config(plugin_dir, aws_config("http://[::1"))
    code, out = check(plugin_dir)
    assert code == 1
    assert (
        "PROBLEM  AWS for aws (region us-east-2, endpoint http://[::1, static keys from the config):"
        " aws.endpoint_url in the config is not a URL (check the [ ] around an IPv6 address)"
        + HOW.format(service="sts")
    ) in out
