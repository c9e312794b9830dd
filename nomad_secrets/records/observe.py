"""What the operator sees of each fetch: the audit record and the metrics.

Off unless ``[audit]`` or ``[metrics]`` is set. ``Observer.finish`` notes
how the fetch ended (the SIGTERM answer included) and writes nothing: the
record and the counts are written after the answer, so that neither ever
sits between a fetch and its answer.

- In the plugin, after the answer is written to Nomad and before the
  process exits (``endings.after_answer``). Nothing there waits: the
  syslog datagram is sent without blocking, the audit line is one write,
  and the metrics lock is tried, never waited for (metrics.py).
- In a long-lived process (the node agent), by one writer thread, while
  the request's thread sends the answer. Its queue is bounded: a record
  past it is lost and counted (``write_errors``), as a count is.

A record or a count that cannot be written is noted in the debug log (and
the agent's journal) and counted; the job gets its answer all the same.
"""

from __future__ import annotations

import _thread
import atexit
import collections
import threading
import time
from collections.abc import Mapping

from nomad_secrets.core.config import Config
from nomad_secrets.core.reference import parse_path
from nomad_secrets.process import debuglog, endings
from nomad_secrets.process.errors import PluginError
from nomad_secrets.records import audit, metrics

MAX_QUEUED = 1000  # a long-lived process's records waiting for its writer thread


class Observer:
    def __init__(
        self, config: Config, provider: str, path: str, environ: Mapping[str, str], start: float
    ) -> None:
        self.config, self.provider, self.path, self.start = config, provider, path, start
        self.namespace = environ.get("NOMAD_NAMESPACE") or None  # set by Nomad, not the job
        self.job = environ.get("NOMAD_JOB_ID") or None
        self._ended: tuple[str | None, float] | None = None
        self._reads: dict[str, dict[str, int]] = {}  # the node agent's store reads, per store
        # The plugin's own process: the record is written once the answer is out.
        self._after_answer = endings.after_answer(self.write)

    def finish(self, error_kind: str | None, reads: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """Note the fetch ending in ``error_kind`` (None: answered), with
        what its reads cost the stores (the agent's counts, per store and
        event); the first call counts, even if SIGTERM comes while it runs."""
        if self._ended is not None:
            return
        if reads:
            self._reads = {store: dict(counts) for store, counts in reads.items()}
        self._ended = (error_kind, time.monotonic() - self.start)
        if not self._after_answer:
            _writer.submit(self)

    def write(self) -> None:
        """Write the record and the counts (never raises)."""
        if self._ended is None:
            return
        error_kind, seconds = self._ended
        try:
            problems = self._write(error_kind, seconds)
            for problem in problems:
                debuglog.warn("observe-skipped", reason=problem)
        except Exception as exc:  # noqa: BLE001 - the fetch's answer came first
            debuglog.warn("observe-failed", error=type(exc).__name__)

    def _write(self, error_kind: str | None, seconds: float) -> list[str]:
        references, stores = self._read()
        problems: list[str] = []
        failed: list[str] = []  # metrics.WRITE_TARGETS not reached
        settings = self.config.audit
        if settings.syslog or settings.file:
            entry = audit.record(
                provider=self.provider,
                namespace=self.namespace,
                job=self.job,
                references=references,
                stores=stores,
                error_kind=error_kind,
                seconds=seconds,
            )
            if not references:
                entry["path"] = self.path[:1024]  # not references: show what the job wrote
            if self._reads:  # the node agent's: store calls, shared ones, cache hits, stale answers
                entry["store_reads"] = self._reads
                entry["stale"] = any(counts["stale"] for counts in self._reads.values())
            for to, problem in audit.send(settings, entry):
                problems.append(problem)
                failed.append(to)
        if self.config.metrics.file:
            samples = metrics.fetch_samples(
                provider=self.provider,
                store="+".join(stores) or "none",
                outcome=error_kind or "ok",
                seconds=seconds,
            )
            metrics.merge(samples, metrics.read_samples(self.provider, self._reads))
            problems += metrics.count(self.config.metrics.file, samples, failed)
        return problems

    def _read(self) -> tuple[list[str], list[str]]:
        """The references as the job wrote them, and the stores they name."""
        try:
            refs = parse_path(self.path)
        except PluginError:
            return [], []
        try:
            default = self.config.provider(self.provider).store
        except PluginError:
            default = "unknown"
        references = [f"{ref.name} = {ref.text}" if ref.name else ref.text for ref in refs]
        return references, sorted({ref.scheme or default for ref in refs})


class _Writer:
    """One thread that writes a long-lived process's records in turn, so
    that a request's thread sends its answer at once. Started at the first
    record; where no thread can start (out of memory, of threads), the
    record is written in the request's thread, which still never waits."""

    def __init__(self) -> None:
        self._queue: collections.deque[Observer] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._started = False

    def submit(self, observer: Observer) -> None:
        with self._ready:
            if len(self._queue) >= MAX_QUEUED:
                _count_lost(observer)
                return
            self._queue.append(observer)
            if not self._started:
                self._started = self._start()
            self._ready.notify()
        if not self._started:
            self.drain()

    def _start(self) -> bool:
        try:
            # Not threading.Thread.start: it waits for the thread, for ever
            # if the thread dies first (the agent's own rule).
            _thread.start_new_thread(self._run, ())
        except (RuntimeError, MemoryError):
            return False
        atexit.register(self.drain)  # what waits at a clean stop is written
        return True

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
            self.drain()

    def drain(self) -> None:
        while True:
            with self._ready:
                if not self._queue:
                    return
                observer = self._queue.popleft()
            observer.write()


def _count_lost(observer: Observer) -> None:
    """The fetch's count and its audit records, never tried: each counted
    where it was due."""
    config = observer.config
    file = config.metrics.file
    targets = [
        "metrics",
        *(["syslog"] if config.audit.syslog else []),
        *(["audit-file"] if config.audit.file else []),
    ]
    problems = metrics.lost(file, targets) if file else ["not counted: no [metrics] file"]
    lost = f"{MAX_QUEUED} records waited for the writer; this one was lost"
    debuglog.warn(
        "observe-skipped", reason="; ".join([lost, *problems]) if problems else lost + ", and counted"
    )


_writer = _Writer()
