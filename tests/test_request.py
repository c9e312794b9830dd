"""The environment Nomad passes: identity, job options, everything else refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_secrets.core.request import Identity, parse_environment
from nomad_secrets.process.errors import RequestError


def test_identity_and_region() -> None:
    identity, options = parse_environment(
        {
            "CPI_OPERATION": "fetch",
            "AWS_REGION": "eu-west-1",
            "NOMAD_JOB_ID": "web",
            "NOMAD_NAMESPACE": "prod",
        }
    )
    assert identity == Identity(namespace="prod", job_id="web")
    assert options.region == "eu-west-1"


def test_older_nomad_has_no_identity() -> None:
    assert parse_environment({"CPI_OPERATION": "fetch"})[0] == Identity(namespace=None, job_id=None)


@pytest.mark.parametrize(
    "key", ["AWS_ACCESS_KEY_ID", "VAULT_ADDR", "HTTPS_PROXY", "PYTHONPATH", "PATH", "HOME"]
)
def test_other_keys_are_refused_by_name(key: str) -> None:
    with pytest.raises(RequestError, match=repr(key)):
        parse_environment({key: "x"})


def test_python_locale_coercion_and_future_nomad_keys_are_ignored() -> None:
    parse_environment({"LC_CTYPE": "C.UTF-8", "NOMAD_SOMETHING_NEW": "1"})
    with pytest.raises(RequestError, match="LC_CTYPE"):
        parse_environment({"LC_CTYPE": "tr_TR.ISO-8859-9"})


@pytest.mark.parametrize("region", ["us-east-2", "us-gov-west-1", "cn-north-1", "ap-southeast-4"])
def test_regions(region: str) -> None:
    assert parse_environment({"AWS_REGION": region})[1].region == region


@pytest.mark.parametrize("region", ["", "US-EAST-1", "us-east-1.evil.com", "localhost:80/x", "us-east-1\n"])
def test_bad_regions(region: str) -> None:
    with pytest.raises(RequestError, match="AWS_REGION"):
        parse_environment({"AWS_REGION": region})


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=20), max_size=6))
def test_any_environment_parses_or_fails_cleanly(env: dict[str, str]) -> None:
    try:
        parse_environment(env)
    except RequestError as exc:
        assert exc.message
