"""The process's own limits, which it inherits from the Nomad client:
file descriptors (RLIMIT_NOFILE), memory (RLIMIT_AS) and threads.

Run short of one, and a library reports it as something else: a socket
that cannot be made is "cannot connect to Vault", a thread that cannot
start is a RuntimeError. ``exhausted`` finds the real cause in an
exception's chain (``raise ... from None`` still keeps ``__context__``)
and says what it is and which setting of the Nomad client to raise.
Standard library only. ``protocol.guard_stdio`` imports it before it
opens anything: out of descriptors, nothing more can be imported.
"""

from __future__ import annotations

import errno
import os
import resource

from nomad_secrets.process.errors import PluginError

# File descriptors a fetch may open briefly while its readers hold their
# connections (an import, a CA bundle, a token file): one at a time.
SPARE_DESCRIPTORS = 1
# OpenSSL's words when its allocation fails (ERR_R_MALLOC_FAILURE), which
# Python raises as ssl.SSLError, not MemoryError.
_OPENSSL_OUT_OF_MEMORY = "malloc failure"


class Exhausted(PluginError):
    """The process ran out of something the operator limits, not the job."""

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
    if error == errno.ENFILE:
        return OutOfDescriptors(
            f"the node ran out of file descriptors (ENFILE: the kernel's fs.file-max) while {doing};"
            " the operator finds the process that holds them, or raises fs.file-max (sysctl)"
        )
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return OutOfDescriptors(
        f"nomad-secrets ran out of file descriptors while {doing}: its limit (RLIMIT_NOFILE) is {soft},"
        " the limit of the process that started it; for a fetch that is the Nomad client: the operator"
        " raises LimitNOFILE in its systemd unit (HashiCorp's sets 65536), or ulimit -n where it starts,"
        " and restarts it"
    )


def out_of_memory(doing: str) -> OutOfMemory:
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit = "" if soft == resource.RLIM_INFINITY else f" (its address space limit: {soft >> 20} MiB)"
    return OutOfMemory(
        f"nomad-secrets ran out of memory while {doing}{limit}; the operator raises the Nomad client's"
        " memory limits (LimitAS or MemoryMax in its systemd unit, ulimit -v where it starts), or the job"
        " reads fewer secrets in one secret block"
    )


def exhausted(exc: BaseException, doing: str = "reading the secrets") -> Exhausted | None:
    """The limit that ``exc`` or an exception behind it ran into, or None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, Exhausted):
            return current
        if isinstance(current, OSError) and current.errno in (errno.EMFILE, errno.ENFILE):
            return out_of_descriptors(doing, current.errno)
        if isinstance(current, MemoryError) or getattr(current, "errno", None) == errno.ENOMEM:
            return out_of_memory(doing)
        if type(current).__name__ == "SSLError" and _OPENSSL_OUT_OF_MEMORY in str(current).lower():
            return out_of_memory(doing)  # OpenSSL's own allocation (botocore's client, a handshake)
        # urllib3 keeps the cause of a failed connection as ``reason``
        reason = getattr(current, "reason", None)
        todo += [current.__cause__, current.__context__]
        if isinstance(reason, BaseException):
            todo.append(reason)
    return None
