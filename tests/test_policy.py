"""The access policy: first match wins, placeholders are escaped, a missing
identity never matches a rule that needs it."""

from __future__ import annotations

import pytest

from nomad_secrets.errors import PolicyDenied
from nomad_secrets.policy import Rule, check, everyone_reads_everything
from nomad_secrets.request import Identity

WEB = Identity(namespace="default", job_id="web")
RULES = (
    Rule(namespace="payments", allow=("vault:kv/payments/*",)),
    Rule(allow=("aws-sm:nomad/{namespace}/{job}/*", "aws-ssm:/shared/*")),
)


def allowed(rules: tuple[Rule, ...] | None, identity: Identity, ref: str) -> bool:
    try:
        check(rules, identity, ref, ref)
    except PolicyDenied:
        return False
    return True


def test_no_policy_allows_everything() -> None:
    assert allowed(None, Identity(None, None), "aws-sm:anything")
    assert everyone_reads_everything(None)


@pytest.mark.parametrize(
    ("identity", "ref", "ok"),
    [
        (WEB, "aws-sm:nomad/default/web/db", True),
        (WEB, "aws-sm:nomad/default/other/db", False),
        (WEB, "aws-ssm:/shared/x/y", True),
        (WEB, "vault:kv/payments/x", False),
        (Identity("payments", "api"), "vault:kv/payments/db", True),
        # first match wins: the payments rule decides alone
        (Identity("payments", "api"), "aws-sm:nomad/payments/api/db", False),
        (Identity("default", "*"), "aws-sm:nomad/default/web/db", False),  # a job named * is only itself
        (Identity("default", "*"), "aws-sm:nomad/default/*/db", True),
        (Identity("default", "a/dispatch-1"), "aws-sm:nomad/default/a/dispatch-1/x", True),
    ],
)
def test_rules(identity: Identity, ref: str, ok: bool) -> None:
    assert allowed(RULES, identity, ref) is ok


def test_missing_identity_denies_rules_that_need_it() -> None:
    old_nomad = Identity(None, None)
    assert not allowed(RULES, old_nomad, "aws-sm:nomad/default/web/db")
    assert allowed((Rule(allow=("aws-sm:public/*",)),), old_nomad, "aws-sm:public/x")
    assert not allowed((Rule(namespace="default", allow=("aws-sm:*",)),), old_nomad, "aws-sm:x")


def test_denial_names_reference_identity_and_rule() -> None:
    with pytest.raises(PolicyDenied) as info:
        check(RULES, WEB, "aws-sm:secret/other", "other")
    message = info.value.message
    assert "'other'" in message and "namespace 'default', job 'web'" in message
    assert "aws-sm:nomad/default/web/*" in message  # the rule as it applies to this job
    with pytest.raises(PolicyDenied, match="no rule"):
        check((Rule(namespace="prod", allow=("*",)),), WEB, "aws-sm:x", "x")


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("aws:nomad/*", "not the provider name"),
        ("aws-sm:nomad/{nmespace}/*", "{nmespace}"),
        ("aws-sm:x/*", None),
        ("*", None),
        ("vault:secret/{namespace}/{job}/*", None),
        ("aws-*:x", None),
    ],
)
def test_patterns_that_can_never_match_are_config_errors(pattern: str, problem: str | None) -> None:
    from nomad_secrets.config import parse
    from nomad_secrets.errors import ConfigError
    from nomad_secrets.policy import pattern_problem

    found = pattern_problem(pattern)
    assert (found is None) if problem is None else (problem in str(found))
    text = f'[[policy]]\nallow = ["{pattern}"]\n'.encode()
    if problem is None:
        parse(text, "f")
    else:
        with pytest.raises(ConfigError, match=r"policy #1\.allow in f"):
            parse(text, "f")


def test_denial_shows_the_pattern_as_it_applies_to_the_job() -> None:
    with pytest.raises(PolicyDenied) as info:
        check(RULES, WEB, "aws-sm:other", "other")
    assert "'aws-sm:nomad/default/web/*'" in info.value.message
    with pytest.raises(PolicyDenied) as unknown:
        check(RULES, Identity(None, None), "aws-sm:x", "x")
    assert "None" not in unknown.value.message and "unknown namespace and ID" in unknown.value.message
    with pytest.raises(PolicyDenied, match="ask the operator"):
        check((Rule(namespace="prod", allow=("*",)),), WEB, "aws-sm:x", "x")


def test_everyone_reads_everything_detection() -> None:
    assert everyone_reads_everything((Rule(allow=("*",)),))
    assert everyone_reads_everything((Rule(allow=("aws-sm:*",)),))
    assert not everyone_reads_everything(RULES)
