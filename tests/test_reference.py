"""The path grammar, including property tests: any input gives references
or a RequestError, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_secrets.core.reference import MAX_PATH_BYTES, Reference, parse_path, parse_reference
from nomad_secrets.process.errors import RequestError


def test_plain_name_has_no_scheme() -> None:
    assert parse_path("my-aws-secret") == [
        Reference(text="my-aws-secret", scheme=None, locator="my-aws-secret")
    ]


def test_scheme_options_selector() -> None:
    ref = parse_reference("aws-sm:prod/db?version_stage=AWSPREVIOUS#/creds/password")
    assert (ref.scheme, ref.locator, ref.selector) == ("aws-sm", "prod/db", "/creds/password")
    assert ref.options == (("version_stage", "AWSPREVIOUS"),)


def test_arn_without_scheme_keeps_its_colons() -> None:
    arn = "arn:aws:secretsmanager:us-east-2:123456789012:secret:prod/db-AbCdEf"
    ref = parse_reference(arn)
    assert ref.scheme is None and ref.locator == arn


def test_ssm_version_suffix_stays_in_the_locator() -> None:
    ref = parse_reference("aws-ssm:/app/db/password:3")
    assert ref.scheme == "aws-ssm" and ref.locator == "/app/db/password:3"


def test_multi_line_path() -> None:
    refs = parse_path("# database\n\ndb = aws-sm:prod/db\n  api_key = vault:kv/app#key  \n")
    assert [(r.name, r.scheme, r.locator, r.selector) for r in refs] == [
        ("db", "aws-sm", "prod/db", None),
        ("api_key", "vault", "kv/app", "key"),
    ]


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("db = x\ndb = y\n", "used twice"),
        ("1db = x\n", "is not a NAME"),
        ("# only a comment\n", "no reference"),
        ("x?a=1&a=2", "twice"),
        ("x?A=1", "malformed option"),
        ("x" * (MAX_PATH_BYTES + 1), "longer than"),
        ("x\ty", "control character"),
        ("".join(f"n{i} = x\n" for i in range(65)), "at most 64"),
    ],
)
def test_malformed(path: str, needle: str) -> None:
    with pytest.raises(RequestError, match=needle):
        parse_path(path)


def test_error_quotes_hostile_text_escaped_and_short() -> None:
    with pytest.raises(RequestError) as info:
        parse_path("x" * 500 + "\x1b[31m")
    assert "\x1b" not in info.value.message and len(info.value.message) < 400


@given(st.text(max_size=300))
def test_any_text_parses_or_fails_cleanly(path: str) -> None:
    try:
        refs = parse_path(path)
    except RequestError as exc:
        assert exc.message
        return
    assert refs and all(r.locator for r in refs)
    assert all("?" not in r.locator and "#" not in r.locator for r in refs)
