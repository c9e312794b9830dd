"""Fetch counters and a latency histogram for node_exporter's textfile
collector, in Prometheus's text format.

Each fetch is its own short process, so the numbers live in the file
itself: a fetch takes the lock file (``<file>.lock``, flock), reads the
file, adds its own fetch, writes a temporary file beside it and renames it
into place, then lets the lock go. node_exporter reads ``*.prom`` only, and
a rename is atomic, so it never sees half a file, and no fetch's count is
lost to another's. The lock file is opened under the trust rules
(trust.open_append); the wait for it is bounded, so a stuck holder costs a
fetch at most ``LOCK_WAIT_SECONDS``, and then the count, never the answer.
Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time

from nomad_secrets.trust import Untrusted, open_append, untrusted_ancestors

FETCHES = "nomad_secrets_fetches_total"
DURATION = "nomad_secrets_fetch_duration_seconds"
# Seconds: a fetch costs about 0.2 s; Nomad's timeout is 10 s (60 s later).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOCK_WAIT_SECONDS = 1.0
HELP = {
    FETCHES: (
        "counter",
        "Fetches answered, by provider name, store(s) read and outcome (ok or the error kind).",
    ),
    DURATION: ("histogram", "Seconds from the plugin's start to its answer, by provider name."),
}
_SAMPLE = re.compile(r"([a-z_]+)\{(.*)\} (\S+)\Z")

Samples = dict[str, dict[str, float]]  # metric name -> label text -> value


def count(path: str, *, provider: str, store: str, outcome: str, seconds: float) -> str | None:
    """Add one fetch to the file at ``path``; the reason it could not, or
    None (never raised: the fetch's answer comes first)."""
    try:
        lock = open_append(path + ".lock", "metrics lock file")
    except Untrusted as exc:
        return str(exc)
    try:
        if not _locked(lock):
            return f"the metrics lock file {path}.lock stayed locked for {LOCK_WAIT_SECONDS:g} s"
        samples = parse(_read(path))
        add(samples, provider=provider, store=store, outcome=outcome, seconds=seconds)
        return _replace(path, render(samples))
    finally:
        os.close(lock)  # and with it the lock


def add(samples: Samples, *, provider: str, store: str, outcome: str, seconds: float) -> None:
    counter = _labels(provider=provider, store=store, outcome=outcome)
    _inc(samples, FETCHES, counter, 1)
    for le in BUCKETS:
        _inc(
            samples, DURATION + "_bucket", _labels(provider=provider, le=f"{le:g}"), 1 if seconds <= le else 0
        )
    _inc(samples, DURATION + "_bucket", _labels(provider=provider, le="+Inf"), 1)
    _inc(samples, DURATION + "_sum", _labels(provider=provider), seconds)
    _inc(samples, DURATION + "_count", _labels(provider=provider), 1)


def parse(text: str) -> Samples:
    """The samples of a file this module wrote (other lines are dropped)."""
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1).startswith((FETCHES, DURATION)):
            try:
                samples.setdefault(match.group(1), {})[match.group(2)] = float(match.group(3))
            except ValueError:
                continue
    return samples


def render(samples: Samples) -> str:
    lines = []
    for family, (kind, text) in HELP.items():
        lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}"]
        names = [family] if kind == "counter" else [f"{family}_bucket", f"{family}_sum", f"{family}_count"]
        for name in names:
            for labels in sorted(samples.get(name, {}), key=_order):
                lines.append(f"{name}{{{labels}}} {_number(samples[name][labels])}")
    return "\n".join(lines) + "\n"


def _inc(samples: Samples, name: str, labels: str, by: float) -> None:
    values = samples.setdefault(name, {})
    values[labels] = values.get(labels, 0) + by


def _labels(**labels: str) -> str:
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{key}="{escaped(value)}"' for key, value in labels.items())


def _order(labels: str) -> tuple[str, float]:
    """Buckets in the order of their bounds, +Inf last."""
    le = re.search(r'(?:^|,)le="([^"]*)"', labels)
    if le is None:
        return labels, 0.0
    bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
    return labels[: le.start()], bound


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def _locked(fd: int) -> bool:
    give_up = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= give_up:
                return False
        time.sleep(0.002)


def _read(path: str) -> str:
    """The current file, if it is a regular file (anything else is replaced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _replace(path: str, text: str) -> str | None:
    problem = untrusted_ancestors(path)  # open_append checked them; the rename must land there too
    if problem:
        return problem
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")  # not *.prom: node_exporter skips it
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a crashed fetch's, with our pid; we hold the lock
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # node_exporter runs as its own user; whatever the umask
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        return f"cannot write the metrics file {path}: {exc.strerror}"
    return None
