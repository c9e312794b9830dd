"""Fetch counters, a latency histogram and the writes that failed, for
node_exporter's textfile collector, in Prometheus's text format.

Each fetch is its own short process, so the numbers live in the file
itself, written through ``nodefile`` (a trusted directory, whole or not at
all). After its answer a fetch tries the lock file (``<file>.lock``,
flock) once, and never waits for it:

- taken: it reads the file back (root's, at most ``MAX_BYTES``: a planted
  giant is refused unread, and the counts start again), adds the counts
  that wait beside it and its own, replaces the file whole, removes the
  counts it added, lets go, and looks once more for counts left meanwhile;
- busy (another fetch, or a stuck process): it leaves its count beside the
  file, ``.<file name>.carried.<pid>-<random>``, a small file of its own,
  for the next fetch that takes the lock, and tries the lock once more.

Once a provider has read a store, every outcome of that pair (ok and each
error kind) is in the file, at 0 until it happens: Prometheus's
``increase()`` takes a series' first sample as its start, so a series that
first appeared at 1 would never count that fetch in an alert.

At most ``MAX_CARRIED`` counts wait; past that a count is lost. A count
lost for any reason (that, a full disk, an I/O error) is counted in
``nomad_secrets_write_errors_total{to="metrics"}``, and that count must
survive a full disk: it is the length of the lock file past its first
line, one byte appended per loss, which fits in the block the line
already holds. node_exporter reads ``*.prom`` only, so it never sees the
lock, the counts waiting or a temporary file. Standard library only.
"""

from __future__ import annotations

import fcntl
import math
import os
import re

from nomad_secrets import nodefile
from nomad_secrets.errors import KINDS
from nomad_secrets.trust import Untrusted, open_append

FETCHES = "nomad_secrets_fetches_total"
DURATION = "nomad_secrets_fetch_duration_seconds"
WRITE_ERRORS = "nomad_secrets_write_errors_total"
# Seconds: a fetch costs about 0.2 s; Nomad's timeout is 10 s (60 s later).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Where a record or a count was due: the label ``to`` of WRITE_ERRORS.
WRITE_TARGETS = ("metrics", "audit-file", "syslog")
# Every outcome a fetch can end in: the series of a provider and store.
OUTCOMES = ("ok", *KINDS)
HELP = {
    FETCHES: (
        "counter",
        "Fetches answered, by provider name, store(s) read and outcome (ok or the error kind).",
    ),
    DURATION: ("histogram", "Seconds from the plugin's start to its answer, by provider name."),
    WRITE_ERRORS: (
        "counter",
        "Fetch counts and audit records not written, by where they were due: metrics (a full disk, an"
        " I/O error, or too many counts waiting on a stuck lock), audit-file, syslog.",
    ),
}
MAX_BYTES = 1 << 20  # the file: a few hundred series, ~100 bytes each
MAX_CARRIED = 1000
MAX_CARRY_BYTES = 64 << 10
MAX_SAMPLES = 20_000
ROUNDS = 3  # lock tries a fetch makes, each without waiting
LOCK_HEADER = b"nomad-secrets metrics lock; each byte after this line is a count that could not be written\n"

Samples = dict[str, dict[str, float]]  # metric name -> label text -> value

_LE = {f"{le:g}" for le in BUCKETS} | {"+Inf"}
_VALUE = r'((?:[^"\\\n]|\\[\\"n]){0,256})'  # a label value as render escapes it
_KEYS = {
    FETCHES: ("provider", "store", "outcome"),
    DURATION + "_bucket": ("provider", "le"),
    DURATION + "_sum": ("provider",),
    DURATION + "_count": ("provider",),
    WRITE_ERRORS: ("to",),
}
_LINE = {
    name: re.compile(re.escape(name) + r"\{(" + ",".join(f'{k}="{_VALUE}"' for k in keys) + r")\} (\S+)\Z")
    for name, keys in _KEYS.items()
}


def fetch_samples(*, provider: str, store: str, outcome: str, seconds: float) -> Samples:
    """One fetch, as the counts it adds."""
    samples: Samples = {}
    _inc(samples, FETCHES, _labels(provider=provider, store=store, outcome=outcome), 1)
    for le in BUCKETS:
        _inc(
            samples, DURATION + "_bucket", _labels(provider=provider, le=f"{le:g}"), 1 if seconds <= le else 0
        )
    _inc(samples, DURATION + "_bucket", _labels(provider=provider, le="+Inf"), 1)
    _inc(samples, DURATION + "_sum", _labels(provider=provider), seconds)
    _inc(samples, DURATION + "_count", _labels(provider=provider), 1)
    return samples


def write_error(samples: Samples, to: str) -> None:
    """Count a record or count not written ``to`` (one of WRITE_TARGETS)."""
    _inc(samples, WRITE_ERRORS, _labels(to=to), 1)


def count(path: str, samples: Samples) -> list[str]:
    """Add ``samples`` to the file at ``path``, without waiting for its
    lock; the reasons for what could not be done (never raised: the
    fetch's answer came first)."""
    try:
        lock = open_append(path + ".lock", "metrics lock file")
    except Untrusted as exc:
        return [str(exc)]
    problems: list[str] = []
    pending = samples
    try:
        for _ in range(ROUNDS):
            if _take(lock):
                problems += _write(path, lock, pending)
                pending = {}
                fcntl.flock(lock, fcntl.LOCK_UN)
                if not _carried(path):
                    break
            elif pending:
                problem = _carry(path, pending)
                pending = {}
                if problem:
                    problems.append(problem)
                    lose(lock)
                    break
            else:
                break  # the holder looks for what waits once it is done
    finally:
        os.close(lock)  # and with it the lock
    return problems


def lost(path: str) -> str | None:
    """Count one count lost without the file's lock (the node agent's
    queue was full); the reason it could not be, or None."""
    try:
        lock = open_append(path + ".lock", "metrics lock file")
    except Untrusted as exc:
        return str(exc)
    try:
        lose(lock)
    finally:
        os.close(lock)
    return None


def health(path: str) -> list[str]:
    """What ``check`` warns about the file at ``path``: one a fetch would
    not read back, counts waiting for its lock, counts lost so far."""
    warnings = []
    try:
        nodefile.read_back(path, "metrics file", MAX_BYTES)
    except Untrusted as exc:
        warnings.append(f"{exc}: the next fetch that writes it starts the counts again")
    waiting = len(_carried(path))
    if waiting:
        warnings.append(
            f"{waiting} fetch counts wait beside {path} for its lock: the next fetch adds them,"
            f" unless a process holds {path}.lock for good (fuser {path}.lock)"
        )
    try:
        lost = max(os.stat(path + ".lock").st_size - len(LOCK_HEADER), 0)
    except OSError:
        lost = 0
    if lost:
        warnings.append(
            f'{lost} fetch counts could not be written so far ({WRITE_ERRORS}{{to="metrics"}}):'
            " a full disk, an I/O error, or a process that held the lock for good; the debug log says which"
        )
    return warnings


def lose(lock: int) -> None:
    """One byte more past the lock file's first line: one count lost."""
    nodefile.append(lock, b"!" if os.fstat(lock).st_size else LOCK_HEADER + b"!")


def parse(text: str) -> Samples:
    """The samples of a file this module wrote; any other line, or a sample
    with other labels or a value no count can have, is dropped."""
    samples: Samples = {}
    kept = 0
    for line in text.splitlines():
        name = line.partition("{")[0]
        pattern = _LINE.get(name)
        match = pattern.match(line) if pattern else None
        if match is None or kept >= MAX_SAMPLES:
            continue
        try:
            value = float(match.group(match.lastindex or 0))
        except ValueError:
            continue
        if not math.isfinite(value) or value < 0 or value >= 2**63:
            continue
        if name == DURATION + "_bucket" and match.group(3) not in _LE:
            continue
        if name == WRITE_ERRORS and match.group(2) not in WRITE_TARGETS:
            continue
        samples.setdefault(name, {})[match.group(1)] = value
        kept += 1
    return samples


def merge(into: Samples, samples: Samples) -> None:
    for name, values in samples.items():
        for labels, value in values.items():
            _inc(into, name, labels, value)


def render(samples: Samples) -> str:
    """The whole file: every family with its help, every outcome of each
    provider and store, and the write errors of every target (each 0 until
    it happens, so that an alert sees the first)."""
    fetches = samples.setdefault(FETCHES, {})
    for pair in {labels.rpartition(',outcome="')[0] for labels in fetches} - {""}:
        for outcome in OUTCOMES:
            fetches.setdefault(f"{pair},{_labels(outcome=outcome)}", 0)
    errors = samples.setdefault(WRITE_ERRORS, {})
    for to in WRITE_TARGETS:
        errors.setdefault(_labels(to=to), 0)
    lines = []
    for family, (kind, text) in HELP.items():
        lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}"]
        lines += _sample_lines(samples, _names(family, kind))
    return "\n".join(lines) + "\n"


def _names(family: str, kind: str) -> list[str]:
    return [family] if kind == "counter" else [f"{family}_bucket", f"{family}_sum", f"{family}_count"]


def _sample_lines(samples: Samples, names: list[str]) -> list[str]:
    return [
        f"{name}{{{labels}}} {_number(samples[name][labels])}"
        for name in names
        for labels in sorted(samples.get(name, {}), key=_order)
    ]


def _write(path: str, lock: int, pending: Samples) -> list[str]:
    """Under the lock: the file again, with what waits and ``pending``."""
    if os.fstat(lock).st_size == 0:
        nodefile.append(lock, LOCK_HEADER)
    problems = []
    try:
        samples = parse(nodefile.read_back(path, "metrics file", MAX_BYTES).decode("utf-8", "replace"))
    except Untrusted as exc:
        problems.append(f"{exc}: the counts start again")
        samples = {}
    waiting = _carried(path)[:MAX_CARRIED]
    for carried in waiting:
        try:
            merge(samples, parse(nodefile.read_back(carried, "metrics count", MAX_CARRY_BYTES).decode()))
        except (Untrusted, UnicodeDecodeError) as exc:
            problems.append(f"{exc}; removed")  # root's directory: nobody else's count to keep
    merge(samples, pending)
    samples.setdefault(WRITE_ERRORS, {})[_labels(to="metrics")] = max(
        os.fstat(lock).st_size - len(LOCK_HEADER), 0
    )
    problem = nodefile.replace(path, render(samples).encode(), 0o644, "metrics file")
    if problem:
        lose(lock)  # this fetch's count; the ones waiting stay for the next
        return [*problems, problem]
    for carried in waiting:
        nodefile.remove(carried)
    return problems


def _carry(path: str, pending: Samples) -> str | None:
    """Leave ``pending`` beside the file for the next holder of its lock."""
    if len(_carried(path)) >= MAX_CARRIED:
        return (
            f"{MAX_CARRIED} counts already wait for the lock of {path} (is a process stuck holding"
            f" {path}.lock?); this one was lost, and counted"
        )
    directory, name = os.path.split(path)
    carried = os.path.join(directory, f".{name}.carried.{os.getpid()}-{os.urandom(4).hex()}")
    text = "\n".join(_sample_lines(pending, list(pending))) + "\n"
    return nodefile.replace(carried, text.encode(), 0o600, "metrics count")


def _carried(path: str) -> list[str]:
    """The counts that wait beside ``path``, oldest names first."""
    directory, name = os.path.split(path)
    prefix = f".{name}.carried."
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix) and not e.name.endswith(".tmp")]
    except OSError:
        return []
    return [os.path.join(directory, n) for n in sorted(names)]


def _take(lock: int) -> bool:
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except InterruptedError:
            continue
        except OSError:  # EWOULDBLOCK: held by another
            return False


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
