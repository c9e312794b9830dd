"""The operator's debug log: references, stores and timings, never values.

Off unless ``plugin.debug_log`` is set in the config. When on, it is the
process's fd 2, so a library warning or an unexpected traceback lands there
too, never on the stderr Nomad reads. Created 0600, opened with O_NOFOLLOW
and appended to, one line per event.
"""

from __future__ import annotations

import contextlib
import os
import time

_enabled = False


def enable(path: str) -> None:
    global _enabled
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    _enabled = True


def log(event: str, **fields: object) -> None:
    """One line: ``<UTC time> pid=<pid> <event> key=value ...``.

    Callers pass references, names and numbers only: this module cannot tell
    a value from a name, so the rule is kept at the call sites.
    """
    if not _enabled:
        return
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = [stamp, f"pid={os.getpid()}", event]
    parts += [f"{k}={v!r}" for k, v in fields.items()]
    with contextlib.suppress(OSError):
        os.write(2, (" ".join(parts) + "\n").encode("utf-8", "backslashreplace"))
