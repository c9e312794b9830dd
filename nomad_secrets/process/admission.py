"""A node-wide limit on fetches running in process at once.

A fetch in process spends ~160 ms of CPU, most of it importing botocore.
When the node agent cannot take a burst of task starts (turned off, or
gone), a hundred such processes share the cores fairly and all reach the
store together, past Nomad's timeout: a cliff. Holding one of a few slots
(one per core, at least two: an flock on ``slot-N`` in the agents' socket
directory, root's, held until the process exits) makes it a slope instead: the
first fetches finish while the others wait, sleeping.

A fetch waits for a slot until it is ``WAIT_UNTIL_AGE`` seconds old, then
runs anyway: the limit may delay a fetch, never fail one. Standard library
only: the bootstrap calls it before the plugin's code is unpacked.
"""

from __future__ import annotations

import os

# The default deadline is 8 s (plugin.deadline_seconds, not read yet here):
# past this age a fetch runs without a slot rather than wait on.
WAIT_UNTIL_AGE = 7.5
MIN_SLOTS = 2
# Under a descriptor limit this tight, the one a slot would hold is better
# spent on a connection to the store (a Nomad client's is 65536).
MIN_DESCRIPTORS = 32

_held: list[int] = []  # the slot's descriptor, open (and locked) until exit


class _Waited(Exception):
    pass


def _timed_out(signum: int, frame: object) -> None:
    raise _Waited


def admit(directory: str, age: float) -> str:
    """Take a slot in ``directory`` (trusted by the caller), waiting at most
    until ``WAIT_UNTIL_AGE``; "" or why this fetch runs without one."""
    import fcntl
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if 0 <= soft < MIN_DESCRIPTORS:  # a slot holds a descriptor for the fetch's life
        return f"no slot: the descriptor limit ({soft}) leaves none to spare for one"
    slots = max(os.cpu_count() or 1, MIN_SLOTS)
    fd = -1
    try:  # one descriptor at a time: a fetch may run under a tight RLIMIT_NOFILE
        for i in range(slots):
            fd = _open(directory, i)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
                continue
            _held.append(fd)
            return ""
        wait = WAIT_UNTIL_AGE - age
        if wait <= 0:
            return f"all {slots} slots for fetches in process were taken, and this fetch is {age:.1f} s old"
        import _signal  # type: ignore[import-not-found]  # not signal: its enums cost ms

        fd = _open(directory, os.getpid() % slots)
        previous = _signal.signal(_signal.SIGALRM, _timed_out)
        try:
            _signal.setitimer(_signal.ITIMER_REAL, wait)
            fcntl.flock(fd, fcntl.LOCK_EX)
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        except _Waited:
            return f"waited {wait:.1f} s for one of the {slots} slots for fetches in process"
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            _signal.signal(_signal.SIGALRM, previous)
        _held.append(fd)
        return ""
    except OSError as exc:
        return f"no slot for fetches in process in {directory}: {exc.strerror}"
    finally:
        if fd >= 0 and fd not in _held:
            os.close(fd)


def _open(directory: str, slot: int) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(f"{directory}/slot-{slot}", flags, 0o600)
