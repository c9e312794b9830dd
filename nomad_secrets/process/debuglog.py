"""The operator's debug log: references, stores and timings, never values.

Off unless ``plugin.debug_log`` is set in the config. When on, it is the
process's fd 2, so a library warning or an unexpected traceback lands there
too, never on the stderr Nomad reads. The file is held to the same trust
rules as the config (trust.open_append: no symlink, a regular file, ours,
writable by no one else, created 0600, in a directory where no one else
can create it first); a log that fails them is not used,
and the fetch goes on: the job did nothing wrong, and ``check`` tells the
operator why.
"""

from __future__ import annotations

import os
import time

from nomad_secrets.process import nodefile
from nomad_secrets.process.trust import Untrusted, open_append

_enabled = False
# A long-lived process (the node agent) whose stderr is the journal: what an
# operator must know (an audit record or a count not written) goes there
# even without a debug log.
warnings_to_stderr = False
# Where a long-lived process without a journal of its own (the node agent a
# fetch started: its stderr is /dev/null) says the same: its syslog.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
warnings_to: Callable[..., None] | None = None


def enable(path: str) -> str | None:
    """Point fd 2 at the log; the reason it is not trusted, or None."""
    global _enabled
    try:
        fd = open_append(path, "debug log")
    except Untrusted as exc:
        return str(exc)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    _enabled = True
    return None


def log(event: str, **fields: object) -> None:
    """One line: ``<UTC time> pid=<pid> <event> key=value ...``.

    Callers pass references, names and numbers only: this module cannot tell
    a value from a name, so the rule is kept at the call sites.
    """
    if _enabled:
        _write(event, fields)


def _write(event: str, fields: dict[str, object]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = [stamp, f"pid={os.getpid()}", event]
    parts += [f"{k}={v!r}" for k, v in fields.items()]
    nodefile.append(2, (" ".join(parts) + "\n").encode("utf-8", "backslashreplace"))  # a line or none


def warn(event: str, **fields: object) -> None:
    """``log``, and on stderr where ``warnings_to_stderr`` says so (or to
    ``warnings_to``, where one is set)."""
    if warnings_to is not None:
        warnings_to(event, **fields)  # which writes the debug log too
        return
    if _enabled or warnings_to_stderr:
        _write(event, fields)
