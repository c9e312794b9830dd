"""Nomad's side of the conversation: the only module that writes to a stream.

What Nomad requires (../shared/NOMAD_CONTRACT.md, from Nomad's source):

- exit status 0, or Nomad throws stdout and stderr away and shows only
  "exit status 1": so every answer, errors included, exits 0;
- stdout is ONE JSON object: ``{"result": {str: str}}`` on success,
  ``{"result": {}, "error": "..."}`` on failure (any ``error`` string, even
  empty, fails the fetch, so success leaves the key out);
- nothing on stderr after exit 0: the client logs it through a nil logger.

So ``guard_stdio`` keeps a private duplicate of the real stdout
(endings.keep_stdout) and points fds 1 and 2 at /dev/null (or the
operator's debug log; a memory file where /dev/null cannot be opened),
before any library can print; ``answer`` (endings.answer) writes the one
object to the private fd with SIGTERM blocked and leaves through
``os._exit(0)``, which skips atexit hooks and interpreter teardown, where
warnings and finalizers would print. The error object and the words of
every last answer are endings.py's.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

from nomad_secrets.process import endings
from nomad_secrets.process.errors import PluginError

TYPE_CHECKING = False  # not typing's: importing typing costs ms, and a forwarded fetch needs none
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import NoReturn

# The one answer and the error object: endings', whose private stdout both write to.
answer = endings.answer
encode_error = endings.encode_error
# Why /dev/null could not be used, for the debug log once it is open.
discard_note: str | None = None


def fingerprint_line(go_version: str) -> bytes:
    """The fingerprint answer; the build stores it in the executable."""
    return ('{"type": "secrets", "version": "' + go_version + '"}\n').encode()


def guard_stdio() -> None:
    """Keep the real stdout for ``answer``; silence fds 1 and 2 for the rest.

    Once the config is read, ``debuglog.enable`` may point fd 2 at the
    operator's debug log instead, so that a library's warning is kept for
    the operator and never reaches Nomad. It opens one file descriptor for
    good (the copy of stdout): when not even that is left, the answer says
    so on fd 1 itself.
    """
    global discard_note
    if endings.stdout_kept():
        return
    try:  # what an answer needs, loaded while a module can still be opened
        import json  # noqa: F401 - for encode_result

        import nomad_secrets.process.limits  # noqa: F401 - for _answer_exhausted
    except OSError:
        answer(encode_error(endings.NO_DESCRIPTORS_TO_START))
    try:
        endings.keep_stdout()
    except OSError as exc:
        _answer_exhausted(exc, "starting")
        os._exit(1)  # fd 1 is not open: there is no one to answer
    try:
        discard = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        _answer_exhausted(exc, "starting")
        # No usable /dev/null (a mount namespace without it, a directory
        # bound over it): what libraries write is kept in memory instead,
        # and goes when the process does. Nothing the fetch needs is lost.
        discard_note = f"{os.devnull}: {exc.strerror}"
        try:
            discard = os.memfd_create("nomad-secrets-discard", os.MFD_CLOEXEC)
        except OSError as memfd_exc:
            _answer_exhausted(memfd_exc, "starting")
            answer_error(
                f"nomad-secrets cannot start: {os.devnull} cannot be opened ({exc.strerror}) and no"
                f" memory file can stand in for it ({memfd_exc.strerror}); the operator restores"
                f" {os.devnull} (a character device, 1:3, mode 0666) in the Nomad client's mount namespace"
            )
    for fd in (0, 1, 2):
        os.dup2(discard, fd)
    os.close(discard)
    # Python-level writers too: their buffers would otherwise flush at exit.
    # On fds 1 and 2 as they now are: no more descriptors, no second open.
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives for the process
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - ditto


def _answer_exhausted(exc: OSError, doing: str) -> None:
    """Answer now when ``exc`` is a file descriptor limit; else return."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        from nomad_secrets.process.limits import out_of_descriptors

        answer_error(out_of_descriptors(doing, exc.errno))


def encode_result(result: Mapping[str, str]) -> bytes:
    import json

    return json.dumps({"result": dict(result)}, ensure_ascii=True).encode() + b"\n"


def answer_error(error: PluginError | str) -> NoReturn:
    message = error.message if isinstance(error, PluginError) else error
    answer(encode_error(message))


def on_sigterm_answer(message: str, before: Callable[[], None] | None = None) -> None:
    """At Nomad's timeout (SIGTERM, SIGKILL 2 s later) answer at once.

    Python runs the handler in the main thread between bytecodes, and a
    blocking socket read returns EINTR first, so this runs within
    milliseconds even in the middle of a network call. ``before`` (the
    fetch's end, noted for the audit record: ``after_answer`` writes it)
    runs first, never raising.
    """
    payload = encode_error(message)

    def handler(signum: int, frame: object) -> None:
        if before is not None:
            before()
        answer(payload)

    signal.signal(signal.SIGTERM, handler)
