"""What the operator sees of each fetch: the audit record and the metrics.

Off unless ``[audit]`` or ``[metrics]`` is set; then ``Observer.finish``
runs once, as the fetch answers (the SIGTERM answer included), and never
raises: a record or a count that cannot be written is noted in the debug
log, and the job gets its answer all the same.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from nomad_secrets import audit, debuglog, metrics
from nomad_secrets.config import Config
from nomad_secrets.errors import PluginError
from nomad_secrets.reference import parse_path


class Observer:
    def __init__(
        self, config: Config, provider: str, path: str, environ: Mapping[str, str], start: float
    ) -> None:
        self.config, self.provider, self.path, self.start = config, provider, path, start
        self.namespace = environ.get("NOMAD_NAMESPACE") or None  # set by Nomad, not the job
        self.job = environ.get("NOMAD_JOB_ID") or None
        self._done = False

    def finish(self, error_kind: str | None) -> None:
        """Record the fetch ending in ``error_kind`` (None: answered)."""
        if self._done:  # once, even if SIGTERM comes while it runs
            return
        self._done = True
        seconds = time.monotonic() - self.start
        try:
            references, stores = self._read()
            problems: list[str] = []
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
                problems += audit.send(settings, entry)
            if self.config.metrics.file:
                problem = metrics.count(
                    self.config.metrics.file,
                    provider=self.provider,
                    store="+".join(stores) or "none",
                    outcome=error_kind or "ok",
                    seconds=seconds,
                )
                problems += [problem] if problem else []
            for problem in problems:
                debuglog.warn("observe-skipped", reason=problem)
        except Exception as exc:  # noqa: BLE001 - the fetch's answer comes first
            debuglog.log("observe-failed", error=type(exc).__name__)

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
