"""Tests for tests/gocheck.py and tests/gocheck/main.go.

Every table is checked against hand-written expectations for *both* decoders
and the Go and Python decoders are also compared field by field (including
error texts), so a drift in either one fails here.  The Go tests only skip
when no Go toolchain / go-version source is installed.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Union

import gocheck
import pytest
from gocheck import FetchDecode, FingerprintDecode, GoDecoder, PyDecoder

Decoder = Union[GoDecoder, PyDecoder]

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gocheck-cache")


@pytest.fixture(scope="session")
def go_binary(go_cache: Path) -> Path:
    if not gocheck.go_available():
        pytest.skip("Go toolchain or hashicorp/go-version source not installed")
    return gocheck.build(go_cache)


@pytest.fixture(scope="session")
def go(go_binary: Path) -> GoDecoder:
    return GoDecoder(go_binary)


@pytest.fixture(scope="session")
def py() -> PyDecoder:
    return PyDecoder()


@pytest.fixture(params=["go", "py"])
def dec(request: pytest.FixtureRequest) -> Decoder:
    """Each decoder in turn (the Go one only where Go is installed)."""
    d = request.getfixturevalue(str(request.param))
    assert isinstance(d, (GoDecoder, PyDecoder))
    return d


# --------------------------------------------------------------------------
# fetch
# --------------------------------------------------------------------------

NESTED_OK = b'{"result":{"a":"b"},"x":' + b"[" * 9999 + b"]" * 9999 + b"}"
NESTED_TOO_DEEP = b'{"result":{"a":"b"},"x":' + b"[" * 10000 + b"]" * 10000 + b"}"

# (id, plugin stdout, ok, decoded, result, plugin_error)
FETCH_CASES: list[tuple[str, bytes, bool, bool, dict[str, str] | None, str | None]] = [
    (
        "valid",
        b'{"result":{"user":"admin","pass":"s3cr3t"}}',
        True,
        True,
        {"user": "admin", "pass": "s3cr3t"},
        None,
    ),
    ("empty-result", b'{"result":{}}', True, True, {}, None),
    ("no-result-key", b"{}", True, True, None, None),
    ("result-null", b'{"result":null}', True, True, None, None),
    ("error-empty-string-fails", b'{"result":{"a":"b"},"error":""}', False, True, {"a": "b"}, ""),
    ("error-null-ok", b'{"result":{"a":"b"},"error":null}', True, True, {"a": "b"}, None),
    ("error-message", b'{"error":"permission denied"}', False, True, None, "permission denied"),
    (
        "error-then-null-last-wins",
        b'{"error":"x","error":null,"result":{"a":"b"}}',
        True,
        True,
        {"a": "b"},
        None,
    ),
    ("ERROR-capitalised", b'{"ERROR":"boom"}', False, True, None, "boom"),
    ("number-value-fails", b'{"result":{"port":8080}}', False, False, None, None),
    ("bool-value-fails", b'{"result":{"tls":true}}', False, False, None, None),
    ("nested-object-fails", b'{"result":{"db":{"user":"x"}}}', False, False, None, None),
    ("array-value-fails", b'{"result":{"hosts":["a","b"]}}', False, False, None, None),
    ("result-array-fails", b'{"result":["a"]}', False, False, None, None),
    ("result-string-fails", b'{"result":"a=b"}', False, False, None, None),
    ("error-number-fails", b'{"result":{"a":"b"},"error":1}', False, False, None, None),
    ("null-map-value-is-empty-string", b'{"result":{"a":null}}', True, True, {"a": ""}, None),
    ("trailing-garbage-fails", b'{"result":{"a":"b"}} garbage', False, False, None, None),
    ("two-objects-fails", b'{"result":{"a":"b"}}\n{"result":{"c":"d"}}', False, False, None, None),
    ("leading-whitespace-ok", b' \n\t\r{"result":{"a":"b"}}', True, True, {"a": "b"}, None),
    ("trailing-newline-ok", b'{"result":{"a":"b"}}\n', True, True, {"a": "b"}, None),
    ("Result-capitalised-accepted", b'{"Result":{"a":"b"}}', True, True, {"a": "b"}, None),
    ("RESULT-accepted", b'{"RESULT":{"a":"b"}}', True, True, {"a": "b"}, None),
    ("long-s-accepted", '{"re\u017fult":{"a":"b"}}'.encode(), True, True, {"a": "b"}, None),
    ("results-is-unknown", b'{"results":{"a":"b"}}', True, True, None, None),
    ("duplicate-map-keys-last-wins", b'{"result":{"a":"1","a":"2"}}', True, True, {"a": "2"}, None),
    (
        "repeated-result-merges",
        b'{"result":{"a":"1","b":"1"},"Result":{"b":"2","c":"3"}}',
        True,
        True,
        {"a": "1", "b": "2", "c": "3"},
        None,
    ),
    ("repeated-result-null-resets", b'{"result":{"a":"1"},"result":null}', True, True, None, None),
    (
        "unknown-fields-ignored",
        b'{"result":{"a":"b"},"meta":{"n":[1,-2.5e3,true,null,{}]}}',
        True,
        True,
        {"a": "b"},
        None,
    ),
    (
        "invalid-utf8-replaced-per-byte",
        b'{"result":{"k\xff":"\xe2\x82a"}}',
        True,
        True,
        {"k\ufffd": "\ufffd\ufffda"},
        None,
    ),
    (
        "lone-surrogate-escape-replaced",
        b'{"result":{"k":"\\ud800x\\ud83d\\ude00"}}',
        True,
        True,
        {"k": "\ufffdx\U0001f600"},
        None,
    ),
    (
        "escapes",
        b'{"result":{"k":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9"}}',
        True,
        True,
        {"k": '"\\/\b\f\n\r\t\u00e9'},
        None,
    ),
    ("top-level-null-is-nil-response", b"null", False, True, None, None),
    ("top-level-array-fails", b'[{"result":{}}]', False, False, None, None),
    ("top-level-string-fails", b'"x"', False, False, None, None),
    ("empty-output-fails", b"", False, False, None, None),
    ("whitespace-only-fails", b" \n", False, False, None, None),
    ("NaN-fails", b'{"result":{"a":"b"},"x":NaN}', False, False, None, None),
    ("leading-plus-fails", b'{"result":{"a":"b"},"x":+1}', False, False, None, None),
    ("leading-zero-fails", b'{"result":{"a":"b"},"x":01}', False, False, None, None),
    ("trailing-comma-fails", b'{"result":{"a":"b"},}', False, False, None, None),
    ("single-quotes-fail", b"{'result':{}}", False, False, None, None),
    ("raw-control-char-fails", b'{"result":{"a":"b\nc"}}', False, False, None, None),
    ("bad-escape-fails", b'{"result":{"a":"\\x41"}}', False, False, None, None),
    ("bom-fails", b'\xef\xbb\xbf{"result":{"a":"b"}}', False, False, None, None),
    ("truncated-fails", b'{"result":{"a":"b"}', False, False, None, None),
    ("eof-in-literal-fails", b'{"result":{"a":"b"},"x":tru', False, False, None, None),
    ("depth-10000-ok", NESTED_OK, True, True, {"a": "b"}, None),
    ("depth-10001-fails", NESTED_TOO_DEEP, False, False, None, None),
]


@pytest.mark.parametrize(
    ("stdout", "ok", "decoded", "result", "plugin_error"),
    [c[1:] for c in FETCH_CASES],
    ids=[c[0] for c in FETCH_CASES],
)
def test_fetch_table(
    dec: Decoder,
    stdout: bytes,
    ok: bool,
    decoded: bool,
    result: dict[str, str] | None,
    plugin_error: str | None,
) -> None:
    got = dec.decode_fetch(stdout)
    assert (got.ok, got.decoded) == (ok, decoded), got
    if decoded:
        assert got.result == result
        assert got.plugin_error == plugin_error
    else:
        assert got.result is None and got.plugin_error is None
        assert got.error  # the encoding/json error text
    assert (got.error == "") == ok


@pytest.mark.parametrize("stdout", [c[1] for c in FETCH_CASES], ids=[c[0] for c in FETCH_CASES])
def test_fetch_decoders_agree(go: GoDecoder, py: PyDecoder, stdout: bytes) -> None:
    assert py.decode_fetch(stdout) == go.decode_fetch(stdout)


def test_fetch_plugin_error_message(dec: Decoder) -> None:
    got = dec.decode_fetch(b'{"error":""}', "vault-kv", "db")
    assert got == FetchDecode(
        ok=False,
        decoded=True,
        result=None,
        error='provider "vault-kv" for secret "db" response contained error: ""',
        plugin_error="",
    )


def test_fetch_plugin_error_message_is_go_quoted(go: GoDecoder, py: PyDecoder) -> None:
    # fmt %q: \x00, \u00a0 (NBSP is not printable in Go), \u2028, quotes...
    stdout = '{"error":"a\\u0000\\u00a0\\u2028\\u00e9\\"\\\\\\t\\u007f😀"}'.encode()
    want = 'provider "p" for secret "s" response contained error: "a\\x00\\u00a0\\u2028é\\"\\\\\\t\\x7f😀"'
    assert go.decode_fetch(stdout, "p", "s").error == want
    assert py.decode_fetch(stdout, "p", "s").error == want


@pytest.mark.parametrize(
    ("exit_code", "message"),
    [(1, "exit status 1"), (2, "exit status 2"), (-9, "signal: killed")],
)
def test_fetch_nonzero_exit_discards_stdout(dec: Decoder, exit_code: int, message: str) -> None:
    got = dec.decode_fetch(b'{"result":{"a":"b"}}', "prov", "sec", exit_code=exit_code)
    assert got == FetchDecode(
        ok=False,
        decoded=False,
        result=None,
        error=f'failed executing plugin "prov" for secret "sec": {message}',
        plugin_error=None,
    )


# --------------------------------------------------------------------------
# fingerprint
# --------------------------------------------------------------------------

# (id, plugin stdout, ok, decoded, version, type)
FINGERPRINT_CASES: list[tuple[str, bytes, bool, bool, str | None, str | None]] = [
    ("valid", b'{"type":"secrets","version":"0.1.0"}', True, True, "0.1.0", "secrets"),
    ("original-kept", b'{"type":"secrets","version":"v1.2"}', True, True, "v1.2", "secrets"),
    ("prerelease-parses", b'{"type":"secrets","version":"1.0.0-rc.1"}', True, True, "1.0.0-rc.1", "secrets"),
    ("metadata-parses", b'{"type":"secrets","version":"1.0.0+g1a2b"}', True, True, "1.0.0+g1a2b", "secrets"),
    ("type-secret-skipped", b'{"type":"secret","version":"0.1.0"}', False, True, "0.1.0", "secret"),
    ("type-Secrets-skipped", b'{"type":"Secrets","version":"0.1.0"}', False, True, "0.1.0", "Secrets"),
    ("type-missing-skipped", b'{"version":"0.1.0"}', False, True, "0.1.0", None),
    ("type-null-skipped", b'{"type":null,"version":"0.1.0"}', False, True, "0.1.0", None),
    ("version-missing-skipped", b'{"type":"secrets"}', False, True, None, "secrets"),
    ("version-null-skipped", b'{"type":"secrets","version":null}', False, True, None, "secrets"),
    ("keys-case-insensitive", b'{"TYPE":"secrets","Version":"0.1.0"}', True, True, "0.1.0", "secrets"),
    ("post-release-fails", b'{"type":"secrets","version":"1.0.0.post1"}', False, False, None, None),
    ("space-in-version-fails", b'{"type":"secrets","version":" 1.0.0"}', False, False, None, None),
    ("empty-version-fails", b'{"type":"secrets","version":""}', False, False, None, None),
    ("version-number-fails", b'{"type":"secrets","version":1}', False, False, None, None),
    ("type-number-fails", b'{"type":1,"version":"0.1.0"}', False, False, None, None),
    ("top-level-null", b"null", False, True, None, None),
    ("top-level-array-fails", b"[]", False, False, None, None),
    ("garbage-fails", b'{"type":"secrets","version":"0.1.0"}x', False, False, None, None),
    (
        "extra-fields-ignored",
        b'{"type":"secrets","version":"0.1.0","name":"x","n":[1]}',
        True,
        True,
        "0.1.0",
        "secrets",
    ),
]


@pytest.mark.parametrize(
    ("stdout", "ok", "decoded", "version", "plugin_type"),
    [c[1:] for c in FINGERPRINT_CASES],
    ids=[c[0] for c in FINGERPRINT_CASES],
)
def test_fingerprint_table(
    dec: Decoder,
    stdout: bytes,
    ok: bool,
    decoded: bool,
    version: str | None,
    plugin_type: str | None,
) -> None:
    got = dec.decode_fingerprint(stdout)
    assert (got.ok, got.decoded, got.version, got.plugin_type) == (
        ok,
        decoded,
        version,
        plugin_type,
    ), got
    assert (got.error == "") == ok


@pytest.mark.parametrize("stdout", [c[1] for c in FINGERPRINT_CASES], ids=[c[0] for c in FINGERPRINT_CASES])
def test_fingerprint_decoders_agree(go: GoDecoder, py: PyDecoder, stdout: bytes) -> None:
    assert py.decode_fingerprint(stdout) == go.decode_fingerprint(stdout)


def test_fingerprint_error_texts(dec: Decoder) -> None:
    skipped = dec.decode_fingerprint(b'{"type":"secret","version":"0.1.0"}')
    assert skipped.error == 'skipped: type is "secret", not "secrets"'
    bad = dec.decode_fingerprint(b'{"type":"secrets","version":"1.0.0.post1"}')
    assert bad.error == "Malformed version: 1.0.0.post1"


def test_fingerprint_nonzero_exit(dec: Decoder) -> None:
    got = dec.decode_fingerprint(b'{"type":"secrets","version":"0.1.0"}', exit_code=3)
    assert got == FingerprintDecode(False, False, None, None, "exit status 3")


# --------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------

PARSE_CASES = [
    ("1.0.0", True),
    ("1.0.0-rc.1", True),
    ("1.0.0.post1", False),
    ("v1.0", True),
    ("1", True),
    ("1.0.0rc1", True),  # prerelease without "-"
    ("1.0.0+g1a2b", True),
    ("1.0.0-alpha.1.dev.2", True),
    ("1.0.0.1-0.dev.1", True),
    ("1.0.0-", True),  # prerelease "-"
    ("1.0.0+", False),
    ("1.0.0+a+b", False),
    ("1..0", False),
    ("", False),
    ("v", False),
    ("1.0.0\n", False),  # Go's $ does not match before a trailing newline
    (" 1.0.0", False),
    ("9223372036854775807", True),
    ("9223372036854775808", False),  # int64 overflow
    ("1.0.0-a..b", False),
    ("1.0.0\x00", False),
]


@pytest.mark.parametrize(("version", "ok"), PARSE_CASES, ids=[repr(c[0]) for c in PARSE_CASES])
def test_parses(dec: Decoder, version: str, ok: bool) -> None:
    assert dec.parses(version) is ok


def test_canonical(dec: Decoder) -> None:
    assert dec.canonical("v1.02") == "1.2.0"
    assert dec.canonical("1.0.0rc1") == "1.0.0-rc1"
    assert dec.canonical("1.0.0-") == "1.0.0--"
    assert dec.canonical("1.0.0.post1") is None


BRIEF_VERSIONS = [
    "1.0.0-alpha.1",
    "1.0.0-0.dev.3",
    "1.0.0-alpha.1.dev.2",
    "1.0.0-beta.2",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.0.1",
    "1.0.0.1-0.dev.1",
    "1.0.1",
    "1.0.0+g1a2b",
]

BRIEF_SORTED = [
    "1.0.0-0.dev.3",
    "1.0.0-alpha.1.dev.2",  # "alpha.1" vs "alpha.1.dev": a missing part beats a word
    "1.0.0-alpha.1",
    "1.0.0-beta.2",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.0+g1a2b",  # equal to 1.0.0 (metadata ignored): input order kept
    "1.0.0.1-0.dev.1",
    "1.0.0.1",
    "1.0.1",
]


def test_sort_brief_list(dec: Decoder) -> None:
    assert dec.sort_versions([*BRIEF_VERSIONS, "1.0.0.post1"]) == BRIEF_SORTED


def test_sort_is_stable_for_equal_versions(dec: Decoder) -> None:
    vs = ["1.0.0+g1a2b", "1.0.1", "v1.0.0", "1.0.0", "1.0", "1.0.0+zzz"]
    assert dec.sort_versions(vs) == ["1.0.0+g1a2b", "v1.0.0", "1.0.0", "1.0", "1.0.0+zzz", "1.0.1"]


@pytest.mark.parametrize("seed", range(6))
def test_sort_shuffled_agrees(go: GoDecoder, py: PyDecoder, seed: int) -> None:
    vs = BRIEF_VERSIONS * 3  # 30 items: more than one 20-item insertion block
    random.Random(seed).shuffle(vs)
    got = go.sort_versions(vs)
    assert py.sort_versions(vs) == got
    # Only 1.0.0 and 1.0.0+g1a2b compare equal; their input order survives.
    equal_in = [v for v in vs if v in ("1.0.0", "1.0.0+g1a2b")]
    equal_out = [v for v in got if v in ("1.0.0", "1.0.0+g1a2b")]
    assert equal_out == equal_in
    assert [v for v in got if v not in ("1.0.0", "1.0.0+g1a2b")] == sorted(
        (v for v in vs if v not in ("1.0.0", "1.0.0+g1a2b")), key=BRIEF_SORTED.index
    )


COMPARE_CASES = [
    ("1.0.0", "1.0.0", 0),
    ("1", "1.0.0", 0),
    ("v1.0.0", "1.0.0", 0),
    ("1.2", "1.10", -1),
    ("1.0.0+a", "1.0.0+b", 0),  # metadata never counts
    ("1.0.0-rc.1", "1.0.0", -1),
    ("1.0.0-alpha.1", "1.0.0-alpha.1.dev.2", 1),  # missing part vs word: missing wins
    ("1.0.0-alpha.1", "1.0.0-alpha.1.2", -1),  # missing part vs number: number wins
    ("1.0.0-0.dev.3", "1.0.0-alpha.1", -1),  # numbers before words
    ("1.0.0-rc.1", "1.0.0.0", 0),  # jagged segments: prerelease ignored
    ("1.0.0.0", "1.0.0", 0),
    ("1.0.0.1-0.dev.1", "1.0.0", 1),
    ("1.0.0-01", "1.0.0-1", -1),  # numerically equal parts: always -1 ...
    ("1.0.0-1", "1.0.0-01", -1),  # ... in both directions
    ("1.0.0-a.-1", "1.0.0-a.0", -1),  # "-1" is a (negative) number
    ("1.0.0-a.99999999999999999999", "1.0.0-a.b", 1),  # ParseInt's clamped error value
]


@pytest.mark.parametrize(("a", "b", "want"), COMPARE_CASES)
def test_compare(dec: Decoder, a: str, b: str, want: int) -> None:
    assert dec.compare(a, b) == want


def test_compare_rejects_unparsable(dec: Decoder) -> None:
    with pytest.raises(ValueError, match="Malformed version"):
        dec.compare("1.0.0", "1.0.0.post1")


def test_non_transitive_sort_agrees(go: GoDecoder, py: PyDecoder) -> None:
    # rc.1 == 1.0.0.0 == 1.0.0 but rc.1 < 1.0.0: the result depends on the
    # exact merge steps of sort.SliceStable, which PyDecoder reproduces.
    assert go.compare("1.0.0-rc.1", "1.0.0.0") == 0
    assert go.compare("1.0.0.0", "1.0.0") == 0
    assert go.compare("1.0.0-rc.1", "1.0.0") == -1
    pool = ["1.0.0-rc.1", "1.0.0.0", "1.0.0", "1.0.0-beta", "1.0", "1.0.0.0.0-a", "0.9", "1.0.1"]
    rng = random.Random(1234)
    for _ in range(5):
        vs = [rng.choice(pool) for _ in range(45)]
        assert py.sort_versions(vs) == go.sort_versions(vs)


def _random_version(rng: random.Random) -> str:
    alphabet = "0123456789.-+~vaAzZ"
    if rng.random() < 0.3:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    parts = [str(rng.choice([0, 1, 2, 10, 99999999999999999999])) for _ in range(rng.randint(1, 5))]
    s = rng.choice(["", "v"]) + ".".join(parts)
    if rng.random() < 0.6:
        pre = [
            rng.choice(["alpha", "rc", "dev", "0", "1", "01", "-1", "~", "a-b", ""])
            for _ in range(rng.randint(1, 4))
        ]
        s += rng.choice(["-", "", "-"]) + ".".join(pre)
    if rng.random() < 0.3:
        s += "+" + rng.choice(["g1a2b", "build.5", "", "x+y"])
    return s


def test_random_versions_agree(go: GoDecoder, py: PyDecoder) -> None:
    rng = random.Random(20240601)
    vs = [_random_version(rng) for _ in range(300)]
    go_report = go.versions_report(vs)
    assert sum(go_report.parsed.values()) > 50  # the generator is not all junk
    assert any(not ok for ok in go_report.parsed.values())
    assert py.versions_report(vs) == go_report


# --------------------------------------------------------------------------
# randomised JSON agreement
# --------------------------------------------------------------------------

_KEYS = [
    "result",
    "Result",
    "RESULT",
    "re\u017fult",
    "results",
    "error",
    "Error",
    "ERROR",
    "errors",
    "x",
    "r\u00e9sult",
    "version",
    "Version",
    "ver\u017fion",
    "type",
    "Type",
    "TYPE",
    "",
]
_STRINGS = [
    b'""',
    b'"a"',
    b'"secrets"',
    b'"secret"',
    b'"0.1.0"',
    b'"v1.2.3-rc.1+g1"',
    b'"1.0.0.post1"',
    b'"\\u00e9\\ud800"',
    b'"\xff\xfe"',
    b'"caf\xc3\xa9"',
    b'"\\n\\t"',
]
_SCALARS = [b"null", b"true", b"false", b"0", b"-1.5e3", b"12", *_STRINGS]
_MUTATIONS = [*b'{}[]",:\\ \n0-.eEtnu\xff\xc3\x01']


def _random_json(rng: random.Random, depth: int = 0) -> bytes:
    r = rng.random()
    if depth > 3 or r < 0.4:
        return rng.choice(_SCALARS)
    if r < 0.55:
        return b"[" + b",".join(_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))) + b"]"
    pairs = []
    for _ in range(rng.randint(0, 4)):
        key = rng.choice(_KEYS).encode()
        pairs.append(b'"' + key + b'":' + _random_json(rng, depth + 1))
    return b"{" + b",".join(pairs) + b"}"


def _random_doc(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        doc = bytearray(_random_json(rng))
    else:  # mostly an object at the top, as plugins print
        pairs = (
            b'"' + rng.choice(_KEYS).encode() + b'":' + _random_json(rng, 1) for _ in range(rng.randint(1, 4))
        )
        doc = bytearray(b"{" + b",".join(pairs) + b"}")
    for _ in range(rng.choice([0, 0, 1, 2])):
        pos = rng.randint(0, len(doc))
        op = rng.random()
        if op < 0.4 and pos < len(doc):
            del doc[pos]
        elif op < 0.7:
            doc.insert(pos, rng.choice(_MUTATIONS))
        elif pos < len(doc):
            doc[pos] = rng.choice(_MUTATIONS)
    return bytes(rng.choice([b"", b" ", b"\n"]) + doc + rng.choice([b"", b"\n", b" x"]))


def test_random_fetch_docs_agree(go: GoDecoder, py: PyDecoder) -> None:
    rng = random.Random(7)
    outcomes = set()
    for _ in range(250):
        doc = _random_doc(rng)
        want = go.decode_fetch(doc)
        assert py.decode_fetch(doc) == want, doc
        outcomes.add((want.ok, want.decoded))
    assert outcomes == {(True, True), (False, True), (False, False)}


def test_random_fingerprint_docs_agree(go: GoDecoder, py: PyDecoder) -> None:
    rng = random.Random(8)
    outcomes = set()
    for _ in range(250):
        doc = _random_doc(rng)
        want = go.decode_fingerprint(doc)
        assert py.decode_fingerprint(doc) == want, doc
        outcomes.add((want.ok, want.decoded))
    assert (False, True) in outcomes and (False, False) in outcomes


# --------------------------------------------------------------------------
# build / wrapper plumbing
# --------------------------------------------------------------------------


def test_build_is_cached(go_binary: Path, go_cache: Path) -> None:
    assert go_binary.parent == go_cache
    assert gocheck.MAIN_GO.parent not in go_binary.parents
    before = go_binary.stat().st_mtime_ns
    assert gocheck.build(go_cache) == go_binary
    assert go_binary.stat().st_mtime_ns == before


def test_build_cache_key_follows_main_go(
    go_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = tmp_path / "gocheck" / "main.go"
    changed.parent.mkdir()
    changed.write_bytes(gocheck.MAIN_GO.read_bytes() + b"\n// changed\n")
    monkeypatch.setattr(gocheck, "MAIN_GO", changed)
    other = gocheck.build(go_binary.parent)
    assert other != go_binary
    assert os.access(other, os.X_OK)


def test_build_without_go_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gocheck, "find_go", lambda: None)
    with pytest.raises(RuntimeError, match="no Go toolchain"):
        gocheck.build(tmp_path)
    assert not gocheck.go_available()
    assert isinstance(gocheck.decoder(tmp_path), PyDecoder)


def test_build_without_go_version_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gocheck, "find_gopath", lambda: None)
    with pytest.raises(RuntimeError, match="go-version source not found"):
        gocheck.build(tmp_path)
    assert not gocheck.go_available()


def test_decoder_prefers_go(go_binary: Path, go_cache: Path) -> None:
    d = gocheck.decoder(go_cache)
    assert isinstance(d, GoDecoder)
    assert d.binary == go_binary


@pytest.mark.parametrize("args", [[], ["bogus"], ["fetch", "only-one"], ["compare", "1"]])
def test_go_program_misuse_exits_2(go_binary: Path, args: list[str]) -> None:
    proc = subprocess.run([str(go_binary), *args], input=b"", capture_output=True, check=False)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"usage:" in proc.stderr
