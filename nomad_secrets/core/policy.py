"""The operator's access policy: may this caller read this reference?

A pure function of (caller, reference). For Nomad the caller is the job's
namespace and ID as Nomad sets them; rules come from the config::

    [[policy]]
    namespace = "*"        # glob on NOMAD_NAMESPACE
    job = "*"              # glob on NOMAD_JOB_ID
    allow = ["aws-sm:nomad/{namespace}/{job}/**"]

First match wins: rules are tried in file order, and the first whose globs
all match the caller decides alone; the reference is allowed only if one of
that rule's ``allow`` patterns matches it. No rule matching means deny.
With no ``[[policy]]`` at all, every job may read everything the node can
(so the docs' example job works with no config); ``check`` warns.

Allow patterns are ``<store glob>:<path>``, matched segment by segment
(segments are split at ``/``):

- ``*`` matches within one segment, never across ``/``; ``?`` one character;
- ``**`` as a whole segment matches any number of segments, none included;
- a placeholder (``{namespace}``, ``{job}``) is filled with the caller's
  value as literal text, never as a glob, and fills exactly one segment: a
  segment holding one has no other placeholder and no wildcard, so no two
  callers can fill a pattern to the same text. A value that cannot be one
  segment (a job ID with ``/``, such as Nomad's own ``web/periodic-...``
  children, or an empty value) fills nothing, and the pattern does not
  allow that caller anything; docs/policy.md says why and what to write.

Identity globs (``namespace``, ``job``) match the whole value, ``*`` across
``/`` too (they are names, not paths).

Matching is linear in the pattern times the path, in segments (greedy with
one backtrack point, no regular expressions), so no pattern and path can
hold a fetch past its deadline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, Union

from nomad_secrets.core.schemes import SCHEMES
from nomad_secrets.process.errors import PolicyDenied

GLOBSTAR = "**"
# A segment template: literal text, "*" and "?" wildcards, and at most one
# placeholder, as a tuple of parts; a placeholder part is ("{", name).
Part = Union[str, tuple[str, str]]
Segment = Union[str, tuple[Part, ...]]  # GLOBSTAR or a template

# Placeholders of Nomad's rules, and how many segments each value fills.
NOMAD_PLACEHOLDERS: Mapping[str, int] = {"namespace": 1, "job": 1}
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class Many:
    """Stands for every name a read of many names may return, at the end
    of the path being checked."""

    def __init__(self, name: str) -> None:
        self.name = name


ANY_CHILD = Many("one level")  # an SSM path read: every name one level below
ANY_DESCENDANTS = Many("at any depth")  # a recursive SSM path read: every name below


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the front door vouches for it: for Nomad, the
    namespace and job ID that Nomad sets (None when this Nomad sets none)."""

    fields: tuple[tuple[str, str | None], ...]
    placeholders: Mapping[str, int] = field(default_factory=lambda: NOMAD_PLACEHOLDERS)

    def get(self, name: str) -> str | None:
        return dict(self.fields).get(name)

    def describe(self) -> str:
        if any(value is None for _, value in self.fields):
            return (
                "a job of unknown namespace and ID (this Nomad sets no NOMAD_NAMESPACE/NOMAD_JOB_ID;"
                " 1.11.1 and newer do)"
            )
        return ", ".join(f"{name} {value!r}" for name, value in self.fields)


def nomad_caller(namespace: str | None, job_id: str | None) -> Caller:
    return Caller(fields=(("namespace", namespace), ("job", job_id)))


@dataclass(frozen=True)
class Pattern:
    text: str
    store: str  # a glob on store names
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Rule:
    allow: tuple[Pattern, ...]
    when: tuple[tuple[str, str], ...] = ()  # (field, glob); a missing field is "*"

    def glob(self, name: str) -> str:
        return dict(self.when).get(name, "*")


def rule(allow: tuple[str, ...], placeholders: Mapping[str, int] = NOMAD_PLACEHOLDERS, **when: str) -> Rule:
    """A rule from pattern texts, each checked (ValueError says why)."""
    patterns = []
    for text in allow:
        problem = pattern_problem(text, placeholders)
        if problem:
            raise ValueError(problem)
        patterns.append(parse_pattern(text))
    return Rule(allow=tuple(patterns), when=tuple(when.items()))


def check(
    rules: tuple[Rule, ...] | None,
    caller: Caller,
    store: str,
    name: str,
    shown: str,
    below: Many | None = None,
) -> None:
    """Raise PolicyDenied unless ``caller`` may read ``store:name`` (and,
    for a path read, every name ``below`` stands for)."""
    if rules is None:
        return
    canonical = f"{store}:{name}"
    for candidate in rules:
        if not all(_identity_matches(glob, caller.get(key)) for key, glob in candidate.when):
            continue
        reasons: list[str] = []
        for pattern in candidate.allow:
            if matches(pattern, caller, store, name, below, reasons):
                return
        allowed = ", ".join(repr(filled(p, caller)) for p in candidate.allow)
        scope = f" and every name {below.name} below it" if below else ""
        raise PolicyDenied(
            f"{shown!r}: the operator's policy does not let {caller.describe()} read {canonical!r}"
            f"{scope} (the first matching rule allows {allowed})"
            + "".join(f"; {reason}" for reason in dict.fromkeys(reasons))
            + "; ask the operator, or read a secret under an allowed path"
        )
    raise PolicyDenied(
        f"{shown!r}: no rule of the operator's policy matches {caller.describe()}, so nothing may be read;"
        " ask the operator"
    )


def matches(
    pattern: Pattern,
    caller: Caller,
    store: str,
    name: str,
    below: Many | None = None,
    reasons: list[str] | None = None,
) -> bool:
    if not glob_match(pattern.store, store):
        return False
    atoms = _fill(pattern, caller, reasons if reasons is not None else [])
    if atoms is None:
        return False
    path: list[str | Many] = list(name.split("/"))
    if below is not None:
        if path[-1] == "":
            path.pop()
        path.append(below)
    return _match_segments(atoms, path)


def filled(pattern: Pattern, caller: Caller) -> str:
    """The pattern as it applies to this caller, for messages."""
    text = pattern.text
    for key, value in caller.fields:
        # A value that cannot fill its placeholder stays a placeholder here:
        # the message must not show a pattern that seems to allow the path.
        fills = value is not None and _fills(value, caller.placeholders.get(key, 1))
        if fills:
            text = text.replace("{" + key + "}", str(value))
    return text


def _fills(value: str, segments: int) -> bool:
    values = value.split("/")
    return len(values) == segments and all(v not in ("", ".", "..") for v in values)


def parse_pattern(text: str) -> Pattern:
    """A pattern known to be well formed (``pattern_problem`` is None)."""
    store, _, path = text.partition(":")
    segments: list[Segment] = []
    for segment in path.split("/"):
        if segment == GLOBSTAR:
            segments.append(GLOBSTAR)
            continue
        parts: list[Part] = []
        for index, piece in enumerate(_PLACEHOLDER.split(segment)):
            if index % 2:
                parts.append(("{", piece))
            elif piece:
                parts.append(piece)
        segments.append(tuple(parts))
    return Pattern(text=text, store=store, segments=tuple(segments))


def pattern_problem(text: str, placeholders: Mapping[str, int] = NOMAD_PLACEHOLDERS) -> str | None:
    """Why an allow pattern is not well formed, or None."""
    known = ", ".join("{" + p + "}" for p in placeholders)
    store, colon, path = text.partition(":")
    if not colon:
        return f"{text!r} names no store; write <store>:<path>, e.g. 'aws-sm:app/**' (or '*:**' for all)"
    if not any(glob_match(store, s) for s in SCHEMES):
        return (
            f"{text!r} starts with {store!r}; patterns start with the store"
            f" ({', '.join(SCHEMES)}), not the provider name, e.g. 'aws-sm:app/*'"
        )
    unknown = sorted({"{" + n + "}" for n in _PLACEHOLDER.findall(path) if n not in placeholders})
    stray = set("{}") & set(_PLACEHOLDER.sub("", path))
    if unknown or stray:
        shown = ", ".join(unknown) if unknown else "a stray { or }"
        return f"{text!r} uses {shown}; the placeholders here are {known}"
    for segment in path.split("/"):
        names = _PLACEHOLDER.findall(segment)
        rest = _PLACEHOLDER.sub("", segment)
        if "**" in segment and segment != GLOBSTAR:
            return f"{text!r}: ** must be a whole segment (a/**/b); * matches within one segment"
        if names and (len(names) > 1 or "*" in rest or "?" in rest):
            return (
                f"{text!r}: the segment {segment!r} mixes a placeholder with another placeholder or a"
                " wildcard, so two callers could fill it to the same text; give each placeholder a"
                " segment of its own, e.g. nomad/{namespace}/{job}/**"
            )
        if names and rest and placeholders[names[0]] > 1:
            return f"{text!r}: {{{names[0]}}} fills {placeholders[names[0]]} segments, so it must stand alone"
    return None


# What a value can never contain: Nomad namespaces are [a-zA-Z0-9-]{1,128}
# (nomad/structs validNamespaceName); job IDs only lack spaces and NUL.
_NAMESPACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


ROLE_TEMPLATE_EXAMPLE = "arn:aws:iam::123456789012:role/nomad/{namespace}@{job}"


def template_ambiguity(template: str) -> str | None:
    """Why two different (namespace, job) pairs could fill ``template`` to
    the same role, or None. Two placeholders are told apart only when the
    text between them holds a character one of them can never contain
    (``nomad-{namespace}-{job}``: ("team-a", "web") and ("team", "a-web")
    give one name). And an IAM role is named by the last part of its ARN
    alone, unique in the account whatever its path (and regardless of
    case), so the placeholders belong there: with ``role/nomad/{namespace}/
    {job}``, job web of every namespace is one role named ``web``."""
    name = template.rsplit("/", 1)[-1] if ":role/" in template else template
    outside = sorted(set(_PLACEHOLDER.findall(template)) - set(_PLACEHOLDER.findall(name)))
    if outside:
        return (
            f"{', '.join('{' + p + '}' for p in outside)} in {template!r} is in the role's path, which IAM"
            f" does not count in a role's name (unique in the account, any case): put every placeholder"
            f" in the name, e.g. {ROLE_TEMPLATE_EXAMPLE}"
        )
    pieces = _PLACEHOLDER.split(name)
    for index in range(1, len(pieces) - 2, 2):
        left, between, right = pieces[index], pieces[index + 1], pieces[index + 2]
        if left == "namespace" or right == "namespace":
            if set(between) - _NAMESPACE_CHARS:
                continue
        elif " " in between:
            continue
        return (
            f"{{{left}}}{between}{{{right}}} in {template!r} can be filled alike by two different jobs;"
            f" separate them with a character a {left if left != 'namespace' else right} cannot contain,"
            f" such as @ (e.g. {ROLE_TEMPLATE_EXAMPLE})"
        )
    return None


def everyone_reads_everything(rules: tuple[Rule, ...] | None) -> bool:
    """True when the policy lets any caller read a whole store (for ``check``)."""
    if rules is None:
        return True
    for candidate in rules:
        if all(glob.strip("*") == "" for _, glob in candidate.when):
            return any(_whole_store(p) for p in candidate.allow)
    return False


def _whole_store(pattern: Pattern) -> bool:
    segments = list(pattern.segments)
    if segments and segments[0] == ():  # SSM names start with "/"
        segments.pop(0)
    wild = all(s == GLOBSTAR or (s and all(p == "*" for p in s)) for s in segments)
    return bool(segments) and wild


class _Globstar:
    """``**`` once filled: an object, so that no filled-in text equals it."""


_ANY_SEGMENTS = _Globstar()
Atom = Union[str, tuple[str], _Globstar]  # literal text, a glob, or **


def _fill(pattern: Pattern, caller: Caller, reasons: list[str]) -> list[Atom] | None:
    """The pattern's segments with placeholders filled: literal text, a
    glob (a 1-tuple) for a segment with wildcards, or **; None when a value
    cannot fill its placeholder."""
    atoms: list[Atom] = []
    for segment in pattern.segments:
        if segment == GLOBSTAR:
            atoms.append(_ANY_SEGMENTS)
            continue
        names = [part[1] for part in segment if isinstance(part, tuple)]
        if not names:
            text = "".join(str(p) for p in segment)
            atoms.append((text,) if "*" in text or "?" in text else text)
            continue
        name = names[0]
        value = caller.get(name)
        if value is None:
            return None
        values = value.split("/")
        if not _fills(value, caller.placeholders.get(name, 1)):
            reasons.append(_unfillable(name, value, caller.placeholders.get(name, 1)))
            return None
        if len(values) > 1:
            atoms.extend(values)
        else:
            atoms.append("".join(value if isinstance(p, tuple) else p for p in segment))
    return atoms


def _unfillable(name: str, value: str, segments: int) -> str:
    if segments == 1 and "/" in value:
        return (
            f"the {name} {value!r} contains '/', so it cannot fill {{{name}}}, which is one path segment"
            " (docs/policy.md: IDs with /, dispatch and periodic jobs)"
        )
    return f"the {name} {value!r} cannot fill {{{name}}}, which is {segments} path segment(s)"


def _match_segments(pattern: list[Atom], path: list[str | Many]) -> bool:
    """``**`` is the star, each other atom matches one segment."""
    return _greedy(pattern, path, lambda atom: atom is _ANY_SEGMENTS, lambda a, seg: _segment_matches(a, seg))


def _segment_matches(atom: Atom, segment: str | Many) -> bool:
    if isinstance(atom, _Globstar):
        return False  # handled by _match_segments
    if isinstance(segment, Many):
        # Only a segment that takes any text covers every child; only ** covers descendants.
        return segment is ANY_CHILD and isinstance(atom, tuple) and atom[0].strip("*") == ""
    if isinstance(atom, tuple):
        return glob_match(atom[0], segment)
    return atom == segment


def glob_match(glob: str, text: str) -> bool:
    """``*`` (any run, ``/`` included) and ``?`` (one character) over the
    whole text."""
    return _greedy(glob, text, lambda g: g == "*", lambda g, c: g in ("?", c))


P = TypeVar("P")
T = TypeVar("T")


def _greedy(
    pattern: Sequence[P], items: Sequence[T], is_star: Callable[[P], bool], matches: Callable[[P, T], bool]
) -> bool:
    """Whole-sequence wildcard matching, greedy with one backtrack point
    (the last star): at most len(pattern) * len(items) comparisons, never
    the exponential backtracking of a regular expression. One matcher for
    segments (``**``) and for characters (``*``)."""
    p = i = 0
    star, mark = -1, 0
    while i < len(items):
        if p < len(pattern) and is_star(pattern[p]):
            star, mark = p, i
            p += 1
        elif p < len(pattern) and matches(pattern[p], items[i]):
            p += 1
            i += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            i = mark
        else:
            return False
    while p < len(pattern) and is_star(pattern[p]):
        p += 1
    return p == len(pattern)


def _identity_matches(glob: str, value: str | None) -> bool:
    if value is None:
        return glob == "*"
    return glob_match(glob, value)
