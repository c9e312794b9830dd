"""The ``path`` of a secret block: one reference, or several named ones.

Grammar (docs/references.md has examples per store)::

    path       = reference                  ; no newline: one reference
               | *( line "\\n" )              ; a heredoc: one entry per line
    line       = blank | "#" comment | NAME "=" reference
    reference  = [ scheme ":" ] locator [ "?" option *( "&" option ) ] [ "#" selector ]
    scheme     = "aws-sm" | "aws-ssm" | "vault"
    option     = key "=" value
    selector   = field | "/" json-pointer

The locator is the store's own name for the secret (a name or ARN for AWS,
``mount/path`` for Vault); it cannot contain ``?`` or ``#``. Options are
checked by the store that reads the reference, so each store names its own.

The path is hostile input: it is size-limited, control characters are
refused, and nothing here touches the network or the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nomad_secrets.core.schemes import SCHEMES
from nomad_secrets.process.errors import RequestError

MAX_PATH_BYTES = 16 * 1024
MAX_REFERENCES = 64
MAX_LOCATOR = 2048

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,127}\Z")
_OPTION_KEY = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
_NAMED_LINE = re.compile(r"\s*([^=\s]+)\s*=\s*(.*?)\s*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Reference:
    text: str  # as the job wrote it, for messages
    scheme: str | None  # None: the provider's default store
    locator: str
    options: tuple[tuple[str, str], ...] = ()
    selector: str | None = None
    name: str | None = None  # NAME in a multi-line path

    def options_for(self, store: str, allowed: tuple[str, ...]) -> dict[str, str]:
        """The options as a dict, once each is known to ``store``."""
        for key, _ in self.options:
            if key not in allowed:
                known = ", ".join(allowed) or "none"
                raise RequestError(f"{self.text!r} ({store}): unknown option {key!r}; options here: {known}")
        return dict(self.options)


def parse_path(path: str) -> list[Reference]:
    """Every reference in ``path``; RequestError names what is wrong."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:  # argv bytes that are not UTF-8 arrive as surrogates
        raise RequestError(
            f"the secret path is not valid UTF-8 (at character {exc.start + 1}); write it in UTF-8"
        ) from None
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise RequestError(f"the secret path is longer than {MAX_PATH_BYTES} bytes; split the secret block")
    if "\n" not in path:
        _refuse_lone_named_line(path)
        return [parse_reference(path.strip())]
    refs: list[Reference] = []
    seen: set[str] = set()
    for number, line in enumerate(path.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _NAMED_LINE.match(line)
        if match is None:
            raise RequestError(
                f"line {number} of the secret path is {_show(stripped)}: in a path of"
                " several lines, each line is NAME = reference (or a # comment);"
                ' a single reference needs no heredoc: path = "..."'
            )
        name, text = match.groups()
        if not _NAME.match(name):
            raise RequestError(
                f"line {number} of the secret path: {_show(name)} is not a NAME; use"
                " letters, digits, _ and -, starting with a letter or _"
            )
        if name in seen:
            raise RequestError(f"line {number} of the secret path: the NAME {name!r} is used twice")
        seen.add(name)
        if not text:
            raise RequestError(
                f"line {number} of the secret path names the key {name!r} but no reference after its ="
            )
        refs.append(parse_reference(text, name=name))
    if not refs:
        raise RequestError("the secret path has no reference; write NAME = reference lines")
    if len(refs) > MAX_REFERENCES:
        raise RequestError(f"the secret path has {len(refs)} references; at most {MAX_REFERENCES}")
    return refs


def _refuse_lone_named_line(path: str) -> None:
    """``path = "db = aws-sm:prod/db"``: a NAME = reference line on its own
    would be read as one secret named ``db = aws-sm:prod/db``. No store's
    name has spaces around ``=``, or a scheme after it."""
    match = _NAMED_LINE.match(path)
    if match is None or not _NAME.match(match.group(1)):
        return
    text = match.group(2)
    spaced = re.search(r"\s=|=\s", path) is not None
    if spaced and not text:  # "db = ": no reference to move into the path ("db=" may be a name)
        raise RequestError(
            f"the secret path {_show(path)} names the key {match.group(1)!r} but no reference after"
            " its =: write the reference there, in a heredoc of NAME = reference lines"
        )
    if spaced or text.partition(":")[0] in SCHEMES:
        raise RequestError(
            f"the secret path {_show(path)} is one NAME = reference line, which names keys only in a"
            f' path of several lines (a heredoc); for one reference write path = "{text}" (its keys'
            " need no NAME), or put each NAME = reference on its own line of a heredoc"
        )


def _near_miss_scheme(head: str, rest: str) -> str | None:
    """The scheme ``head:`` was probably meant to be, when it is none.

    Only where no store's own name could start so: a name after it with a
    ``/`` (an SSM ``name:label`` has none), or a head starting ``aws`` or
    ``ssm`` (SSM refuses such parameter names; Secrets Manager names have
    no ``:`` at all)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,15}", head) or head.lower() == "arn":
        return None
    lowered = head.lower().replace("_", "-")
    if "/" not in rest and not lowered.startswith(("aws", "ssm")):
        return None
    if lowered in _SCHEME_ALIASES:
        return _SCHEME_ALIASES[lowered]
    close = [s for s in SCHEMES if _edits(lowered, s) <= 2]
    return min(close, key=lambda s: _edits(lowered, s)) if close else None


# Other names people give the stores.
_SCHEME_ALIASES = {
    "sm": "aws-sm",
    "secretsmanager": "aws-sm",
    "secrets-manager": "aws-sm",
    "aws-secretsmanager": "aws-sm",
    "ssm": "aws-ssm",
    "parameter-store": "aws-ssm",
    "kv": "vault",
    "openbao": "vault",
    "bao": "vault",
}


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (both strings are a few characters long)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def parse_reference(text: str, *, name: str | None = None) -> Reference:
    if not text:
        raise RequestError("the secret path is empty; set path in the secret block")
    if _CONTROL.search(text):
        raise RequestError(f"the reference {_show(text)} contains a control character")
    rest = text
    scheme = None
    head, colon, tail = rest.partition(":")
    if colon and head in SCHEMES:
        scheme, rest = head, tail
    elif colon and (meant := _near_miss_scheme(head, tail)):
        raise RequestError(
            f"the reference {_show(text)} starts with {head + ':'!r}, which is not a scheme;"
            f" did you mean {meant + ':'!r}? The schemes are {', '.join(s + ':' for s in SCHEMES)}"
        )
    selector = None
    if "#" in rest:
        rest, _, selector = rest.partition("#")
        if not selector:
            raise RequestError(f"the reference {_show(text)} has an empty #selector; name a field after #")
    options: list[tuple[str, str]] = []
    if "?" in rest:
        rest, _, query = rest.partition("?")
        options = _parse_options(query, text)
    if not rest:
        raise RequestError(f"the reference {_show(text)} names no secret")
    if len(rest) > MAX_LOCATOR:
        raise RequestError(f"the reference {_show(text)} names a secret longer than {MAX_LOCATOR} characters")
    return Reference(
        text=text, scheme=scheme, locator=rest, options=tuple(options), selector=selector, name=name
    )


def _parse_options(query: str, text: str) -> list[tuple[str, str]]:
    options: list[tuple[str, str]] = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if not eq or not _OPTION_KEY.match(key) or not value:
            raise RequestError(
                f"the reference {_show(text)} has a malformed option {_show(item)};"
                " write ?key=value&key=value"
            )
        if any(k == key for k, _ in options):
            raise RequestError(f"the reference {_show(text)} sets the option {key!r} twice")
        options.append((key, value))
    return options


def _show(text: str, limit: int = 200) -> str:
    """Quote hostile text for a message: escaped and cut to ``limit``."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)
