"""The process's own limits, which it inherits from the Nomad client:
file descriptors (RLIMIT_NOFILE), memory (RLIMIT_AS) and threads.

Run short of one, and a library reports it as something else: a socket
that cannot be made is "cannot connect to Vault", a thread that cannot
start is a RuntimeError. ``exhausted`` finds the real cause in an
exception's chain (endings.py tells a limit from anything else, and has
the words) and makes it the fetch's error. Standard library only.
``protocol.guard_stdio`` imports it before it opens anything: out of
descriptors, nothing more can be imported.
"""

from __future__ import annotations

import errno
import os
import resource

from nomad_secrets.process import endings
from nomad_secrets.process.errors import PluginError

# File descriptors a fetch may open briefly while its readers hold their
# connections (an import, a CA bundle, a token file): one at a time.
SPARE_DESCRIPTORS = 1


class Exhausted(PluginError):
    """The process ran out of something the operator limits, not the job;
    which one is the subclass (the words are endings')."""

    kind = "resource-limit"


class OutOfDescriptors(Exhausted):
    """RLIMIT_NOFILE, or the node's fs.file-max."""


class OutOfMemory(Exhausted):
    """RLIMIT_AS, or an allocation the node refused."""


def descriptors_free() -> int | None:
    """File descriptors this process can still open, or None when unlimited
    or unknown. The limit bounds fd numbers: count the ones below it."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        names = os.listdir("/proc/self/fd")  # holds one fd itself while it lists
    except OSError as exc:
        return 0 if exc.errno in (errno.EMFILE, errno.ENFILE) else None
    return soft - sum(1 for name in names if name.isdigit() and int(name) < soft) + 1


def out_of_descriptors(doing: str, error: int = errno.EMFILE) -> OutOfDescriptors:
    return OutOfDescriptors(endings.out_of_descriptors(doing, error))


def out_of_memory(doing: str) -> OutOfMemory:
    return OutOfMemory(endings.out_of_memory(doing))


def exhausted(exc: BaseException, doing: str = "reading the secrets") -> Exhausted | None:
    """The limit that ``exc`` or an exception behind it ran into, or None."""
    for current in endings.chain(exc):
        if isinstance(current, Exhausted):
            return current
        limit = endings.ran_into(current)
        if limit == endings.MEMORY:
            return out_of_memory(doing)
        if limit:
            return out_of_descriptors(doing, getattr(current, "errno", errno.EMFILE))
    return None
