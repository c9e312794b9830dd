"""Decode secrets-plugin output exactly as the Nomad client does.

Two interchangeable decoders:

``GoDecoder``
    Runs ``tests/gocheck/main.go`` (built on demand with the local Go
    toolchain), which uses the real ``encoding/json`` and
    ``hashicorp/go-version`` code with the same struct types as Nomad.

``PyDecoder``
    A pure-Python re-implementation of the same rules, used where Go is not
    installed.  ``tests/test_gocheck.py`` keeps the two in agreement.

The rules come from Nomad's ``client/commonplugins`` (``json.Unmarshal(stdout,
&res)`` into ``**SecretResponse`` / ``**PluginFingerprint``),
``client/fingerprint/secrets.go`` (a plugin counts only when ``version`` and
``type`` are non-null and ``type == "secrets"``) and the task runner's
``plugin_provider.go`` (a non-nil ``error`` fails the fetch, even ``""``).

Encoding/json details reproduced by ``PyDecoder``:

* the input must be exactly one JSON value, optionally surrounded by
  ``" \\t\\r\\n"``; Go's scanner grammar (no NaN, no leading ``+``, no
  trailing commas, nesting depth at most 10000);
* object keys match struct fields exactly first, then case-insensitively
  (ASCII case plus ``U+017F`` long s == ``s`` and ``U+212A`` Kelvin == ``k``),
  so ``"Result"``, ``"RESULT"`` and ``"re\\u017fult"`` all fill ``Result``;
* duplicate keys: the last one wins, except that a repeated ``result`` object
  is *merged* into the map already decoded (``null`` resets it to nil);
* ``null`` for a map element stores ``""``; ``null`` for ``result``/``error``
  /``version``/``type`` leaves the field nil; a top-level ``null`` makes the
  whole response nil (Nomad would then dereference a nil pointer);
* invalid UTF-8 inside strings becomes one ``U+FFFD`` per bad byte and an
  unpaired ``\\uD800``-style escape becomes ``U+FFFD``;
* type mismatches are remembered and decoding goes on, but a version string
  rejected by ``NewVersion`` aborts at once (``UnmarshalText`` semantics).

Version rules are those of ``hashicorp/go-version`` (``NewVersion`` regexp,
``Compare``, ``comparePrereleases``) and ``sort.SliceStable`` is ported
verbatim so even non-transitive comparisons sort identically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

__all__ = [
    "MAIN_GO",
    "FetchDecode",
    "FingerprintDecode",
    "GoDecoder",
    "PyDecoder",
    "VersionsReport",
    "build",
    "decoder",
    "find_go",
    "find_gopath",
    "go_available",
]

MAIN_GO = Path(__file__).resolve().parent / "gocheck" / "main.go"

_GO_VERSION_PKG = Path("src") / "github.com" / "hashicorp" / "go-version"

# Shared verbatim with main.go.
NIL_FINGERPRINT_MSG = (
    "fingerprint output is JSON null: json.Unmarshal sets the *PluginFingerprint "
    "to nil and Nomad would dereference it (nil pointer panic)"
)
NIL_FETCH_MSG = (
    "fetch output is JSON null: json.Unmarshal sets the *SecretResponse to nil "
    "and Nomad would dereference it (nil pointer panic)"
)


# --------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchDecode:
    """How Nomad sees a ``fetch`` run.

    ``ok``: Nomad would use ``result`` as the secret's values.
    ``decoded``: ``json.Unmarshal`` returned no error (and the process exited 0).
    ``result``: the decoded map (``None`` = nil map) when ``decoded``.
    ``error``: the message Nomad would report ("" when ``ok``).
    ``plugin_error``: the decoded ``error`` field (``None`` = nil).
    """

    ok: bool
    decoded: bool
    result: dict[str, str] | None
    error: str
    plugin_error: str | None


@dataclass(frozen=True)
class FingerprintDecode:
    """How Nomad sees a ``fingerprint`` run.

    ``ok``: the plugin would be registered with node attribute
    ``plugins.secrets.<name>.version = version``.
    ``version``: ``Version.Original()`` when decoded and non-null.
    ``plugin_type``: the decoded ``type`` field (JSON key ``"type"``).
    ``error``: decode error or the reason the plugin is skipped.
    """

    ok: bool
    decoded: bool
    version: str | None
    plugin_type: str | None
    error: str


@dataclass(frozen=True)
class VersionsReport:
    """Everything ``gocheck versions`` reports about a list of versions.

    ``compare`` maps ``(i, j)`` (indices into the input list, both parsable)
    to ``Compare(vs[i], vs[j])``.
    """

    parsed: dict[str, bool]
    canonical: dict[str, str]
    errors: dict[str, str]
    sorted: list[str]
    compare: dict[tuple[int, int], int]


# --------------------------------------------------------------------------
# Process exit handling (shared by both decoders)
# --------------------------------------------------------------------------


def _exit_message(exit_code: int) -> str:
    """The text of Go's ``*exec.ExitError`` for a ``subprocess`` returncode."""
    if exit_code >= 0:
        return f"exit status {exit_code}"
    signum = -exit_code
    try:
        name = signal.strsignal(signum)
    except ValueError:
        name = None
    if not name:
        return f"signal {signum}"
    return f"signal: {name[:1].lower()}{name[1:]}"


def _failed_fetch(exit_code: int, provider: str, secret: str) -> FetchDecode:
    # runPlugin returns cmd.Output()'s error; stdout and stderr are dropped.
    msg = (
        f"failed executing plugin {_go_quote(provider)} for secret "
        f"{_go_quote(secret)}: {_exit_message(exit_code)}"
    )
    return FetchDecode(False, False, None, msg, None)


def _failed_fingerprint(exit_code: int) -> FingerprintDecode:
    return FingerprintDecode(False, False, None, None, _exit_message(exit_code))


# --------------------------------------------------------------------------
# Go's strconv.Quote (fmt %q)
# --------------------------------------------------------------------------

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _go_quote(s: str) -> str:
    """``strconv.Quote`` for a valid-UTF-8 string.

    ``str.isprintable`` and Go's ``unicode.IsPrint`` both mean "letters,
    marks, numbers, punctuation, symbols and U+0020"; they can only disagree
    on code points assigned in one Unicode version but not the other.
    """
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        elif 0xD800 <= cp <= 0xDFFF:
            out.append("\\ufffd")
        elif cp < 0x10000:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(f"\\U{cp:08x}")
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------
# A JSON parser with Go encoding/json's grammar and string decoding
# --------------------------------------------------------------------------


class _JsonSyntaxError(Exception):
    pass


class _Num:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Obj:
    """A JSON object; keeps every pair, in order, duplicates included."""

    __slots__ = ("pairs",)

    def __init__(self) -> None:
        self.pairs: list[tuple[str, _Value]] = []


class _Arr:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[_Value] = []


_Value = Union[None, bool, str, _Num, _Obj, _Arr]

_MAX_DEPTH = 10000
_SPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {
    ord('"'): '"',
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}
_EOF = "unexpected end of JSON input"


def _quote_char(c: int) -> str:
    """encoding/json's quoteChar: the byte as a rune, single-quoted."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    return "'" + _go_quote(chr(c))[1:-1] + "'"


def _bad(c: int, context: str) -> _JsonSyntaxError:
    return _JsonSyntaxError(f"invalid character {_quote_char(c)} {context}")


def _go_utf8(raw: bytes) -> str:
    """Decode like Go's unquote: each byte of an invalid sequence -> U+FFFD."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b < 0x80:
            out.append(chr(b))
            i += 1
            continue
        size = 2 if 0xC2 <= b <= 0xDF else 3 if 0xE0 <= b <= 0xEF else 4 if 0xF0 <= b <= 0xF4 else 0
        if size:
            try:
                out.append(raw[i : i + size].decode("utf-8"))
                i += size
                continue
            except UnicodeDecodeError:
                pass
        out.append("\ufffd")
        i += 1
    return "".join(out)


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)

    def _ws(self, i: int) -> int:
        data, n = self.data, self.n
        while i < n and data[i] in _SPACE:
            i += 1
        return i

    def _byte(self, i: int) -> int:
        if i >= self.n:
            raise _JsonSyntaxError(_EOF)
        return self.data[i]

    def _byte_in_token(self, i: int) -> int:
        """Like _byte, but inside a literal, number or escape: at the end of
        input Go's scanner.eof() steps one ' ', whose error it reports."""
        return self.data[i] if i < self.n else 0x20

    def _hex4(self, i: int) -> int:
        """Read the 4 hex digits at data[i:i+4]."""
        for k in range(4):
            c = self._byte_in_token(i + k)
            if c not in _HEX:
                raise _bad(c, "in \\u hexadecimal character escape")
        return int(self.data[i : i + 4], 16)

    def _string(self, i: int) -> tuple[str, int]:
        """Parse the string whose opening quote is at data[i]."""
        data = self.data
        parts: list[str] = []
        i += 1
        start = i
        while True:
            c = self._byte(i)
            if c == 0x22:
                parts.append(_go_utf8(data[start:i]))
                return "".join(parts), i + 1
            if c < 0x20:
                raise _bad(c, "in string literal")
            if c != 0x5C:
                i += 1
                continue
            parts.append(_go_utf8(data[start:i]))
            e = self._byte_in_token(i + 1)
            if e in _SIMPLE_ESCAPES:
                parts.append(_SIMPLE_ESCAPES[e])
                i += 2
            elif e == ord("u"):
                r = self._hex4(i + 2)
                i += 6
                if 0xD800 <= r <= 0xDFFF:
                    # utf16.DecodeRune(r, next \uXXXX) or U+FFFD.
                    nxt = data[i : i + 6]
                    if (
                        r <= 0xDBFF
                        and len(nxt) == 6
                        and nxt[:2] == b"\\u"
                        and all(x in _HEX for x in nxt[2:])
                        and 0xDC00 <= int(nxt[2:], 16) <= 0xDFFF
                    ):
                        r2 = int(nxt[2:], 16)
                        parts.append(chr(0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)))
                        i += 6
                    else:
                        parts.append("\ufffd")
                else:
                    parts.append(chr(r))
            else:
                raise _bad(e, "in string escape code")
            start = i

    def _digits(self, i: int) -> int:
        data, n = self.data, self.n
        while i < n and data[i] in _DIGITS:
            i += 1
        return i

    def _number(self, i: int) -> tuple[_Num, int]:
        data = self.data
        start = i
        if data[i] == ord("-"):
            i += 1
            c = self._byte_in_token(i)
            if c not in _DIGITS:
                raise _bad(c, "in numeric literal")
        if data[i] == ord("0"):
            i += 1
        else:
            i = self._digits(i)
        if i < self.n and data[i] == ord("."):
            c = self._byte_in_token(i + 1)
            if c not in _DIGITS:
                raise _bad(c, "after decimal point in numeric literal")
            i = self._digits(i + 1)
        if i < self.n and data[i] in b"eE":
            i += 1
            if self._byte_in_token(i) in b"+-":
                i += 1
            c = self._byte_in_token(i)
            if c not in _DIGITS:
                raise _bad(c, "in exponent of numeric literal")
            i = self._digits(i)
        return _Num(data[start:i].decode("ascii")), i

    def _literal(self, i: int, word: bytes) -> int:
        name = word.decode("ascii")
        for k in range(1, len(word)):
            c = self._byte_in_token(i + k)
            if c != word[k]:
                raise _bad(c, f"in literal {name} (expecting '{chr(word[k])}')")
        return i + len(word)

    def _key(self, i: int) -> tuple[str, int]:
        """Parse `"key" :` starting at data[i] (whitespace allowed)."""
        i = self._ws(i)
        c = self._byte(i)
        if c != 0x22:
            raise _bad(c, "looking for beginning of object key string")
        key, i = self._string(i)
        i = self._ws(i)
        c = self._byte(i)
        if c != ord(":"):
            raise _bad(c, "after object key")
        return key, i + 1

    def parse(self) -> _Value:
        data = self.data
        # Open containers; for objects, the key awaiting its value.
        stack: list[tuple[_Obj | _Arr, list[str]]] = []
        i = 0
        while True:
            # -- parse one value starting at i --
            i = self._ws(i)
            c = self._byte(i)
            value: _Value
            if c in b"{[":
                if len(stack) + 1 > _MAX_DEPTH:
                    raise _bad(c, "exceeded max depth")
                container: _Obj | _Arr = _Obj() if c == ord("{") else _Arr()
                close = ord("}") if c == ord("{") else ord("]")
                j = self._ws(i + 1)
                if self._byte(j) == close:
                    value, i = container, j + 1
                elif isinstance(container, _Obj):
                    key, i = self._key(i + 1)
                    stack.append((container, [key]))
                    continue
                else:
                    stack.append((container, []))
                    i += 1
                    continue
            elif c == 0x22:
                value, i = self._string(i)
            elif c == ord("-") or c in _DIGITS:
                value, i = self._number(i)
            elif c == ord("t"):
                value, i = True, self._literal(i, b"true")
            elif c == ord("f"):
                value, i = False, self._literal(i, b"false")
            elif c == ord("n"):
                value, i = None, self._literal(i, b"null")
            else:
                raise _bad(c, "looking for beginning of value")
            # -- hand the finished value to its parents, closing as needed --
            while True:
                if not stack:
                    i = self._ws(i)
                    if i != self.n:
                        raise _bad(data[i], "after top-level value")
                    return value
                top, pending = stack[-1]
                i = self._ws(i)
                c = self._byte(i)
                if isinstance(top, _Obj):
                    top.pairs.append((pending[0], value))
                    if c == ord(","):
                        key, i = self._key(i + 1)
                        pending[0] = key
                        break
                    if c != ord("}"):
                        raise _bad(c, "after object key:value pair")
                else:
                    top.items.append(value)
                    if c == ord(","):
                        i += 1
                        break
                    if c != ord("]"):
                        raise _bad(c, "after array element")
                stack.pop()
                value = top
                i += 1


def _parse_json(data: bytes) -> _Value:
    return _Parser(data).parse()


def _kind(v: _Value) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, str):
        return "string"
    if isinstance(v, _Num):
        return "number"
    if isinstance(v, _Obj):
        return "object"
    if isinstance(v, _Arr):
        return "array"
    return "null"


def _field_for(key: str, fields: tuple[str, ...]) -> str | None:
    """encoding/json field lookup: exact name, else Unicode-fold match.

    For all-ASCII-letter field names the fold match is: ASCII letters
    case-insensitively, plus U+017F (long s) ~ 's' and U+212A (Kelvin) ~ 'k'.
    """
    if key in fields:
        return key
    folded = []
    for ch in key:
        if ch < "\x80":
            folded.append(ch.lower())
        elif ch == "\u017f":
            folded.append("s")
        elif ch == "\u212a":
            folded.append("k")
        else:
            return None
    fk = "".join(folded)
    for f in fields:
        if f == fk:
            return f
    return None


def _type_error(kind: str, field: str | None, gotype: str) -> str:
    where = f"Go struct field {field}" if field else "Go value"
    return f"json: cannot unmarshal {kind} into {where} of type {gotype}"


# --------------------------------------------------------------------------
# hashicorp/go-version
# --------------------------------------------------------------------------

# NewVersion's pattern (VersionRegexpRaw), anchored by fullmatch -- the same
# as Go's ^...$ (Go's $ never matches before a trailing newline).  Python's
# backtracking engine picks the same submatches as Go's leftmost-first RE2.
_VERSION_RE = re.compile(
    r"v?([0-9]+(\.[0-9]+)*?)"
    r"(-([0-9]+[0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)"
    r"|(-?([A-Za-z\-~]+[0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)))?"
    r"(\+([0-9A-Za-z\-~]+(\.[0-9A-Za-z\-~]+)*))?"
    r"?"
)
_INT64_RE = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


def _parse_int64(s: str) -> tuple[int, bool]:
    """strconv.ParseInt(s, 10, 64): (value, ok), with Go's error values
    (0 for a syntax error, the clamped bound for a range error)."""
    if not _INT64_RE.fullmatch(s):
        return 0, False
    v = int(s)
    if v > _INT64_MAX:
        return _INT64_MAX, False
    if v < _INT64_MIN:
        return _INT64_MIN, False
    return v, True


@dataclass(frozen=True)
class _Version:
    segments: tuple[int, ...]
    pre: str
    metadata: str
    original: str

    def string(self) -> str:
        s = ".".join(str(x) for x in self.segments)
        if self.pre:
            s += "-" + self.pre
        if self.metadata:
            s += "+" + self.metadata
        return s


def _new_version(v: str) -> _Version | str:
    """version.NewVersion: a _Version, or the error text of go-version 1.3.0."""
    m = _VERSION_RE.fullmatch(v)
    if m is None:
        return f"Malformed version: {v}"
    segments: list[int] = []
    for part in m.group(1).split("."):
        val, ok = _parse_int64(part)
        if not ok:
            return f"Error parsing version: strconv.ParseInt: parsing {_go_quote(part)}: value out of range"
        segments.append(val)
    while len(segments) < 3:
        segments.append(0)
    pre = m.group(7) or m.group(4) or ""
    return _Version(tuple(segments), pre, m.group(10) or "", v)


def _compare_part(a: str, b: str) -> int:
    if a == b:
        return 0
    a_int, a_num = _parse_int64(a)
    b_int, b_num = _parse_int64(b)
    # An empty part (one prerelease is shorter) is decided by the other part.
    if a == "":
        return -1 if b_num else 1
    if b == "":
        return 1 if a_num else -1
    if a_num and not b_num:
        return -1
    if not a_num and b_num:
        return 1
    if not a_num and not b_num and a > b:
        return 1
    # Reached for two numbers, and also for two non-numbers with a < b, in
    # which case Go compares ParseInt's error values (0 or a clamped bound).
    if a_int > b_int:
        return 1
    return -1


def _compare_prereleases(a: str, b: str) -> int:
    if a == b:
        return 0
    pa = a.split(".")
    pb = b.split(".")
    for i in range(max(len(pa), len(pb))):
        c = _compare_part(pa[i] if i < len(pa) else "", pb[i] if i < len(pb) else "")
        if c != 0:
            return c
    return 0


def _all_zero(segs: tuple[int, ...]) -> bool:
    return all(s == 0 for s in segs)


def _compare(a: _Version, b: _Version) -> int:
    """(*Version).Compare."""
    if a.string() == b.string():
        return 0
    if a.segments == b.segments:
        # Same segments: only the prerelease matters (metadata never does).
        if a.pre == "" and b.pre == "":
            return 0
        if a.pre == "":
            return 1
        if b.pre == "":
            return -1
        return _compare_prereleases(a.pre, b.pre)
    # Different segments (possibly different lengths): compare numerically,
    # a shorter list equals a longer one whose extra segments are all zero --
    # and the prerelease is then ignored entirely.
    sa, sb = a.segments, b.segments
    for i in range(max(len(sa), len(sb))):
        if i > len(sa) - 1:
            return 0 if _all_zero(sb[i:]) else -1
        if i > len(sb) - 1:
            return 0 if _all_zero(sa[i:]) else 1
        if sa[i] != sb[i]:
            return -1 if sa[i] < sb[i] else 1
    return 0


def _slice_stable(n: int, less: Callable[[int, int], bool], swap: Callable[[int, int], None]) -> None:
    """Go 1.19 sort.SliceStable (insertion-sorted blocks of 20 + SymMerge),
    step for step, so inconsistent comparators give Go's exact order."""

    def insertion_sort(a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and less(j, j - 1):
                swap(j, j - 1)
                j -= 1

    def swap_range(a: int, b: int, k: int) -> None:
        for i in range(k):
            swap(a + i, b + i)

    def rotate(a: int, m: int, b: int) -> None:
        i = m - a
        j = b - m
        while i != j:
            if i > j:
                swap_range(m - i, m, j)
                i -= j
            else:
                swap_range(m - i, m + j - i, i)
                j -= i
        swap_range(m - i, m, i)

    def sym_merge(a: int, m: int, b: int) -> None:
        if m - a == 1:
            i, j = m, b
            while i < j:
                h = (i + j) >> 1
                if less(h, a):
                    i = h + 1
                else:
                    j = h
            for k in range(a, i - 1):
                swap(k, k + 1)
            return
        if b - m == 1:
            i, j = a, m
            while i < j:
                h = (i + j) >> 1
                if not less(m, h):
                    i = h + 1
                else:
                    j = h
            for k in range(m, i, -1):
                swap(k, k - 1)
            return
        mid = (a + b) >> 1
        nn = mid + m
        if m > mid:
            start, r = nn - b, mid
        else:
            start, r = a, m
        p = nn - 1
        while start < r:
            c = (start + r) >> 1
            if not less(p - c, c):
                start = c + 1
            else:
                r = c
        end = nn - start
        if start < m < end:
            rotate(start, m, end)
        if a < start < mid:
            sym_merge(a, start, mid)
        if mid < end < b:
            sym_merge(mid, end, b)

    block = 20
    a, b = 0, block
    while b <= n:
        insertion_sort(a, b)
        a = b
        b += block
    insertion_sort(a, n)
    while block < n:
        a, b = 0, 2 * block
        while b <= n:
            sym_merge(a, a + block, b)
            a = b
            b += 2 * block
        m = a + block
        if m < n:
            sym_merge(a, m, n)
        block *= 2


# --------------------------------------------------------------------------
# The pure-Python decoder
# --------------------------------------------------------------------------


class PyDecoder:
    """Nomad's decoding rules, re-implemented in Python (see module doc)."""

    def decode_fetch(
        self,
        stdout: bytes,
        provider: str = "provider",
        secret: str = "secret",
        *,
        exit_code: int = 0,
    ) -> FetchDecode:
        if exit_code != 0:
            return _failed_fetch(exit_code, provider, secret)
        try:
            top = _parse_json(stdout)
        except _JsonSyntaxError as e:
            return FetchDecode(False, False, None, str(e), None)
        if top is None:
            return FetchDecode(False, True, None, NIL_FETCH_MSG, None)
        if not isinstance(top, _Obj):
            err = _type_error(_kind(top), None, "main.SecretResponse")
            return FetchDecode(False, False, None, err, None)
        result: dict[str, str] | None = None
        plugin_error: str | None = None
        saved: str | None = None
        for key, val in top.pairs:
            field = _field_for(key, ("result", "error"))
            if field == "result":
                if val is None:
                    result = None
                elif isinstance(val, _Obj):
                    if result is None:
                        result = {}
                    for k, v in val.pairs:
                        if isinstance(v, str):
                            result[k] = v
                        else:
                            if v is not None and saved is None:
                                saved = _type_error(_kind(v), "SecretResponse.result", "string")
                            result[k] = ""
                elif saved is None:
                    saved = _type_error(_kind(val), "SecretResponse.result", "map[string]string")
            elif field == "error":
                if val is None:
                    plugin_error = None
                elif isinstance(val, str):
                    plugin_error = val
                elif saved is None:
                    saved = _type_error(_kind(val), "SecretResponse.error", "string")
        if saved is not None:
            return FetchDecode(False, False, None, saved, None)
        if plugin_error is not None:
            msg = (
                f"provider {_go_quote(provider)} for secret {_go_quote(secret)} "
                f"response contained error: {_go_quote(plugin_error)}"
            )
            return FetchDecode(False, True, result, msg, plugin_error)
        return FetchDecode(True, True, result, "", None)

    def decode_fingerprint(self, stdout: bytes, *, exit_code: int = 0) -> FingerprintDecode:
        if exit_code != 0:
            return _failed_fingerprint(exit_code)
        try:
            top = _parse_json(stdout)
        except _JsonSyntaxError as e:
            return FingerprintDecode(False, False, None, None, str(e))
        if top is None:
            return FingerprintDecode(False, True, None, None, NIL_FINGERPRINT_MSG)
        if not isinstance(top, _Obj):
            err = _type_error(_kind(top), None, "main.PluginFingerprint")
            return FingerprintDecode(False, False, None, None, err)
        version: _Version | None = None
        ptype: str | None = None
        saved: str | None = None
        for key, val in top.pairs:
            field = _field_for(key, ("version", "type"))
            if field == "version":
                if val is None:
                    version = None
                elif isinstance(val, str):
                    parsed = _new_version(val)
                    if isinstance(parsed, str):
                        # UnmarshalText's error aborts Unmarshal immediately.
                        return FingerprintDecode(False, False, None, None, parsed)
                    version = parsed
                elif saved is None:
                    saved = _type_error(_kind(val), "PluginFingerprint.version", "*main.nomadVersion")
            elif field == "type":
                if val is None:
                    ptype = None
                elif isinstance(val, str):
                    ptype = val
                elif saved is None:
                    saved = _type_error(_kind(val), "PluginFingerprint.type", "string")
        if saved is not None:
            return FingerprintDecode(False, False, None, None, saved)
        orig = version.original if version is not None else None
        if version is None:
            reason = "skipped: version is missing or null"
        elif ptype is None:
            reason = "skipped: type is missing or null"
        elif ptype != "secrets":
            reason = f'skipped: type is {_go_quote(ptype)}, not "secrets"'
        else:
            return FingerprintDecode(True, True, orig, ptype, "")
        return FingerprintDecode(False, True, orig, ptype, reason)

    def parses(self, v: str) -> bool:
        return isinstance(_new_version(v), _Version)

    def canonical(self, v: str) -> str | None:
        """``Version.String()``, or None when ``v`` does not parse."""
        parsed = _new_version(v)
        return parsed.string() if isinstance(parsed, _Version) else None

    def compare(self, a: str, b: str) -> int:
        va, vb = _new_version(a), _new_version(b)
        if isinstance(va, str):
            raise ValueError(va)
        if isinstance(vb, str):
            raise ValueError(vb)
        return _compare(va, vb)

    def sort_versions(self, vs: list[str]) -> list[str]:
        """The parsable ``vs``, sorted by sort.SliceStable + LessThan."""
        items = [p for p in map(_new_version, vs) if isinstance(p, _Version)]

        def less(i: int, j: int) -> bool:
            return _compare(items[i], items[j]) < 0

        def swap(i: int, j: int) -> None:
            items[i], items[j] = items[j], items[i]

        _slice_stable(len(items), less, swap)
        return [p.original for p in items]

    def versions_report(self, vs: list[str]) -> VersionsReport:
        parsed_list = [_new_version(v) for v in vs]
        parsed: dict[str, bool] = {}
        canonical: dict[str, str] = {}
        errors: dict[str, str] = {}
        for v, p in zip(vs, parsed_list, strict=True):
            parsed[v] = isinstance(p, _Version)
            if isinstance(p, _Version):
                canonical[v] = p.string()
            else:
                errors[v] = p
        good = [(i, p) for i, p in enumerate(parsed_list) if isinstance(p, _Version)]
        compare = {(i, j): _compare(a, b) for i, a in good for j, b in good}
        return VersionsReport(parsed, canonical, errors, self.sort_versions(vs), compare)


# --------------------------------------------------------------------------
# The Go-backed decoder
# --------------------------------------------------------------------------


def _get(d: dict[str, Any], key: str, typ: type) -> Any:
    val = d.get(key)
    if not isinstance(val, typ):
        raise RuntimeError(f"gocheck output: {key!r} is {val!r}, expected {typ.__name__}")
    return val


def _get_opt_str(d: dict[str, Any], key: str) -> str | None:
    val = d.get(key)
    if val is None or isinstance(val, str):
        return val
    raise RuntimeError(f"gocheck output: {key!r} is {val!r}, expected string or null")


def _get_str_map(d: dict[str, Any], key: str, vtype: type) -> dict[str, Any]:
    val = _get(d, key, dict)
    for k, v in val.items():
        if not isinstance(v, vtype):
            raise RuntimeError(f"gocheck output: {key}[{k!r}] is {v!r}")
    return dict(val)


class GoDecoder:
    """Decodes by running the compiled ``gocheck`` binary."""

    def __init__(self, binary: Path, timeout: float = 60.0) -> None:
        self.binary = binary
        self.timeout = timeout

    def _run(self, args: list[str], stdin: bytes = b"") -> dict[str, Any]:
        proc = subprocess.run(
            [str(self.binary), *args],
            input=stdin,
            capture_output=True,
            timeout=self.timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{self.binary} {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')}"
            )
        out = json.loads(proc.stdout)
        if not isinstance(out, dict):
            raise RuntimeError(f"gocheck output is not an object: {proc.stdout!r}")
        return out

    def decode_fetch(
        self,
        stdout: bytes,
        provider: str = "provider",
        secret: str = "secret",
        *,
        exit_code: int = 0,
    ) -> FetchDecode:
        if exit_code != 0:
            return _failed_fetch(exit_code, provider, secret)
        out = self._run(["fetch", provider, secret], stdout)
        result = out.get("result")
        return FetchDecode(
            ok=_get(out, "ok", bool),
            decoded=_get(out, "decoded", bool),
            result=None if result is None else _get_str_map(out, "result", str),
            error=_get(out, "error", str),
            plugin_error=_get_opt_str(out, "plugin_error"),
        )

    def decode_fingerprint(self, stdout: bytes, *, exit_code: int = 0) -> FingerprintDecode:
        if exit_code != 0:
            return _failed_fingerprint(exit_code)
        out = self._run(["fingerprint"], stdout)
        return FingerprintDecode(
            ok=_get(out, "ok", bool),
            decoded=_get(out, "decoded", bool),
            version=_get_opt_str(out, "version"),
            plugin_type=_get_opt_str(out, "type"),
            error=_get(out, "error", str),
        )

    def versions_report(self, vs: list[str]) -> VersionsReport:
        out = self._run(["versions", *vs])
        compare: dict[tuple[int, int], int] = {}
        for row in _get(out, "compare", list):
            i, j, c = row
            compare[(int(i), int(j))] = int(c)
        return VersionsReport(
            parsed=_get_str_map(out, "parsed", bool),
            canonical=_get_str_map(out, "canonical", str),
            errors=_get_str_map(out, "errors", str),
            sorted=[str(x) for x in _get(out, "sorted", list)],
            compare=compare,
        )

    def parses(self, v: str) -> bool:
        if "\x00" in v:  # cannot be passed in argv; never matches the regexp
            return False
        return bool(self.versions_report([v]).parsed[v])

    def canonical(self, v: str) -> str | None:
        """``Version.String()``, or None when ``v`` does not parse."""
        return self.versions_report([v]).canonical.get(v)

    def compare(self, a: str, b: str) -> int:
        out = self._run(["compare", a, b])
        cmp = out.get("cmp")
        if not isinstance(cmp, int):
            raise ValueError(str(out.get("error")))
        return cmp

    def sort_versions(self, vs: list[str]) -> list[str]:
        """The parsable ``vs``, sorted by sort.SliceStable + LessThan."""
        return self.versions_report(vs).sorted


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------


def find_go() -> Path | None:
    """The ``go`` binary: $GOCHECK_GO, then PATH, then usual install dirs."""
    candidates = [os.environ.get("GOCHECK_GO"), shutil.which("go")]
    candidates += ["/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return Path(c)
    return None


def find_gopath() -> Path | None:
    """A GOPATH holding github.com/hashicorp/go-version (Debian: /usr/share/gocode)."""
    candidates = [p for p in os.environ.get("GOPATH", "").split(os.pathsep) if p]
    candidates += [str(Path.home() / "go"), "/usr/share/gocode"]
    for c in candidates:
        if (Path(c) / _GO_VERSION_PKG / "version.go").is_file():
            return Path(c)
    return None


def go_available() -> bool:
    """True when a Go toolchain and the go-version source are installed."""
    return find_go() is not None and find_gopath() is not None


def build(cache_dir: Path) -> Path:
    """Build ``gocheck`` into ``cache_dir`` (once per main.go content).

    GOPATH mode, no network: GO111MODULE=off, GOPATH=<dir with go-version>,
    GOCACHE=<cache_dir>/gocache, CGO_ENABLED=0, GOFLAGS= and GOENV=off.
    """
    go = find_go()
    if go is None:
        raise RuntimeError("gocheck: no Go toolchain found (install golang-go or set GOCHECK_GO)")
    gopath = find_gopath()
    if gopath is None:
        raise RuntimeError(
            "gocheck: github.com/hashicorp/go-version source not found in GOPATH "
            "or /usr/share/gocode (install golang-github-hashicorp-go-version-dev)"
        )
    digest = hashlib.sha256(MAIN_GO.read_bytes())
    digest.update(b"\0" + str(go.resolve()).encode())
    digest.update(b"\0" + (gopath / _GO_VERSION_PKG / "version.go").read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    binary = cache_dir / f"gocheck-{digest.hexdigest()[:16]}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GO111MODULE="off",
        GOPATH=str(gopath),
        GOCACHE=str(cache_dir / "gocache"),
        GOFLAGS="",
        GOENV="off",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        CGO_ENABLED="0",
    )
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp_bin = Path(tmp) / "gocheck"
        proc = subprocess.run(
            [str(go), "build", "-o", str(tmp_bin), MAIN_GO.name],
            cwd=MAIN_GO.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"gocheck: go build failed (exit {proc.returncode}):\n{proc.stderr}")
        os.replace(tmp_bin, binary)  # atomic: concurrent builders are safe
    return binary


def decoder(cache_dir: Path) -> GoDecoder | PyDecoder:
    """The Go-backed decoder when Go is available, else the Python one."""
    if go_available():
        return GoDecoder(build(cache_dir))
    return PyDecoder()
