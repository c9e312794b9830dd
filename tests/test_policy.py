"""The access policy: first match wins, patterns match segment by segment,
placeholders fill one segment with literal text, and matching is bounded."""

from __future__ import annotations

import pytest

from nomad_secrets.core import policy
from nomad_secrets.core.policy import (
    ANY_CHILD,
    ANY_DESCENDANTS,
    Caller,
    Many,
    Rule,
    check,
    everyone_reads_everything,
    glob_match,
    nomad_caller,
    rule,
)
from nomad_secrets.process.errors import PolicyDenied

WEB = nomad_caller("default", "web")
README_RULE = rule(("aws-sm:nomad/{namespace}/{job}/**",))
RULES = (
    rule(("vault:kv/payments/**",), namespace="payments"),
    rule(("aws-sm:nomad/{namespace}/{job}/**", "aws-ssm:/shared/*")),
)


def allowed(rules: tuple[Rule, ...] | None, caller: Caller, ref: str, below: Many | None = None) -> bool:
    store, _, name = ref.partition(":")
    try:
        check(rules, caller, store, name, ref, below)
    except PolicyDenied:
        return False
    return True


def denial(rules: tuple[Rule, ...], caller: Caller, ref: str) -> str:
    store, _, name = ref.partition(":")
    with pytest.raises(PolicyDenied) as info:
        check(rules, caller, store, name, ref)
    return info.value.message


def test_no_policy_allows_everything() -> None:
    assert allowed(None, nomad_caller(None, None), "aws-sm:anything")
    assert everyone_reads_everything(None)


@pytest.mark.parametrize(
    ("caller", "ref", "ok"),
    [
        (WEB, "aws-sm:nomad/default/web/db", True),
        (WEB, "aws-sm:nomad/default/web/db/primary", True),  # ** crosses segments
        (WEB, "aws-sm:nomad/default/other/db", False),
        (WEB, "aws-sm:nomad/default/webx/db", False),
        (WEB, "aws-ssm:/shared/x", True),
        (WEB, "aws-ssm:/shared/x/y", False),  # * stays in its segment
        (WEB, "vault:kv/payments/x", False),
        (nomad_caller("payments", "api"), "vault:kv/payments/db", True),
        # first match wins: the payments rule decides alone
        (nomad_caller("payments", "api"), "aws-sm:nomad/payments/api/db", False),
        # a value is literal text: a job named * is only itself
        (nomad_caller("default", "*"), "aws-sm:nomad/default/web/db", False),
        (nomad_caller("default", "*"), "aws-sm:nomad/default/*/db", True),
        (nomad_caller("default", "**"), "aws-sm:nomad/default/web/db", False),
        (nomad_caller("default", "?eb"), "aws-sm:nomad/default/web/db", False),
    ],
)
def test_rules(caller: Caller, ref: str, ok: bool) -> None:
    assert allowed(RULES, caller, ref) is ok


# --- job IDs with "/" (issue #10 item 1) ----------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        "web/prod",  # a job named with a slash
        "web/dispatch-1700000000-0a1b2c3d",  # a child of the parameterized job web
        "web/dispatch-nightly-1700000000-0a1b2c3d",  # ... with an id_prefix_template
        "web/periodic-1700000000",  # a child of the periodic job web
        "web/periodic-1700000000/dispatch-1-0a1b2c3d",
    ],
)
def test_a_job_id_with_a_slash_never_reads_below_another_jobs_prefix(job_id: str) -> None:
    caller = nomad_caller("default", job_id)
    for name in (f"nomad/default/{job_id}/password", "nomad/default/web/password"):
        assert not allowed((README_RULE,), caller, f"aws-sm:{name}")
    message = denial((README_RULE,), caller, f"aws-sm:nomad/default/{job_id}/password")
    assert f"the job {job_id!r} contains '/', so it cannot fill {{job}}" in message


def test_children_get_their_parents_secrets_only_by_an_explicit_rule() -> None:
    """The plugin never infers a parent from a job ID: a job may be named
    like a child (web/periodic-1700000000) by anyone who may submit jobs in
    the namespace. An operator who wants children to read the parent's
    secrets says so for that parent."""
    rules = (
        rule(("aws-sm:nomad/{namespace}/backup/**",), job="backup/periodic-*"),
        README_RULE,
    )
    child = nomad_caller("default", "backup/periodic-1700000000")
    assert allowed(rules, child, "aws-sm:nomad/default/backup/db")
    assert not allowed(rules, child, "aws-sm:nomad/default/web/db")
    assert not allowed(
        rules, nomad_caller("default", "web/periodic-1700000000"), "aws-sm:nomad/default/web/db"
    )
    assert allowed(rules, nomad_caller("default", "backup"), "aws-sm:nomad/default/backup/db")


def test_an_empty_or_dot_value_fills_nothing() -> None:
    for job_id in (".", ".."):
        assert not allowed(
            (README_RULE,), nomad_caller("default", job_id), f"aws-sm:nomad/default/{job_id}/x"
        )
    assert not allowed((README_RULE,), nomad_caller("default", ".."), "aws-sm:nomad/x")


def test_a_placeholder_may_share_its_segment_with_literal_text() -> None:
    rules = (rule(("aws-sm:app-{job}/**", "aws-sm:{job}-db")),)
    assert allowed(rules, WEB, "aws-sm:app-web/x")
    assert allowed(rules, WEB, "aws-sm:web-db")
    assert not allowed(rules, nomad_caller("default", "we"), "aws-sm:app-web/x")
    assert not allowed(rules, nomad_caller("default", "web-db"), "aws-sm:web-db")


def test_multi_segment_placeholders_fill_exactly_their_count() -> None:
    """A front door may declare a value of fixed depth, like a repository
    slug owner/name."""
    places = {"repo": 2}
    rules = (rule(("aws-sm:ci/{repo}/**",), places),)
    octo = Caller(fields=(("repo", "octo/hello"),), placeholders=places)
    assert allowed(rules, octo, "aws-sm:ci/octo/hello/docker")
    assert not allowed(rules, octo, "aws-sm:ci/octo/other/docker")
    deeper = Caller(fields=(("repo", "octo/hello/x"),), placeholders=places)
    assert not allowed(rules, deeper, "aws-sm:ci/octo/hello/x/docker")


# --- a path read covers every name it may return ---------------------------------------


@pytest.mark.parametrize(
    ("pattern", "below", "ok"),
    [
        ("aws-ssm:/shared/*", ANY_CHILD, True),
        ("aws-ssm:/shared/*", ANY_DESCENDANTS, False),
        ("aws-ssm:/shared/**", ANY_DESCENDANTS, True),
        ("aws-ssm:/shared/**", ANY_CHILD, True),
        ("aws-ssm:/shared/db*", ANY_CHILD, False),  # not every child starts with db
        ("aws-ssm:/shared/*/**", ANY_DESCENDANTS, False),  # conservative: deny
        ("aws-ssm:/**", ANY_DESCENDANTS, True),
        ("aws-ssm:/other/**", ANY_CHILD, False),
    ],
)
def test_path_reads(pattern: str, below: Many, ok: bool) -> None:
    assert allowed((rule((pattern,)),), WEB, "aws-ssm:/shared/", below) is ok


# --- patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("aws:nomad/*", "not the provider name"),
        ("aws-sm:nomad/{nmespace}/*", "{nmespace}"),
        ("aws-sm:nomad/{namespace/*", "stray"),
        ("*", "names no store"),
        ("aws-sm:a**", "** must be a whole segment"),
        ("aws-sm:***", "** must be a whole segment"),
        ("aws-sm:nomad/{namespace}-{job}", "mixes a placeholder"),
        ("aws-sm:nomad/{job}*", "mixes a placeholder"),
        ("aws-sm:nomad/{job}?", "mixes a placeholder"),
        ("aws-sm:x/*", None),
        ("*:**", None),
        ("vault:secret/{namespace}/{job}/**", None),
        ("aws-sm:app-{job}", None),
        ("aws-*:x", None),
    ],
)
def test_patterns_that_are_not_well_formed_are_config_errors(pattern: str, problem: str | None) -> None:
    from nomad_secrets.core.config import parse
    from nomad_secrets.process.errors import ConfigError

    found = policy.pattern_problem(pattern)
    assert (found is None) if problem is None else (problem in str(found))
    text = f'[[policy]]\nallow = ["{pattern}"]\n'.encode()
    if problem is None:
        parse(text, "f")
    else:
        with pytest.raises(ConfigError, match=r"policy #1\.allow in f"):
            parse(text, "f")


def test_denial_names_reference_caller_and_the_rule_as_it_applies() -> None:
    message = denial(RULES, WEB, "aws-sm:secret/other")
    assert "'aws-sm:secret/other'" in message and "namespace 'default', job 'web'" in message
    assert "'aws-sm:nomad/default/web/**'" in message
    message = denial(RULES, nomad_caller(None, None), "aws-sm:x")
    assert "None" not in message and "unknown namespace and ID" in message
    assert "no rule" in denial((rule(("*:**",), namespace="prod"),), WEB, "aws-sm:x")


def test_everyone_reads_everything_detection() -> None:
    assert everyone_reads_everything((rule(("*:**",)),))
    assert everyone_reads_everything((rule(("aws-sm:**",)),))
    assert everyone_reads_everything((rule(("aws-ssm:/**",)),))
    assert not everyone_reads_everything(RULES)
    assert not everyone_reads_everything((rule(("aws-sm:**",), namespace="ops"),))


# --- bounded matching (issue #10 item 2) -----------------------------------------------


def test_matching_is_bounded_by_pattern_times_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pattern and path that held fnmatch's regex for seconds: every
    segment comparison is counted, and the count stays within
    len(pattern) * len(path) segments."""
    calls = 0
    real = policy._segment_matches

    def counting(atom: object, segment: object) -> bool:
        nonlocal calls
        calls += 1
        return real(atom, segment)  # type: ignore[arg-type]

    monkeypatch.setattr(policy, "_segment_matches", counting)
    name = "/" * 2040 + "x"
    for text in (
        "aws-ssm:/*/*/*/*/db-password",
        "aws-ssm:/**/**/**/**/db-password",
        "aws-ssm:/**/*/**/*/**/y",
    ):
        calls = 0
        assert not allowed((rule((text,)),), WEB, f"aws-ssm:{name}")
        assert calls <= len(text.split("/")) * (name.count("/") + 1)


def test_glob_match_is_bounded() -> None:
    assert glob_match("*a*a*a*a*b", "a" * 4000) is False
    assert glob_match("*/x", "a/b/x") is True  # identity globs cross /
    assert glob_match("web-?", "web-1") and not glob_match("web-?", "web-10")
    assert glob_match("", "") and not glob_match("", "x")


@pytest.mark.parametrize(
    ("template", "ambiguous"),
    [
        ("arn:aws:iam::123456789012:role/nomad-{namespace}-{job}", True),
        ("arn:aws:iam::123456789012:role/nomad-{job}-{namespace}", True),
        # The path is not part of an IAM role's name: job web of every namespace is role "web".
        ("arn:aws:iam::123456789012:role/nomad/{namespace}/{job}", True),
        ("arn:aws:iam::123456789012:role/nomad/{namespace}@{job}", False),
        ("arn:aws:iam::123456789012:role/nomad/{job}@{namespace}", False),
        ("arn:aws:iam::123456789012:role/nomad_{namespace}_{job}", False),
        ("arn:aws:iam::123456789012:role/{job}-{job}", True),
        ("arn:aws:iam::123456789012:role/nomad-{job}", False),
    ],
)
def test_ambiguous_templates(template: str, ambiguous: bool) -> None:
    problem = policy.template_ambiguity(template)
    assert (problem is not None) is ambiguous
    if problem:
        assert policy.ROLE_TEMPLATE_EXAMPLE in problem
