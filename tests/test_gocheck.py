"""What the Nomad client makes of a plugin's stdout, decoded by Go itself
(tests/support/gocheck/main.go: encoding/json and go-version into Nomad's types).

First our own answers (nomad_secrets.nomad.protocol), then the rules that shaped
them, pinned on crafted bytes: each row is a fact about Nomad's decoding
that the plugin relies on, and fails if the decoder stops doing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from support import gocheck
from support.gocheck import FetchDecode, GoDecoder

from nomad_secrets._version import GO_VERSION
from nomad_secrets.nomad.protocol import encode_error, encode_result, fingerprint_line

# --- our own answers -----------------------------------------------------------


def test_our_result_reaches_nomad_as_written(decoder: GoDecoder) -> None:
    values = {
        "plain": "s3cr3t",
        "": "an empty key",
        "a": "lower",
        "A": "upper: map keys stay case-sensitive",
        "ключ": "é, 😀 (a surrogate pair in JSON), U+2028 \u2028 and NUL \x00",
        "quotes": '"\\/\b\f\n\r\t\x7f',
        "empty": "",
    }
    got = decoder.decode_fetch(encode_result(values))
    assert got == FetchDecode(True, True, values, "", None)


def test_a_lone_surrogate_reaches_nomad_as_the_replacement_character(decoder: GoDecoder) -> None:
    # json.loads('"\\ud800"') gives Python a lone surrogate; Go cannot keep it.
    got = decoder.decode_fetch(encode_result({"k": "a\ud800b"}))
    assert got.ok and got.result == {"k": "a\ufffdb"}


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("", '"error"'),  # "error": "" would fail the fetch with an empty message
        ("secret 'db' not found", "\"secret 'db' not found\""),
        ('say "hi"\nthen é\x00', '"say \\"hi\\"\\nthen é\\x00"'),  # fmt's %q
    ],
)
def test_our_error_fails_the_fetch_and_nomad_quotes_it(decoder: GoDecoder, message: str, shown: str) -> None:
    got = decoder.decode_fetch(encode_error(message), "aws", "db")
    assert (got.ok, got.decoded, got.result) == (False, True, {})
    assert got.error == f'provider "aws" for secret "db" response contained error: {shown}'


def test_our_fingerprint_registers_the_plugin(decoder: GoDecoder) -> None:
    got = decoder.decode_fingerprint(fingerprint_line(GO_VERSION))
    assert (got.ok, got.version, got.plugin_type) == (True, GO_VERSION, "secrets")


# --- fetch: Nomad's rules on crafted output --------------------------------------

# (id, stdout, ok, decoded, result, plugin_error)
FETCH_CASES: list[tuple[str, bytes, bool, bool, dict[str, str] | None, str | None]] = [
    ("valid", b'{"result":{"user":"admin"}}', True, True, {"user": "admin"}, None),
    ("error-null-is-success", b'{"result":{"a":"b"},"error":null}', True, True, {"a": "b"}, None),
    ("error-empty-string-fails", b'{"result":{"a":"b"},"error":""}', False, True, {"a": "b"}, ""),
    ("error-with-result-fails", b'{"result":{},"error":"denied"}', False, True, {}, "denied"),
    # A top-level null sets Nomad's *SecretResponse to nil, no error: a panic.
    ("top-level-null", b"null", False, True, None, None),
    # Struct fields match keys case-insensitively (and U+017F folds to s).
    ("Result", b'{"Result":{"a":"b"}}', True, True, {"a": "b"}, None),
    ("RESULT", b'{"RESULT":{"a":"b"}}', True, True, {"a": "b"}, None),
    ("long-s", '{"re\u017fult":{"a":"b"}}'.encode(), True, True, {"a": "b"}, None),
    ("ERROR", b'{"ERROR":"boom"}', False, True, None, "boom"),
    ("misspelt-key-is-success-with-nothing", b'{"results":{"a":"b"}}', True, True, None, None),
    # A repeated result merges into the map decoded so far; null resets it.
    (
        "duplicate-result-merges",
        b'{"result":{"a":"1","b":"1"},"Result":{"b":"2"}}',
        True,
        True,
        {"a": "1", "b": "2"},
        None,
    ),
    ("duplicate-result-null-resets", b'{"result":{"a":"1"},"result":null}', True, True, None, None),
    (
        "duplicate-error-last-wins",
        b'{"error":"x","error":null,"result":{"a":"b"}}',
        True,
        True,
        {"a": "b"},
        None,
    ),
    # Values must be strings: anything else fails the whole decode.
    ("number-value", b'{"result":{"port":8080}}', False, False, None, None),
    ("bool-value", b'{"result":{"tls":true}}', False, False, None, None),
    ("object-value", b'{"result":{"db":{"user":"x"}}}', False, False, None, None),
    ("null-value-is-empty-string", b'{"result":{"a":null}}', True, True, {"a": ""}, None),
    ("error-number", b'{"result":{"a":"b"},"error":1}', False, False, None, None),
    # Invalid UTF-8 is replaced byte by byte, not refused.
    ("invalid-utf8", b'{"result":{"k\xff":"\xe2\x82a"}}', True, True, {"k\ufffd": "\ufffd\ufffda"}, None),
    # Exactly one JSON value, with whitespace around it only.
    ("trailing-newline", b'{"result":{"a":"b"}}\n', True, True, {"a": "b"}, None),
    ("trailing-data", b'{"result":{"a":"b"}} warning: x', False, False, None, None),
    ("two-objects", b'{"result":{"a":"b"}}\n{"result":{}}', False, False, None, None),
    ("byte-order-mark", b'\xef\xbb\xbf{"result":{"a":"b"}}', False, False, None, None),
    ("empty-output", b"", False, False, None, None),
    ("NaN", b'{"result":{"a":"b"},"n":NaN}', False, False, None, None),
    ("unknown-fields-ignored", b'{"result":{"a":"b"},"meta":[1,{}]}', True, True, {"a": "b"}, None),
]


@pytest.mark.parametrize(
    ("stdout", "ok", "decoded", "result", "plugin_error"),
    [case[1:] for case in FETCH_CASES],
    ids=[case[0] for case in FETCH_CASES],
)
def test_fetch(
    decoder: GoDecoder,
    stdout: bytes,
    ok: bool,
    decoded: bool,
    result: dict[str, str] | None,
    plugin_error: str | None,
) -> None:
    got = decoder.decode_fetch(stdout)
    assert (got.ok, got.decoded, got.result, got.plugin_error) == (ok, decoded, result, plugin_error)
    assert bool(got.error) is not ok  # Nomad says why whenever it fails


# --- fingerprint -----------------------------------------------------------------

# (id, stdout, ok, decoded, version: the node attribute, type)
FINGERPRINT_CASES: list[tuple[str, bytes, bool, bool, str | None, str | None]] = [
    ("valid", b'{"type":"secrets","version":"0.1.0"}', True, True, "0.1.0", "secrets"),
    ("original-spelling-kept", b'{"type":"secrets","version":"v1.2"}', True, True, "v1.2", "secrets"),
    (
        "prerelease-and-metadata",
        b'{"type":"secrets","version":"1.0.0-rc.1+g1a"}',
        True,
        True,
        "1.0.0-rc.1+g1a",
        "secrets",
    ),
    ("keys-case-insensitive", b'{"TYPE":"secrets","Version":"0.1.0"}', True, True, "0.1.0", "secrets"),
    ("type-secret", b'{"type":"secret","version":"0.1.0"}', False, True, "0.1.0", "secret"),
    ("type-Secrets", b'{"type":"Secrets","version":"0.1.0"}', False, True, "0.1.0", "Secrets"),
    ("type-missing", b'{"version":"0.1.0"}', False, True, "0.1.0", None),
    ("version-missing", b'{"type":"secrets"}', False, True, None, "secrets"),
    ("version-null", b'{"type":"secrets","version":null}', False, True, None, "secrets"),
    # PEP 440 spellings do not parse: why scripts/goversion.py exists.
    ("pep440-post", b'{"type":"secrets","version":"1.0.0.post1"}', False, False, None, None),
    ("pep440-dev-local", b'{"type":"secrets","version":"1.0.0.dev3+g1a2b"}', False, False, None, None),
    ("version-empty", b'{"type":"secrets","version":""}', False, False, None, None),
    ("version-number", b'{"type":"secrets","version":1}', False, False, None, None),
    ("top-level-null", b"null", False, True, None, None),
    ("trailing-data", b'{"type":"secrets","version":"0.1.0"}x', False, False, None, None),
]


@pytest.mark.parametrize(
    ("stdout", "ok", "decoded", "version", "plugin_type"),
    [case[1:] for case in FINGERPRINT_CASES],
    ids=[case[0] for case in FINGERPRINT_CASES],
)
def test_fingerprint(
    decoder: GoDecoder,
    stdout: bytes,
    ok: bool,
    decoded: bool,
    version: str | None,
    plugin_type: str | None,
) -> None:
    got = decoder.decode_fingerprint(stdout)
    assert (got.ok, got.decoded, got.version, got.plugin_type) == (ok, decoded, version, plugin_type)
    assert bool(got.error) is not ok


def test_top_level_null_is_a_nil_pointer_for_both(decoder: GoDecoder) -> None:
    assert "nil pointer" in decoder.decode_fetch(b"null\n").error
    assert "nil pointer" in decoder.decode_fingerprint(b"null\n").error


def test_fingerprint_bad_version_is_go_versions_error(decoder: GoDecoder) -> None:
    got = decoder.decode_fingerprint(fingerprint_line("1.0.0.post1"))
    assert got.error.lower() == "malformed version: 1.0.0.post1"


# --- the program and its build ------------------------------------------------------


def test_build_is_cached_per_source(decoder: GoDecoder, tmp_path: Path) -> None:
    cache = decoder.binary.parent
    before = decoder.binary.stat().st_mtime_ns
    assert gocheck.build(cache) == decoder.binary
    assert decoder.binary.stat().st_mtime_ns == before


@pytest.mark.parametrize("args", [[], ["bogus"], ["fetch"], ["compare", "1"]])
def test_misuse_exits_2(decoder: GoDecoder, args: list[str]) -> None:
    proc = subprocess.run([str(decoder.binary), *args], input=b"", capture_output=True, check=False)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert b"usage:" in proc.stderr


def test_without_go_version_the_reason_is_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gocheck, "GO_VERSION_SRC", Path("src/example.invalid/none.go"))
    with pytest.raises(gocheck.GoMissing) as missing:
        gocheck.decoder(tmp_path)
    assert str(missing.value) == gocheck.NEEDS_GO


@pytest.mark.process
def test_without_go_tests_skip_with_one_reason_and_the_count_prints(tmp_path: Path) -> None:
    (tmp_path / "test_needs.py").write_text(
        "import pytest\n"
        "def test_decodes(decoder): pass\n"
        "def test_decodes_too(decoder): pass\n"
        "def test_other(): pytest.skip('needs a unicorn')\n"
        "def test_not_a_need(): pytest.skip('flaky on Tuesdays')\n"
        "def test_runs(): pass\n"
    )
    env = {**os.environ, "GOCHECK_GO": str(tmp_path / "no-go"), "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-ra", "test_needs.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tail = lines[lines.index(next(line for line in lines if "skipped for what this machine lacks" in line)) :]
    assert tail[1:3] == [f"2 tests skipped: {gocheck.NEEDS_GO}", "1 test skipped: needs a unicorn"]
    assert "1 passed, 4 skipped" in tail[-1]
    assert not any("Tuesdays" in line for line in tail)
    assert any("short test summary info" in line for line in lines[: len(lines) - len(tail)])
