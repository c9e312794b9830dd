"""The metrics file (docs/configuration.md, [metrics]) through the
executable as Nomad runs it: 20 fetches at once lose no count, and a reader
(node_exporter) never sees a torn file. Prometheus's own Python client
parses it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, aws_config, doc_block, put_secret, write_config
from prometheus_client.parser import text_string_to_metric_families
from support.nomad import NomadClient

DOC = ROOT / "docs" / "configuration.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and labels, as Prometheus's parser reads them."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def with_metrics(plugin_dir: Path, moto_endpoint: str, prom: Path) -> None:
    block = doc_block(DOC, "[metrics]\nfile =")
    assert "/var/lib/nomad-secrets/metrics/nomad-secrets.prom" in block
    block = block.replace("/var/lib/nomad-secrets/metrics/nomad-secrets.prom", str(prom))
    write_config(plugin_dir, aws_config(moto_endpoint) + block)


@pytest.mark.serial
def test_twenty_fetches_at_once_lose_nothing_and_tear_nothing(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    prom = tmp_path / "textfile" / "nomad-secrets.prom"
    prom.parent.mkdir(mode=0o755)
    put_secret(secretsmanager, "metrics/db", "v")
    assert nomad.fetch("aws", "metrics/db").ok  # unpacked once, not by 20 processes on 2 cores
    with_metrics(nomad.plugin_dir, moto_endpoint, prom)
    paths = ["metrics/db"] * 15 + ["metrics/missing"] * 5
    torn: list[str] = []
    seen: list[float] = []
    done = threading.Event()

    def scrape() -> None:  # node_exporter, reading while the fetches write
        # Every millisecond: hundreds of reads in the burst, and a core left
        # to the 20 fetches (a read loop without a pause took one whole).
        while not done.wait(0.001):
            try:
                text = prom.read_text()
            except FileNotFoundError:
                continue
            try:
                got = samples(text)
            except Exception as exc:
                torn.append(f"{exc!r}: {text!r}")
                continue
            count = got[("nomad_secrets_fetch_duration_seconds_count", (("provider", "aws"),))]
            counters = sum(v for (n, _), v in got.items() if n == "nomad_secrets_fetches_total")
            if count != counters:
                torn.append(f"count {count} != counters {counters}")
            seen.append(count)

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        with ThreadPoolExecutor(len(paths)) as pool:
            fetched = list(pool.map(lambda p: nomad.fetch("aws", p, {"AWS_REGION": "us-east-2"}), paths))
    finally:
        done.set()
        reader.join()
    assert [f.ok for f in fetched] == [True] * 15 + [False] * 5
    assert torn == [] and seen == sorted(seen) and seen, seen[:5]

    got = samples(prom.read_text())
    counter = "nomad_secrets_fetches_total"
    store = (("provider", "aws"), ("store", "aws-sm"))
    assert got[(counter, (("outcome", "ok"), *store))] == 15
    assert got[(counter, (("outcome", "not-found"), *store))] == 5
    histogram = "nomad_secrets_fetch_duration_seconds"
    assert got[(histogram + "_count", (("provider", "aws"),))] == 20
    assert got[(histogram + "_bucket", (("le", "+Inf"), ("provider", "aws")))] == 20
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in got.items()
        if name.endswith("_bucket")
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert 0 < got[(histogram + "_sum", (("provider", "aws"),))] < 20 * 10
    assert sorted(p.name for p in prom.parent.iterdir()) == [
        "nomad-secrets.prom",
        "nomad-secrets.prom.lock",
        "nomad-secrets.write-errors.prom",
    ]
    for file in prom.parent.glob("*.prom"):  # node_exporter reads them as its own user
        assert file.stat().st_mode & 0o777 == 0o644


def test_a_metrics_file_in_an_untrusted_directory_is_skipped(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    textfile.chmod(0o777)  # anyone could swap the file root writes
    with_metrics(nomad.plugin_dir, moto_endpoint, textfile / "nomad-secrets.prom")
    put_secret(secretsmanager, "metrics/untrusted", "v")
    fetched = nomad.fetch("aws", "metrics/untrusted", {"AWS_REGION": "us-east-2"})
    assert fetched.ok and fetched.result == {"value": "v"}
    assert list(textfile.iterdir()) == []


@pytest.mark.parametrize(
    "value", ["'nomad-secrets.txt'", "'/var/lib/node-exporter/nomad-secrets.txt'", "'relative.prom'"]
)
def test_the_metrics_file_must_be_an_absolute_prom_file(value: str) -> None:
    from nomad_secrets.core import config
    from nomad_secrets.process.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics\.file in f must be an absolute path ending in \.prom"):
        config.parse(f"[metrics]\nfile = {value}\n".encode(), "f")


def test_a_record_the_agents_queue_had_no_room_for_is_counted_where_it_was_due(tmp_path: Path) -> None:
    """A fetch the node agent answered but could not queue for its writer
    (observe.MAX_QUEUED waited): its count and both its audit records are
    counted, each under its own target, and shown at once."""
    from nomad_secrets.core import config
    from nomad_secrets.records import observe

    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    text = f'[audit]\nsyslog = true\nfile = "{tmp_path / "audit.jsonl"}"\n[metrics]\nfile = "{prom}"\n'
    observer = observe.Observer(config.parse(text.encode(), "f"), "aws", "db", {}, 0.0)
    observe._count_lost(observer)
    got = samples((textfile / "nomad-secrets.write-errors.prom").read_text())
    assert {dict(labels)["to"]: value for (_, labels), value in got.items()} == {
        "metrics": 1,
        "syslog": 1,
        "audit-file": 1,
    }
