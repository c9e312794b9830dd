"""The operator's access policy: may this job read this reference?

A pure function of (identity, reference). Rules come from the config::

    [[policy]]
    namespace = "*"        # glob on NOMAD_NAMESPACE
    job = "*"              # glob on NOMAD_JOB_ID
    allow = ["aws-sm:nomad/{namespace}/{job}/*"]

First match wins: rules are tried in file order, and the first whose
``namespace`` and ``job`` globs both match the identity decides alone; the
reference is allowed only if it matches one of that rule's ``allow``
patterns. Put specific rules first. No rule matching means deny. With no
``[[policy]]`` at all, every job may read everything the node can (so the
docs' example job works with no config); ``nomad-secrets check`` warns.

Patterns are globs on ``<store>:<name>`` (``*`` matches anything, ``/``
included; ``?`` one character), after ``{namespace}`` and ``{job}`` are
replaced by the identity, glob characters in it escaped so that a job named
``*`` matches only itself. The identity is what Nomad sets (1.11.1+); with
an older Nomad it is missing, and then only rules that name neither
(``*`` globs, no placeholders) can match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nomad_secrets.errors import PolicyDenied
from nomad_secrets.reference import SCHEMES as STORES
from nomad_secrets.request import Identity


@dataclass(frozen=True)
class Rule:
    allow: tuple[str, ...]
    namespace: str = "*"
    job: str = "*"


def check(rules: tuple[Rule, ...] | None, identity: Identity, canonical: str, shown: str) -> None:
    """Raise PolicyDenied unless ``canonical`` (``store:name``) may be read."""
    if rules is None:
        return
    if identity.job_id is None or identity.namespace is None:
        who = (
            "a job of unknown namespace and ID (this Nomad sets no NOMAD_NAMESPACE/NOMAD_JOB_ID;"
            " 1.11.1 and newer do)"
        )
    else:
        who = f"namespace {identity.namespace!r}, job {identity.job_id!r}"
    for rule in rules:
        if not (
            _matches_identity(rule.namespace, identity.namespace)
            and _matches_identity(rule.job, identity.job_id)
        ):
            continue
        for pattern in rule.allow:
            regex = _pattern(pattern, identity)
            if regex is not None and regex.fullmatch(canonical):
                return
        allowed = ", ".join(repr(_filled(p, identity)) for p in rule.allow)
        raise PolicyDenied(
            f"{shown!r}: the operator's policy does not let {who} read {canonical!r}"
            f" (the first matching rule allows {allowed}); ask the operator, or read a secret"
            " under an allowed path"
        )
    raise PolicyDenied(
        f"{shown!r}: no rule of the operator's policy matches {who}, so nothing may be read; ask the operator"
    )


def _filled(pattern: str, identity: Identity) -> str:
    """The pattern as it applies to this job, for messages."""
    if identity.namespace is not None:
        pattern = pattern.replace("{namespace}", identity.namespace)
    if identity.job_id is not None:
        pattern = pattern.replace("{job}", identity.job_id)
    return pattern


def pattern_problem(pattern: str) -> str | None:
    """Why an allow pattern can never match, or None: it must name a store
    (not a provider name) and use no placeholder but {namespace} and {job}."""
    unknown = set(re.findall(r"\{[^}]*\}", pattern)) - {"{namespace}", "{job}"}
    if unknown:
        return (
            f"{pattern!r} uses {', '.join(sorted(unknown))}; the placeholders are {{namespace}} and {{job}}"
        )
    store = pattern.split(":", 1)[0]
    if pattern != "*" and not any(_glob(store).fullmatch(s) for s in STORES):
        return (
            f"{pattern!r} starts with {store!r}; patterns start with the store"
            f" ({', '.join(STORES)}), not the provider name, e.g. 'aws-sm:app/*'"
        )
    return None


def _matches_identity(glob: str, value: str | None) -> bool:
    if value is None:
        return glob == "*"
    return _glob(glob).fullmatch(value) is not None


def _pattern(pattern: str, identity: Identity) -> re.Pattern[str] | None:
    """The pattern with placeholders filled (escaped), or None when it needs
    an identity Nomad did not give."""
    out = []
    for part in re.split(r"(\{namespace\}|\{job\})", pattern):
        if part in ("{namespace}", "{job}"):
            value = identity.namespace if part == "{namespace}" else identity.job_id
            if value is None:
                return None
            out.append(re.escape(value))
        else:
            out.append(_glob_regex(part))
    return re.compile("".join(out), re.S)


def _glob_regex(glob: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)


def _glob(glob: str) -> re.Pattern[str]:
    return re.compile(_glob_regex(glob), re.S)


def everyone_reads_everything(rules: tuple[Rule, ...] | None) -> bool:
    """True when the policy lets any job read anything (for ``check``)."""
    if rules is None:
        return True
    for rule in rules:
        if rule.namespace == "*" and rule.job == "*":
            return any(p.strip("*") in ("", ":") or (p.endswith(":*") and "{" not in p) for p in rule.allow)
    return False
