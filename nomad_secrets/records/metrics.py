"""Fetch counters, a latency histogram and the writes that failed, for
node_exporter's textfile collector, in Prometheus's text format.

Two files, both read by node_exporter (``*.prom``), written through
``nodefile`` (a trusted directory, whole or not at all):

``<name>.prom``, the fetches. Each fetch is its own short process, so the
numbers live in the file itself. After its answer a fetch tries the lock
file (``<file>.lock``, flock) once, and never waits for it:

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

``<name>.write-errors.prom``, ``nomad_secrets_write_errors_total{to}``:
what could not be written (a fetch's count: a full disk, an I/O error, more
than ``MAX_CARRIED`` counts waiting on a stuck lock; an audit record),
counted and shown at once, also on a full disk. Each number is the length
of a file of its own beside the lock (``<file>.lost-<to>``), grown by
``ftruncate``, which writes no byte and so needs no free block (a sparse
file), and is never carried in a count that could itself be lost. The file
node_exporter reads is replaced whole when it can be, and else written
over in place, the same length (fixed-width numbers), which needs no new
block. Both under an OFD lock on the lock file, held for those few calls
only. node_exporter never sees the lock, the counts waiting, a length or a
temporary file. Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import re
import stat
import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from nomad_secrets.process import nodefile
from nomad_secrets.process.errors import KINDS
from nomad_secrets.process.trust import Untrusted, open_append, untrusted_log

FETCHES = "nomad_secrets_fetches_total"
DURATION = "nomad_secrets_fetch_duration_seconds"
WRITE_ERRORS = "nomad_secrets_write_errors_total"
# The node agent's store reads, per provider and store (agent/reads.py):
# its event name there, the metric, and what it counts.
READS = {
    "calls": ("nomad_secrets_store_calls_total", "Calls the node agent made to a store."),
    "shared": (
        "nomad_secrets_store_calls_shared_total",
        "Reads that shared another's call in flight (single flight) instead of calling the store.",
    ),
    "hits": ("nomad_secrets_cache_hits_total", "Reads answered from the node agent's cache (cache_seconds)."),
    "stale": (
        "nomad_secrets_stale_answers_total",
        "Reads answered with a value past its cache time because the store was down, throttling or"
        " slow (stale_if_error_seconds).",
    ),
    "evictions": (
        "nomad_secrets_cache_evictions_total",
        "Values the node agent's cache let go before their time to stay within cache_max_bytes.",
    ),
}
# Seconds: a fetch costs about 0.2 s; Nomad's timeout is 10 s (60 s later).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Where a record or a count was due: the label ``to`` of WRITE_ERRORS.
WRITE_TARGETS = ("metrics", "audit-file", "syslog")
# Every outcome a fetch can end in: the series of a provider and store.
OUTCOMES = ("ok", *KINDS)
# The families of <name>.prom, and the one of <name>.write-errors.prom.
HELP = {
    FETCHES: (
        "counter",
        "Fetches answered, by provider name, store(s) read and outcome (ok or the error kind).",
    ),
    DURATION: ("histogram", "Seconds from the plugin's start to its answer, by provider name."),
}
ERRORS_HELP = (
    "counter",
    "Fetch counts and audit records not written, by where they were due: metrics (a full disk, an"
    " I/O error, or too many counts waiting on a stuck lock), audit-file, syslog.",
)
# A directory of a package's user (Debian's /var/lib/prometheus) is no place
# for root's files, and chowning it back would undo the package.
TEXTFILE_FIX = (
    "do not chown it back if a package made it so (Debian's prometheus-node-exporter owns"
    " /var/lib/prometheus): give the metrics a directory of root's, 0755, such as"
    " /var/lib/nomad-secrets/metrics, and point node_exporter's --collector.textfile.directory at"
    " it (Debian: ARGS in /etc/default/prometheus-node-exporter); docs/configuration.md, [metrics]"
)
MAX_BYTES = 1 << 20  # the file: a few hundred series, ~100 bytes each
MAX_CARRIED = 1000
MAX_CARRY_BYTES = 64 << 10
MAX_SAMPLES = 20_000
ROUNDS = 3  # lock tries a fetch makes, each without waiting
# The write-error counts' lock is held for a few calls that never wait; a
# holder descheduled on a busy node is waited for this long, after the answer.
ERRORS_TRIES, ERRORS_PAUSE = 200, 0.001
_WIDTH = 20  # digits of a write-error count: any count fits, in the same bytes

Samples = dict[str, dict[str, float]]  # metric name -> label text -> value

_LE = {f"{le:g}" for le in BUCKETS} | {"+Inf"}
_VALUE = r'((?:[^"\\\n]|\\[\\"n]){0,256})'  # a label value as render escapes it
_KEYS = {
    FETCHES: ("provider", "store", "outcome"),
    DURATION + "_bucket": ("provider", "le"),
    DURATION + "_sum": ("provider",),
    DURATION + "_count": ("provider",),
    **{name: ("provider", "store") for name, _ in READS.values()},
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


def read_samples(provider: str, reads: Mapping[str, Mapping[str, int]]) -> Samples:
    """The node agent's store reads of one fetch (store -> event -> count),
    every event of a store at 0 until it happens, as for the outcomes."""
    samples: Samples = {}
    for store, counts in reads.items():
        for event, (name, _) in READS.items():
            _inc(samples, name, _labels(provider=provider, store=store), counts.get(event, 0))
    return samples


def errors_file(path: str) -> str:
    """The textfile of the write errors beside the metrics file ``path``."""
    return path.removesuffix(".prom") + ".write-errors.prom"


def untrusted_textfile(path: str) -> str | None:
    """Why fetches cannot count in the metrics file ``path`` (for ``check``)."""
    return untrusted_log(path + ".lock", "metrics lock file", TEXTFILE_FIX)


def count(path: str, samples: Samples, failed: Iterable[str] = ()) -> list[str]:
    """Add ``samples`` to the file at ``path``, without waiting for its
    lock, and count the records not written ``failed`` (WRITE_TARGETS);
    the reasons for what could not be done (never raised: the fetch's
    answer came first)."""
    try:
        lock = open_append(path + ".lock", "metrics lock file", TEXTFILE_FIX)
    except Untrusted as exc:
        return [str(exc)]
    failures = Counter(failed)
    problems: list[str] = []
    pending = samples
    try:
        if failures:  # counted apart from the samples, which may be lost too
            problems += _add_errors(path, lock, failures)
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
                    problems += [problem, *_add_errors(path, lock, {"metrics": 1})]
                    break
            else:
                break  # the holder looks for what waits once it is done
    finally:
        os.close(lock)  # and with it the lock
    return problems


def lost(path: str, targets: Iterable[str]) -> list[str]:
    """Count a fetch's records and count lost before they could be tried
    (the node agent's queue was full), ``targets`` being where they were
    due; the reasons it could not be."""
    try:
        lock = open_append(path + ".lock", "metrics lock file", TEXTFILE_FIX)
    except Untrusted as exc:
        return [str(exc)]
    try:
        return _add_errors(path, lock, Counter(targets))
    finally:
        os.close(lock)


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
    dropped = counted_errors(path)["metrics"]
    if dropped:
        warnings.append(
            f'{dropped} fetch counts could not be written so far ({WRITE_ERRORS}{{to="metrics"}} in'
            f" {errors_file(path)}): a full disk, an I/O error, or a process that held the lock for good;"
            " the debug log says which"
        )
    return warnings


def counted_errors(path: str) -> dict[str, int]:
    """The write errors counted so far beside the metrics file ``path``, by target."""
    counts = dict.fromkeys(WRITE_TARGETS, 0)
    for to in WRITE_TARGETS:
        try:
            st = os.lstat(_length_file(path, to))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid in (os.geteuid(), 0):
            counts[to] = st.st_size
    return counts


def render_errors(counts: Mapping[str, int]) -> str:
    """The write-errors file: every target, each number the same width."""
    kind, text = ERRORS_HELP
    lines = [f"# HELP {WRITE_ERRORS} {text}", f"# TYPE {WRITE_ERRORS} {kind}"]
    lines += [f"{WRITE_ERRORS}{{{_labels(to=to)}}} {counts.get(to, 0):0{_WIDTH}d}" for to in WRITE_TARGETS]
    return "\n".join(lines) + "\n"


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
        samples.setdefault(name, {})[match.group(1)] = value
        kept += 1
    return samples


def merge(into: Samples, samples: Samples) -> None:
    for name, values in samples.items():
        for labels, value in values.items():
            _inc(into, name, labels, value)


def render(samples: Samples) -> str:
    """The whole file: every family with its help, and every outcome of
    each provider and store at 0 until it happens (so that an alert sees
    the first)."""
    fetches = samples.setdefault(FETCHES, {})
    for pair in {labels.rpartition(',outcome="')[0] for labels in fetches} - {""}:
        for outcome in OUTCOMES:
            fetches.setdefault(f"{pair},{_labels(outcome=outcome)}", 0)
    lines = []
    # The node agent's store reads: only once an agent has counted them (a
    # fetch in process makes no shared call and keeps nothing).
    agent = {name: ("counter", text) for name, text in READS.values() if name in samples}
    for family, (kind, text) in {**HELP, **agent}.items():
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
    problem = nodefile.replace(path, render(samples).encode(), 0o644, "metrics file")
    if problem:  # this fetch's count; the ones waiting stay for the next
        return [*problems, problem, *_add_errors(path, lock, {"metrics": 1})]
    for carried in waiting:
        nodefile.remove(carried)
    if _hold(lock, 1):  # the write-errors file from the first fetch on; busy: its holder shows it
        try:
            problem = _show(path)
        finally:
            _let_go(lock)
    return [*problems, problem] if problem else problems


def _add_errors(path: str, lock: int, lost: Mapping[str, int]) -> list[str]:
    """Count ``lost`` (target -> records or counts not written) at once, and
    show it: the reasons it could not be."""
    if not _hold(lock, ERRORS_TRIES):
        return [
            f"{sum(lost.values())} write errors not counted: the lock of the counts beside {path} stayed"
            f" held ({path}.lock)"
        ]
    problems = []
    try:
        for to, n in lost.items():
            problem = _lengthen(_length_file(path, to), n)
            if problem:
                problems.append(problem)
        problem = _show(path)
        if problem:
            problems.append(problem)
    finally:
        _let_go(lock)
    return problems


def _lengthen(path: str, by: int) -> str | None:
    """The file at ``path`` ``by`` bytes longer, none written: no block needed."""
    try:
        fd = open_append(path, "metrics write-error count", TEXTFILE_FIX)
    except Untrusted as exc:
        return str(exc)
    try:
        os.ftruncate(fd, os.fstat(fd).st_size + by)
    except OSError as exc:
        return f"cannot count in {path}: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def _show(path: str) -> str | None:
    """The write-errors file as the counts are now: replaced whole, or on a
    full disk written over in place; the reason it could not be."""
    shown = errors_file(path)
    data = render_errors(counted_errors(path)).encode()
    try:
        now: bytes | None = nodefile.read_back(shown, "metrics write-error file", len(data))
    except Untrusted:
        now = None
    if now == data:
        return None
    problem = nodefile.replace(shown, data, 0o644, "metrics write-error file")
    if problem and now is not None and len(now) == len(data):
        problem = nodefile.overwrite(shown, data, "metrics write-error file")
    return problem


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


def _hold(lock: int, tries: int) -> bool:
    """The write-error counts' lock: an OFD lock on a byte of the lock file
    (apart from its flock), taken in at most ``tries`` tries."""
    for attempt in range(tries):
        try:
            fcntl.fcntl(lock, fcntl.F_OFD_SETLK, _range(fcntl.F_WRLCK))
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EINTR):
                return False
        if attempt + 1 < tries:
            time.sleep(ERRORS_PAUSE)
    return False


def _let_go(lock: int) -> None:
    fcntl.fcntl(lock, fcntl.F_OFD_SETLK, _range(fcntl.F_UNLCK))


def _range(kind: int) -> bytes:
    """A ``struct flock`` for the lock file's first byte (l_pid 0, as OFD locks need)."""
    return struct.pack("hhqqi", kind, os.SEEK_SET, 0, 1, 0)


def _length_file(path: str, to: str) -> str:
    return f"{path}.lost-{to}"


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
