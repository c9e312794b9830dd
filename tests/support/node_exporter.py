"""The real node_exporter (Debian's prometheus-node-exporter) on 127.0.0.1,
reading a textfile directory as an operator runs it
(``--collector.textfile.directory``), with its other collectors off; and
the real promtool. scripts/setup installs both as root; where either is
missing, the tests that need it skip with one reason."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

BINARY = "prometheus-node-exporter"
NEEDS = "needs Debian's prometheus-node-exporter (scripts/setup installs it as root)"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("needs promtool from Debian's prometheus package (scripts/setup installs it as root)")
    return found


class NodeExporter:
    def __init__(self, url: str) -> None:
        self.url = url

    def scrape(self) -> Samples:
        """Every sample node_exporter serves now, by name and labels."""
        with urllib.request.urlopen(self.url, timeout=10) as response:
            text = response.read().decode()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def scrape_error(self) -> float:
        return self.scrape()[("node_textfile_scrape_error", ())]


@contextmanager
def node_exporter(textfile_dir: Path | None = None, args: Sequence[str] = ()) -> Iterator[NodeExporter]:
    """node_exporter reading ``textfile_dir``, or as ``args`` (an
    operator's ARGS) say."""
    binary = shutil.which(BINARY)
    if binary is None:
        pytest.skip(NEEDS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            *([f"--collector.textfile.directory={textfile_dir}"] if textfile_dir else []),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    exporter = NodeExporter(f"http://127.0.0.1:{port}/metrics")
    try:
        for _ in range(200):  # until it listens (or is gone)
            if proc.poll() is not None:
                raise AssertionError(f"node_exporter stopped: {proc.stderr.read() if proc.stderr else b''!r}")
            try:
                exporter.scrape()
                break
            except OSError:
                time.sleep(0.05)
        yield exporter
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
