"""What the plugin writes on the node and reads back, on a bad day (issue 23,
items 1 to 3, and the operator's review after it), through the built
executable run as root as Nomad runs it:
an attacker as another uid (65534, through setpriv) plants files where the
metrics and the audit go, a small tmpfs fills up, another process holds
the metrics lock. No file outside the plugin's own is ever written or read,
no count is lost without a counter saying so, and no answer waits.

No test here times anything: "the answer does not wait" is shown by
fetches that end while the lock they would wait for is still held."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import aws_config, put_secret, write_config
from support.agent_process import AgentProcess
from support.attacker import ATTACKER, NEEDS_ROOT, as_attacker, public_dir
from support.node_exporter import node_exporter
from support.nomad import NomadClient
from test_metrics import samples

from nomad_secrets.process.errors import KINDS
from nomad_secrets.records import metrics

CANARY = "canary-nodefiles-7f3a"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
OK = ("nomad_secrets_fetches_total", (("outcome", "ok"), ("provider", "aws"), ("store", "aws-sm")))


def lost(to: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("nomad_secrets_write_errors_total", (("to", to),))


def written(prom: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics file and of the write-errors file beside it."""
    return samples(prom.read_text()) | samples(prom.with_suffix(".write-errors.prom").read_text())


@contextmanager
def small_disk(size: str = "256k") -> Iterator[Path]:
    """A tmpfs of ``size``, root's, 0755; unmounted after."""
    top = Path(tempfile.mkdtemp(prefix="ns-disk-", dir="/tmp"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(top)], capture_output=True
    )
    if mounted.returncode != 0:
        top.rmdir()
        pytest.skip(f"needs root to mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield top
    finally:
        subprocess.run(["umount", str(top)], check=True)
        top.rmdir()


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"x" * chunk)
            except OSError:
                continue
    return filler


def listing(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Each entry's owner, mode and content (a symlink's target), to compare."""
    out = {}
    for entry in directory.iterdir():
        st = entry.lstat()
        content = os.readlink(entry) if entry.is_symlink() else hashlib.sha256(entry.read_bytes()).hexdigest()
        out[entry.name] = (st.st_uid, st.st_mode, content)
    return out


def observed(nomad: NomadClient, moto_endpoint: str, *, prom: Path, audit: Path | None, debug: Path) -> None:
    sections = f'[plugin]\ndebug_log = "{debug}"\n[metrics]\nfile = "{prom}"\n'
    if audit is not None:
        sections += f'[audit]\nfile = "{audit}"\n'
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + sections)


def check_output(nomad: NomadClient) -> str:
    run = subprocess.run(
        [str(nomad.executable("aws")), "check"], capture_output=True, text=True, env={}, timeout=60
    )
    return " ".join(run.stdout.split())


# -- 1. a directory others can write into, files that are not ours -----------------


def test_a_sticky_world_writable_directory_is_refused_and_nothing_planted_is_touched(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """The attacker plants, before root ever writes there, a 63 MB metrics
    file whose first line claims 10^15 fetches, an audit file of theirs, the
    lock file as a symlink to one of root's files, and a count as a symlink
    too. The fetch answers, touches none of it (nor root's file), creates
    nothing there, and says why in the debug log and in check."""
    rootfile = tmp_path / "root-only"
    rootfile.write_bytes(b"root's own\n")
    rootfile.chmod(0o600)
    put_secret(secretsmanager, "nodefiles/canary", CANARY)
    with public_dir() as public:
        prom, audit = public / "nomad-secrets.prom", public / "audit.jsonl"
        as_attacker(
            f'printf \'nomad_secrets_fetches_total{{provider="aws",store="aws-sm",outcome="ok"}} 1e15\\n\''
            f" > {prom} && truncate -s 63M {prom} && : > {audit}"
            f" && ln -s {rootfile} {prom}.lock && ln -s {rootfile} {public}/.nomad-secrets.prom.carried.1-0"
        )
        planted = listing(public)
        debug = tmp_path / "debug.log"
        observed(nomad, moto_endpoint, prom=prom, audit=audit, debug=debug)
        fetched = nomad.fetch("aws", "nodefiles/canary")
        assert fetched.ok and fetched.result == {"value": CANARY}
        assert listing(public) == planted
        words = check_output(nomad)
    assert rootfile.read_bytes() == b"root's own\n" and rootfile.stat().st_mode & 0o777 == 0o600
    refused = f"the directory {public} of the {{}} is writable by others (sticky, like /tmp)"
    log = debug.read_text()
    for what in ("metrics lock file", "audit file"):
        assert refused.format(what) in log
        assert f"WARNING {refused.format(what)}" in words
    assert "give the audit file a directory of its own, owned by root and writable by no one else" in words
    assert CANARY not in log + words


def test_a_symlink_another_user_owns_is_not_followed_to_the_metrics_or_the_audit(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """In a sticky directory the attacker links a name to a directory of
    root's; root follows another's link there when fs.protected_symlinks is
    0 (it is, here), so the attacker would choose where root writes. The
    metrics and the audit file named through the attacker's link are
    skipped, nothing is written where it leads, and the debug log and check
    say what to do. Root's own link there is followed."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    debug = tmp_path / "debug.log"
    with public_dir() as public:
        as_attacker(f"ln -s {roots} {public}/theirs")
        theirs = public / "theirs"
        observed(
            nomad, moto_endpoint, prom=theirs / "nomad-secrets.prom", audit=theirs / "a.jsonl", debug=debug
        )
        assert nomad.fetch("aws", "nodefiles/db").ok
        assert list(roots.iterdir()) == []
        words = check_output(nomad)

        (public / "ours").symlink_to(roots)  # root's
        ours = public / "ours"
        observed(nomad, moto_endpoint, prom=ours / "nomad-secrets.prom", audit=ours / "a.jsonl", debug=debug)
        assert nomad.fetch("aws", "nodefiles/db").ok
    refused = (
        f"{theirs} is a symlink owned by uid {ATTACKER}, who can point it at any directory; name the"
        " directory it should lead to by its real path"
    )
    assert f"WARNING {refused}" in words and refused in debug.read_text()
    assert samples((roots / "nomad-secrets.prom").read_text())[OK] == 1
    assert (roots / "a.jsonl").read_text().count("\n") == 1


def test_a_metrics_file_not_roots_or_too_large_is_not_read(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """In the operator's own directory: a file that is not root's (chowned
    there), or far larger than the plugin ever writes, is never read: the
    counts start again from this fetch, and the debug log says why."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom, debug = textfile / "nomad-secrets.prom", tmp_path / "debug.log"
    claim = 'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="ok"} 1e15\n'
    observed(nomad, moto_endpoint, prom=prom, audit=None, debug=debug)

    prom.write_text(claim)
    os.chown(prom, ATTACKER, ATTACKER)
    assert nomad.fetch("aws", "nodefiles/db").ok
    assert samples(prom.read_text())[OK] == 1 and prom.stat().st_uid == 0
    assert f"the metrics file {prom} is owned by uid {ATTACKER}, not root" in debug.read_text()

    with open(prom, "w") as f:  # root's, a valid first line, 63 MB in all
        f.write(claim)
        f.truncate(63 << 20)
    assert nomad.fetch("aws", "nodefiles/db").ok
    assert samples(prom.read_text())[OK] == 1
    assert f"the metrics file {prom} holds {63 << 20} bytes, more than it ever should" in debug.read_text()


def test_malformed_sample_lines_are_dropped_not_kept(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Only a sample this module could have written is read back: its
    names, its labels in its order, a count's value. Everything else is
    gone from the next file, which node_exporter reads without an error."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    kept = 'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="ok"} 41'
    prom.write_text(
        "\n".join(
            [
                kept,
                'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="ok",extra="x"} 5',
                'nomad_secrets_fetches_total{store="aws-sm",provider="aws",outcome="denied"} 5',
                'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="x"} NaN',
                'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="y"} -3',
                'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="z"} 1e400',
                'nomad_secrets_fetch_duration_seconds_bucket{provider="aws",le="7"} 2',
                'nomad_secrets_write_errors_total{to="elsewhere"} 1',
                'node_cpu_seconds_total{cpu="0"} 1',
                "# TYPE nomad_secrets_fetches_total gauge",
                'nomad_secrets_fetches_total{provider="a\nb",store="aws-sm",outcome="ok"} 1',
                'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="ok"}',
            ]
        )
        + "\n"
    )
    observed(nomad, moto_endpoint, prom=prom, audit=None, debug=tmp_path / "debug.log")
    with node_exporter(textfile) as exporter:
        assert nomad.fetch("aws", "nodefiles/db").ok
        text = prom.read_text()
        scraped = exporter.scrape()
        assert exporter.scrape_error() == 0
    got = samples(text)
    assert got[OK] == 42
    fetches = {labels: value for (name, labels), value in got.items() if name == OK[0]}
    assert {dict(labels)["outcome"] for labels in fetches} == {"ok", *KINDS}  # the rest at 0
    assert sum(fetches.values()) == 42 and {labels[1:] for labels in fetches} == {OK[1][1:]}
    assert {dict(labels)["le"] for name, labels in got if name.endswith("_bucket")} == {
        *(f"{le:g}" for le in metrics.BUCKETS),
        "+Inf",
    }
    assert not [name for name, _ in got if name == lost("x")[0]]  # beside it, in a file of their own
    assert {dict(labels)["to"] for name, labels in written(prom) if name == lost("x")[0]} == set(
        metrics.WRITE_TARGETS
    )
    assert "node_cpu" not in text and "gauge" not in text and "elsewhere" not in text
    for sample, value in written(prom).items():
        assert scraped[sample] == value


# -- 2. a full disk ----------------------------------------------------------------------


def test_a_full_disk_leaves_whole_files_and_counts_what_it_lost(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """The audit file and the metrics each on a small tmpfs of their own,
    the metrics file with 128 counters (~10 kB, as in the issue). With the
    audit disk full, the record's line, longer than the room left in the
    file's last page, is not half written, and the loss is counted; with
    the metrics disk full too, the old file stays byte for byte, node_exporter
    reads it without an error, and both losses, the count and the audit
    record it would have carried, are counted where no block is needed and
    shown at once, while the disk is still full. Once there is room again,
    nothing else is missing."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    debug = tmp_path / "debug.log"
    with small_disk() as audit_disk, small_disk() as metrics_disk:
        textfile = metrics_disk / "textfile"
        textfile.mkdir(mode=0o755)
        prom, audit = textfile / "nomad-secrets.prom", audit_disk / "audit.jsonl"
        counters = {
            f'provider="p{i}",store="aws-sm",outcome="{outcome}"': 16.0 * i + j + 1
            for i in range(8)
            for j, outcome in enumerate(["ok", *KINDS])
        }
        prom.write_text(metrics.render({"nomad_secrets_fetches_total": dict(counters)}))
        padding = json.dumps({"pad": "x" * 4000}) + "\n"  # ~50 bytes left in the page: less than a record
        audit.write_text(padding)
        observed(nomad, moto_endpoint, prom=prom, audit=audit, debug=debug)
        with node_exporter(textfile) as exporter:
            assert nomad.fetch("aws", "nodefiles/db").ok  # room: written (and the lock file made)
            assert written(prom)[OK] == 1 and written(prom)[lost("audit-file")] == 0
            audit.write_text(padding)

            audit_filler = fill(audit_disk)
            assert nomad.fetch("aws", "nodefiles/db").ok
            assert audit.read_text() == padding  # no half line
            assert exporter.scrape()[lost("audit-file")] == 1

            metrics_filler = fill(metrics_disk)
            before = prom.read_bytes()
            assert nomad.fetch("aws", "nodefiles/db").ok
            assert prom.read_bytes() == before and audit.read_text() == padding
            assert sorted(p.name for p in textfile.iterdir()) == [
                "nomad-secrets.prom",
                "nomad-secrets.prom.lock",
                "nomad-secrets.prom.lost-audit-file",
                "nomad-secrets.prom.lost-metrics",
                "nomad-secrets.write-errors.prom",
            ]
            assert exporter.scrape_error() == 0
            during = exporter.scrape()  # the disk still full
            assert during[OK] == 2 and during[lost("metrics")] == 1 and during[lost("audit-file")] == 2

            audit_filler.unlink()
            metrics_filler.unlink()
            assert nomad.fetch("aws", "nodefiles/db").ok
            after = written(prom)
            assert exporter.scrape_error() == 0
            scraped = exporter.scrape()
    assert after[OK] == 3  # the fetch on the full disk is the one lost ...
    assert after[lost("metrics")] == 1 and after[lost("audit-file")] == 2  # ... and counted, with its record
    for labels, value in counters.items():
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        assert after[("nomad_secrets_fetches_total", tuple(sorted(fields.items())))] == value
    for sample, value in after.items():
        assert scraped[sample] == value
    log = debug.read_text()
    assert "No space left on device; it was left as it was" in log
    assert (
        f"cannot write the audit file {audit}: only " in log and "(is the disk full?); none were kept" in log
    )


def test_a_disk_full_before_the_first_count_still_counts_what_it_lost(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Nothing of the plugin's on the disk yet, and not a block free: the
    first fetch's count and its audit record are lost, and counted all the
    same (a count's file grows in length, no byte written); once there is
    room, the write-errors file shows both, and check says so."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    with small_disk() as disk:
        textfile = disk / "textfile"
        textfile.mkdir(mode=0o755)
        prom, audit = textfile / "nomad-secrets.prom", disk / "audit.jsonl"
        observed(nomad, moto_endpoint, prom=prom, audit=audit, debug=tmp_path / "debug.log")
        filler = fill(disk)
        assert nomad.fetch("aws", "nodefiles/db").ok
        assert not prom.exists() and audit.read_text() == ""
        assert Path(f"{prom}.lost-metrics").stat().st_blocks == 0  # its length is the count
        filler.unlink()
        assert "WARNING 1 fetch counts could not be written so far" in check_output(nomad)
        assert nomad.fetch("aws", "nodefiles/db").ok
        after = written(prom)
    assert after[OK] == 1 and after[lost("metrics")] == 1 and after[lost("audit-file")] == 1


# -- 3. a lock held by another process ----------------------------------------------------


@contextmanager
def held(lock: Path) -> Iterator[None]:
    """The metrics lock, held by this (another) process until the block ends."""
    fd = os.open(lock, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def carried(textfile: Path) -> list[Path]:
    return sorted(textfile.glob(".nomad-secrets.prom.carried.*"))


def test_a_stuck_lock_delays_no_answer_and_loses_no_count(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Five fetches end while the lock is held (so none waited for it);
    their counts wait beside the file, check says so, and the first fetch
    after the lock is let go adds them all."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    observed(nomad, moto_endpoint, prom=prom, audit=tmp_path / "audit.jsonl", debug=tmp_path / "debug.log")
    assert nomad.fetch("aws", "nodefiles/db").ok
    with held(Path(f"{prom}.lock")):
        before = prom.read_bytes()
        for _ in range(5):
            assert nomad.fetch("aws", "nodefiles/db").ok
        assert prom.read_bytes() == before
        waiting = carried(textfile)
        assert len(waiting) == 5 and all(p.stat().st_mode & 0o777 == 0o600 for p in waiting)
        assert "WARNING 5 fetch counts wait beside" in check_output(nomad)
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 6  # the records did not wait either
    assert nomad.fetch("aws", "nodefiles/db").ok
    got = written(prom)
    assert got[OK] == 7 and got[lost("metrics")] == 0 and carried(textfile) == []


def test_counts_past_the_bound_are_lost_and_counted(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """A lock held for good: 1000 counts wait (metrics.MAX_CARRIED); the next
    is lost, counted in the length of a file of its own, and shown at once
    in the write-errors file, while the lock is still held; once it is
    free, the file has the 1000 it kept."""
    put_secret(secretsmanager, "nodefiles/db", "v")
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    observed(nomad, moto_endpoint, prom=prom, audit=None, debug=tmp_path / "debug.log")
    assert nomad.fetch("aws", "nodefiles/db").ok
    one = 'nomad_secrets_fetches_total{provider="aws",store="aws-sm",outcome="ok"} 1\n'
    for i in range(metrics.MAX_CARRIED):
        path = textfile / f".nomad-secrets.prom.carried.{i:04d}-0"
        path.write_text(one)
        path.chmod(0o600)
    with node_exporter(textfile) as exporter, held(Path(f"{prom}.lock")):
        assert exporter.scrape()[lost("metrics")] == 0
        assert nomad.fetch("aws", "nodefiles/db").ok
        assert len(carried(textfile)) == metrics.MAX_CARRIED
        assert Path(f"{prom}.lost-metrics").stat().st_size == 1
        assert exporter.scrape()[lost("metrics")] == 1
    assert "1000 counts already wait for the lock" in (tmp_path / "debug.log").read_text()
    assert "WARNING 1 fetch counts could not be written so far" in check_output(nomad)
    assert nomad.fetch("aws", "nodefiles/db").ok
    got = written(prom)
    assert got[OK] == 1 + metrics.MAX_CARRIED + 1 and got[lost("metrics")] == 1
    assert carried(textfile) == []


def test_through_the_node_agent_a_stuck_lock_delays_no_answer(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """The agent writes records and counts after it has answered, in its own
    thread, with the same rules: the answer comes while the lock is held,
    the agent leaves its count beside the file, and the next count adds it."""
    put_secret(secretsmanager, "nodefiles/agent", "v")
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    write_config(
        nomad.plugin_dir,
        aws_config(moto_endpoint) + f'[metrics]\nfile = "{prom}"\n[agent]\nauto = false\n',
    )
    agent = AgentProcess(nomad.executable("aws"), "--plugin-dir", str(nomad.plugin_dir / "secrets"))
    try:
        agent.wait_for("listening")
        assert nomad.fetch("aws", "nodefiles/agent", job_id="web").ok
        agent.wait_for("answered provider='aws'")
        for _ in range(500):  # its writer thread counts after the answer: the first count made the lock
            if prom.exists():
                break
            subprocess.run(["sleep", "0.02"], check=True)
        with held(Path(f"{prom}.lock")):
            assert nomad.fetch("aws", "nodefiles/agent", job_id="web").ok
            for _ in range(500):  # the agent's writer thread leaves the count beside the file
                if carried(textfile):
                    break
                subprocess.run(["sleep", "0.02"], check=True)
            assert len(carried(textfile)) == 1
        assert nomad.fetch("aws", "nodefiles/agent", job_id="web").ok
    finally:
        assert agent.stop() == 0
    got = samples(prom.read_text())
    assert got[OK] == 3 and carried(textfile) == []
