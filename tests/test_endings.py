"""How a run ends has one owner, process/endings.py: the words of each last
answer (Nomad's SIGTERM, out of memory) and the error object's encoding
live there and in the plugin's protocol only; and what endings writes is
what json.dumps would, in ASCII, and what Go's encoding/json decodes as
Nomad does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from support.gocheck import GoDecoder

from nomad_secrets.process import endings

PACKAGE = ROOT / "nomad_secrets"
OWNERS = {PACKAGE / "process" / "endings.py", PACKAGE / "nomad" / "protocol.py"}
TEXTS = ("stopped by Nomad (SIGTERM)", "ran out of memory")
# The error object's own shape, as a literal or a dict display: an encoder of it.
ENCODER = re.compile(r"""\\?["']result\\?["']\s*:\s*\{\s*\}\s*,\s*\\?["']error\\?["']\s*:""")


def strays(path: Path, text: str) -> list[str]:
    """Where ``text`` (a file of ours) holds an ending's words or encodes
    the error object: ``path:line: the line``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if any(words in line for words in TEXTS) or ENCODER.search(line):
            found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_the_endings_words_and_the_error_object_have_one_owner() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in OWNERS:
            found += strays(path, path.read_text())
    assert found == [], "\n".join(found)
    for path in OWNERS:  # and the owners do hold them
        assert strays(path, path.read_text()), path


@pytest.mark.parametrize(
    "line",
    [  # how the old layout wrote them (bootstrap, launch, protocol, cli, limits)
        """    b'{"result": {}, "error": "stopped by Nomad (SIGTERM) while nomad-secrets started;'""",
        """        os.write(fd, b'{"result": {}, "error": ' + _json_string(message) + b"}\\n")""",
        """    return json.dumps({"result": {}, "error": message or "error"}, ensure_ascii=True)""",
        """    return json.dumps({'result': {}, 'error': message})""",
        """    "stopped by Nomad (SIGTERM) before the fetch finished: Nomad's plugin timeout\"""",
        """        f"nomad-secrets ran out of memory while {doing}{limit}; the operator raises\"""",
    ],
)
def test_the_owner_check_finds_a_stray(line: str) -> None:
    assert strays(PACKAGE / "x.py", line) != []


def test_reading_an_answer_is_not_encoding_one() -> None:
    # agent/server.py tells an error answer by its start, and logs its text
    assert strays(PACKAGE / "x.py", """payload.startswith(b'{"result": {}, "error"')""") == []


MESSAGES = [
    "",
    "plain ASCII: secret 'db' not found",
    'quotes " and a backslash \\ and a slash /',
    "lines\nand\r\ttabs\b\f, NUL \x00, unit separator \x1f, DEL \x7f",
    "non-ASCII: é ключ 秘密, U+2028 \u2028, a surrogate pair 😀",
]


@pytest.mark.parametrize("message", MESSAGES)
def test_the_error_object_is_what_json_dumps_writes(message: str) -> None:
    encoded = endings.encode_error(message)
    assert encoded == json.dumps({"result": {}, "error": message or "error"}).encode() + b"\n"
    assert encoded.isascii()
    assert json.loads(encoded) == {"result": {}, "error": message or "error"}


def test_every_code_point_is_encoded_as_json_dumps_does() -> None:
    """Each of the 1,114,112, lone surrogates included, alone and between
    ASCII (the fast path takes printable ASCII whole)."""
    for start in range(0, 0x110000, 0x1000):
        chars = "".join(map(chr, range(start, start + 0x1000)))
        for text in (chars, "a" + chars[::7] + "z"):
            assert endings.encode_error(text) == json.dumps({"result": {}, "error": text}).encode() + b"\n"


@pytest.mark.parametrize("message", MESSAGES)
def test_nomad_decodes_the_error_object(decoder: GoDecoder, message: str) -> None:
    got = decoder.decode_fetch(endings.encode_error(message), "aws", "db")
    assert (got.ok, got.decoded, got.result, got.plugin_error) == (False, True, {}, message or "error")


def test_the_answers_made_before_memory_runs_out_are_nomads_and_a_line(decoder: GoDecoder) -> None:
    """Made at a start under a limit (here 1 GiB): the error object names it,
    and so does the line for the commands people run."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, resource.RLIM_INFINITY));"
        f"sys.path.insert(0, {str(ROOT)!r}); from nomad_secrets.process import endings;"
        "answer, line = endings.out_of_memory_answers(); sys.stdout.buffer.write(answer + line)"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, check=True).stdout
    answer, line = out.split(b"\n", 1)
    said = decoder.decode_fetch(answer + b"\n").plugin_error
    assert said == line.decode().rstrip("\n")
    assert said.startswith("nomad-secrets ran out of memory (its address space limit: 1024 MiB): "), said


class SSLError(Exception):
    """Named as ssl's is: OpenSSL's failed allocation is not a MemoryError."""


class Reasoned(Exception):
    """urllib3 keeps a failed connection's cause as ``reason``."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__("failed")
        self.reason = reason


def raised(exc: BaseException, behind: BaseException | None = None, cause: bool = True) -> BaseException:
    """``exc`` as raised while handling ``behind`` (its context), or from it."""
    try:
        try:
            if behind is not None:
                raise behind
        except BaseException as inner:  # being chained is the point
            if cause:
                raise exc from inner
            raise exc from None  # still keeps __context__
        raise exc
    except BaseException as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "limit"),
    [
        (MemoryError(), endings.MEMORY),
        (OSError(12, "Cannot allocate memory"), endings.MEMORY),
        (SSLError("[SSL] Malloc failure (_ssl.c:1000)"), endings.MEMORY),
        (OSError(24, "Too many open files"), endings.DESCRIPTORS),
        (OSError(23, "Too many open files in system"), endings.DESCRIPTORS),
        (raised(RuntimeError("can't start new thread"), OSError(24, "x")), endings.DESCRIPTORS),
        (raised(ValueError("cannot connect"), MemoryError(), cause=False), endings.MEMORY),
        (Reasoned(OSError(24, "x")), endings.DESCRIPTORS),
        (raised(ImportError("x"), Reasoned(MemoryError())), endings.MEMORY),
        (OSError(28, "No space left on device"), ""),
        (SSLError("certificate verify failed"), ""),
        (raised(KeyError("x"), ValueError("y")), ""),
    ],
)
def test_a_limit_is_found_wherever_it_is_in_the_chain(exc: BaseException, limit: str) -> None:
    assert endings.limit_in(exc) == limit


def test_a_chain_that_loops_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert list(endings.chain(first)) == [first, second]
    assert endings.limit_in(first) == ""


def run_ending(body: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """``body`` in a process of its own, with endings imported, as ``argv``."""
    code = f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); from nomad_secrets.process import endings\n"
    return subprocess.run(
        [sys.executable, "-I", "-c", code + body, *argv], capture_output=True, env={}, timeout=60
    )


@pytest.mark.process
def test_the_answer_goes_to_the_kept_stdout_then_the_work_after_it() -> None:
    """Once fd 1 is silenced, the answer still reaches Nomad's stdout, whole,
    and its copy (fd 3, the lowest free) is closed before the work after
    it (the audit record) runs; without a kept stdout there is no after."""
    run = run_ending(
        "print(endings.after_answer(lambda: None), file=sys.stderr, flush=True)\n"
        "endings.keep_stdout()\n"
        "os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
        "os.write(1, b'lost')\n"
        "def after():\n"
        "    try:\n"
        "        os.fstat(3)\n"
        "    except OSError:\n"
        "        os.write(2, b'after, with the answer closed')\n"
        "print(endings.after_answer(after), file=sys.stderr, flush=True)\n"
        "endings.answer_error('boom')\n",
        "fetch",
    )
    assert run.returncode == 0, run
    assert run.stdout == b'{"result": {}, "error": "boom"}\n'
    assert run.stderr == b"False\nTrue\nafter, with the answer closed", run.stderr


@pytest.mark.parametrize(
    ("operation", "code", "out", "err"),
    [
        ("fetch", 0, b'{"result": {}, "error": "the cache is not private"}\n', b""),
        ("", 0, b'{"result": {}, "error": "the cache is not private"}\n', b""),
        ("install", 1, b"", b"the cache is not private\n"),
    ],
)
@pytest.mark.process
def test_a_start_that_cannot_go_on_answers_nomad_or_a_person(
    operation: str, code: int, out: bytes, err: bytes
) -> None:
    run = run_ending("endings.end('the cache is not private')", *([operation] if operation else []))
    assert (run.returncode, run.stdout, run.stderr) == (code, out, err)


def test_no_module_reaches_for_another_modules_state() -> None:
    """The private stdout was read through sys.modules from two modules;
    endings' public functions are the way in now."""
    found = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "sys.modules" in p.read_text()]
    assert found == []
