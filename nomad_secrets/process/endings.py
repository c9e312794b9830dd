"""How a run of the plugin ends: the one owner of its last answers.

Nomad's SIGTERM (its plugin timeout, at every phase of a start and of a
fetch), a process out of memory or out of file descriptors, an unpack
cache damaged since it was made, and an internal error: the words of each
are here, and so is what every answer needs once nothing else can be
trusted: the one encoder of the error object Nomad reads
(``{"result": {}, "error": "..."}``, ``encode_error``), the private copy
of Nomad's stdout that answers go to once fds 1 and 2 are silenced
(``keep_stdout``; protocol.guard_stdio silences them), the one write of an
answer (``answer``), and the work that follows it (``after_answer``: the
audit record and metrics, records/observe.py).

Standard library only, and cheap to import: scripts/build stores it at the
zip's root (``nomad_secrets_endings``), where the bootstrap imports it
before a fetch does anything else. Nothing here imports json, re or
typing, or opens a file: the out-of-memory answer is made before memory
runs out (``out_of_memory_answers``), and the one for no descriptors left
is written with none. It compiles on Python 3.8 too: it writes the
bootstrap's refusal of an interpreter older than 3.10.

In the executable a run holds two copies: the zip root's while it starts,
the unpacked package's once the plugin's code runs (launch.py answers
through the one the plugin's protocol kept stdout with).
"""

from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs a fetch's start ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import NoReturn

# -- Nomad's SIGTERM, at each phase --------------------------------------------------

STOPPED_STARTING = "stopped by Nomad (SIGTERM) while nomad-secrets started; Nomad's plugin timeout passed"
STOPPED_AT_AGENT = (
    "stopped by Nomad (SIGTERM) while nomad-secrets waited for the node agent's answer: Nomad's plugin"
    " timeout passed; check that the store answers quickly from this node"
)
STOPPED_WAITING = (
    "stopped by Nomad (SIGTERM) while nomad-secrets waited for a slot to fetch in process: the node is"
    " starting more tasks than its cores can serve within Nomad's plugin timeout, and the node agent"
    " (docs/agent.md) is not taking them"
)
STOPPED_FETCHING = (
    "stopped by Nomad (SIGTERM) before the fetch finished: Nomad's plugin timeout"
    " passed; check that the store answers quickly from this node"
)


def stopped_unpacking(doing: str, where: str, age: float) -> str:
    """Stopped while it unpacked (or waited for another run to unpack) a
    new build into ``where``; ``doing`` "": while it started."""
    if not doing:
        return (
            f"stopped by Nomad (SIGTERM) while nomad-secrets started, after {age:.1f} s:"
            " Nomad's plugin timeout passed; a node starting many tasks at once may need the node"
            " agent (docs/agent.md)"
        )
    return (
        f"stopped by Nomad (SIGTERM) while nomad-secrets {doing} {where}, after"
        f" {age:.1f} s: the first fetches after an install or upgrade do this once;"
        " `nomad-secrets install` (or `check`) unpacks it before tasks start (docs/upgrading.md)"
    )


# -- limits of the process: memory and file descriptors ------------------------------

# Written as it is when even an answer cannot be made: no memory left to
# format one. out_of_memory_answers makes it with the limit's value while it can.
OUT_OF_MEMORY = (
    "nomad-secrets ran out of memory: the limits (RLIMIT_AS) of the process that started it apply;"
    " for a fetch, the Nomad client's: LimitAS or MemoryMax in its systemd unit (docs/troubleshooting.md)"
)
# Out of file descriptors before a module could be loaded: nothing else is left to say it.
NO_DESCRIPTORS_TO_START = (
    "nomad-secrets ran out of file descriptors while starting (RLIMIT_NOFILE, the Nomad client's own"
    " limit): the operator raises LimitNOFILE in the Nomad client's systemd unit, or ulimit -n where it"
    " starts, and restarts it"
)
# Why the node agent stops, or leaves a request, when a limit of its own runs
# out: the plugin can still fetch in process.
AGENT_OUT_OF_MEMORY = (
    "it ran out of memory under its own address space limit (LimitAS in the agent's unit); the plugin"
    " fetches in process, and the next fetch (or systemd's socket) starts the agent again"
)
AGENT_OUT_OF_DESCRIPTORS = (
    "it ran out of file descriptors under its own limit (LimitNOFILE in the agent's unit) for this request;"
    " the plugin fetches it in process"
)
MEMORY = "memory"
DESCRIPTORS = "file descriptors"
# OpenSSL's words when its allocation fails (ERR_R_MALLOC_FAILURE), which
# Python raises as ssl.SSLError, not MemoryError.
_OPENSSL_OUT_OF_MEMORY = "malloc failure"


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it, each once: causes, contexts
    (``raise ... from None`` still keeps ``__context__``) and urllib3's
    ``reason`` for a failed connection."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)


def ran_into(exc: BaseException) -> str:
    """``MEMORY`` or ``DESCRIPTORS`` when ``exc`` itself is a limit of the
    process running out (whatever a library calls it), else ""."""
    code = getattr(exc, "errno", None)
    if code in (errno.EMFILE, errno.ENFILE):
        return DESCRIPTORS
    if isinstance(exc, MemoryError) or code == errno.ENOMEM:
        return MEMORY
    if type(exc).__name__ == "SSLError" and _OPENSSL_OUT_OF_MEMORY in str(exc).lower():
        return MEMORY  # OpenSSL's own allocation (botocore's client, a handshake)
    return ""


def limit_in(exc: BaseException) -> str:
    """The limit ``exc`` or an exception behind it ran into, or ""."""
    for current in chain(exc):
        limit = ran_into(current)
        if limit:
            return limit
    return ""


def limit_value(limit: str) -> str:
    """ " (its address space limit: 28 MiB)" for ``MEMORY``, " (its limit
    (RLIMIT_NOFILE) is 64)" for ``DESCRIPTORS``, or "" when unlimited or
    unknown: the words docs/troubleshooting.md lists."""
    try:  # the limit's value, when there is room left to import resource
        import resource

        which = resource.RLIMIT_AS if limit == MEMORY else resource.RLIMIT_NOFILE
        soft = resource.getrlimit(which)[0]
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - the answer matters more than the number
        return ""
    if soft == resource.RLIM_INFINITY:
        return ""
    if limit == MEMORY:
        return f" (its address space limit: {soft >> 20} MiB)"
    return f" (its limit (RLIMIT_NOFILE) is {soft})"


def ran_out(limit: str, doing: str) -> str:
    """A start (launch.py) that ran out of ``limit`` while it was ``doing``."""
    return (
        f"ran out of {limit}{limit_value(limit)} while it {doing}: the limits (RLIMIT_NOFILE, RLIMIT_AS)"
        " of the process that started it apply; for a fetch, the Nomad client's: LimitNOFILE, LimitAS"
        " or MemoryMax in its systemd unit (docs/troubleshooting.md)"
    )


def out_of_descriptors(doing: str, error: int = errno.EMFILE) -> str:
    """A fetch that ran out of file descriptors while ``doing``: its own
    limit (EMFILE), or the kernel's for the node (ENFILE)."""
    if error == errno.ENFILE:
        return (
            f"the node ran out of file descriptors (ENFILE: the kernel's fs.file-max) while {doing};"
            " the operator finds the process that holds them, or raises fs.file-max (sysctl)"
        )
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (
        f"nomad-secrets ran out of file descriptors while {doing}: its limit (RLIMIT_NOFILE) is {soft},"
        " the limit of the process that started it; for a fetch that is the Nomad client: the operator"
        " raises LimitNOFILE in its systemd unit (HashiCorp's sets 65536), or ulimit -n where it starts,"
        " and restarts it"
    )


def out_of_memory(doing: str) -> str:
    """A fetch that ran out of memory while ``doing``."""
    return (
        f"nomad-secrets ran out of memory while {doing}{limit_value(MEMORY)}; the operator raises the"
        " Nomad client's memory limits (LimitAS or MemoryMax in its systemd unit, ulimit -v where it"
        " starts), or the job reads fewer secrets in one secret block"
    )


def out_of_memory_answers() -> tuple[bytes, bytes]:
    """What to write when memory runs out anywhere, made before it does
    (formatting a message then may itself fail): Nomad's answer for a
    fetch, and one line on stderr for the commands people run."""
    message = OUT_OF_MEMORY
    try:
        message = message.replace("of memory:", "of memory" + limit_value(MEMORY) + ":", 1)
        return encode_error(message), message.encode() + b"\n"
    except MemoryError:
        return encode_error(OUT_OF_MEMORY), OUT_OF_MEMORY.encode() + b"\n"


def ran_out_of_memory(answers: tuple[bytes, bytes]) -> NoReturn:
    """End with ``out_of_memory_answers``, made earlier: nothing more is
    made now, not even a set for the signal mask."""
    if operation() == "fetch":
        os.write(_out(), answers[0])
        os._exit(0)
    os.write(2, answers[1])  # check, install: not a traceback
    os._exit(1)


# -- a damaged unpack cache, an internal error ------------------------------------


def damaged(entry: str, what: str, moved: bool | None) -> str:
    """What a run says of a damaged unpack directory (cache.damaged);
    ``moved`` None: a long-lived process (the agent), which moves nothing."""
    said = f"nomad-secrets cannot run: its unpacked files in {entry} were damaged ({what}); "
    if moved is None:
        return said + "the operator removes that directory and restarts the node agent"
    if moved:
        return said + "they have been moved aside, and the next fetch unpacks them again"
    return (
        said
        + "they could not be moved aside: the operator removes them, and the next fetch unpacks them again"
    )


def internal_error(exc: BaseException) -> str:
    """An exception that is not ours, by its type only: its text could
    quote a secret."""
    return (
        f"internal error in nomad-secrets ({type(exc).__name__}); please report it."
        " The operator's debug log (plugin.debug_log) has the trace"
    )


def not_unpacked(exc: BaseException) -> str:
    """The unpack failed in a way not its own (CacheError says those)."""
    return f"nomad-secrets cannot start: {type(exc).__name__} while unpacking"


def not_started(exc: BaseException, unpacked: str = "") -> str:
    """Our own code failed to start, the unpack cache not being the cause:
    ``unpacked``, the directory it was imported from, when known."""
    if unpacked:
        return (
            f"nomad-secrets cannot start: {type(exc).__name__} while it started, with its unpacked code"
            f" in {unpacked} as unpacked; please report it"
        )
    return f"nomad-secrets cannot run: {type(exc).__name__} while it started; please report it"


# -- the error object, and Nomad's stdout -------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def encode_error(message: str) -> bytes:
    """``{"result": {}, "error": message}`` and a newline, byte for byte as
    ``json.dumps`` writes it (ASCII only), without importing json: out of
    file descriptors, not even that import works. An empty message would
    fail the fetch with nothing to read: "error" stands in."""
    return b'{"result": {}, "error": ' + _json_string(message or "error") + b"}\n"


def _json_string(text: str) -> bytes:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return ('"' + text + '"').encode()
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code > 0xFFFF:  # a surrogate pair, as JSON writes it
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return ('"' + "".join(out) + '"').encode()


_out_fd: int | None = None  # Nomad's stdout, kept once fds 1 and 2 are silenced
# The audit record and metrics (observe.py): written once the answer is out.
_after: Callable[[], None] | None = None


def keep_stdout() -> None:
    """Keep a private copy of Nomad's stdout for the answer, before fd 1 is
    pointed elsewhere (protocol.guard_stdio); OSError when none can be made."""
    global _out_fd
    if _out_fd is None:
        fd = os.dup(1)
        os.set_inheritable(fd, False)
        _out_fd = fd


def stdout_kept() -> bool:
    return _out_fd is not None


def restore_stdout() -> None:
    """Nomad's stdout back on fd 1, for a run that starts itself again
    (cache.heal: execve keeps fd 1, not the private copy)."""
    if _out_fd is not None:
        os.dup2(_out_fd, 1)


def _out() -> int:
    return _out_fd if _out_fd is not None else 1


def after_answer(work: Callable[[], None]) -> bool:
    """Run ``work`` once this process's answer is written, before it exits
    (one piece of work: the audit record and metrics); False when this
    process answers no one through ``answer`` (the node agent)."""
    global _after
    if _out_fd is None:
        return False
    _after = work
    return True


def answer(payload: bytes) -> NoReturn:
    """Write one answer to Nomad and exit 0, whatever else is running."""
    import _signal  # type: ignore[import-not-found,unused-ignore]  # built in: no file to open

    # A SIGTERM between two writes would interleave a second answer.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGTERM})
    fd = _out()
    view = memoryview(payload)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # Nomad is gone; nobody is left to tell
    if _after is not None:
        try:
            os.close(fd)  # the answer is whole: Nomad's reader sees its end now
            _after()  # bounded, never waits (observe.py); SIGTERM stays blocked
        except BaseException:  # noqa: BLE001, S110 - the answer is out; nothing may follow it
            pass
    os._exit(0)


def answer_error(message: str) -> NoReturn:
    answer(encode_error(message))


def operation() -> str:
    """``argv[1]``; ``CPI_OPERATION`` only without one (a job can set it)."""
    return sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CPI_OPERATION", "")


def end(message: str) -> NoReturn:
    """Nomad's answer (an error object, exit 0) for fetch; for the commands
    people and their tools run, exit 1, which must not look like success:
    check's own report of one problem (its monitoring parses the last line,
    or the JSON object), and a line on stderr for the others (install)."""
    if operation() in ("fetch", ""):
        answer_error(message)
    if operation() == "check":
        os.write(1, check_report(message, json_asked=_asks_json(sys.argv[2:])).encode())
        os._exit(1)
    os.write(2, message.encode() + b"\n")
    os._exit(1)


def check_summary(problems: int, warnings: int) -> str:
    """check's last line (ops/check.py), one form for every run, one that
    could not start included."""

    def count(number: int, noun: str) -> str:
        return f"{number} {noun}{'' if number == 1 else 's'}"

    said = f"{count(problems, 'problem')}, {count(warnings, 'warning')}"
    if problems:
        said += " (a fetch that meets a PROBLEM above fails until it is fixed)"
    return f"result: {'NOT OK' if problems else 'OK'}: {said}"


def check_report(message: str, json_asked: bool) -> str:
    """check's report of a run that could not start (before its code was
    unpacked): the one problem, in the form of any other check."""
    if json_asked:
        import json

        item = {"section": "start", "level": "problem", "message": message}
        report = {"result": "NOT OK", "problems": 1, "warnings": 0, "providers": {}, "items": [item]}
        return json.dumps(report, indent=1) + "\n"
    return f"start:\n  PROBLEM  {message}\n{check_summary(1, 0)}\n"


def _asks_json(argv: list[str]) -> bool:
    """check's ``--format json`` (or ``--format=json``), as argparse reads it."""
    from itertools import pairwise

    return "--format=json" in argv or ("--format", "json") in pairwise(argv)
