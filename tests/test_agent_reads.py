"""Fewer store calls through the node agent (issue 22), through the built
executable as Nomad runs it, against moto's server behind a counting proxy
double that holds every call 200 ms (a store across a region): identical
fetches at once share one call, ``cache_seconds`` keeps a value across
bursts, different secrets and different job identities never share, and
``stale_if_error_seconds`` answers a kept value while the store is down,
never one the store said was gone. Counts and events only, never times."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MotoIam, aws_client, aws_config, moto_process, put_secret, write_config
from support.agent_process import AgentProcess, agent_pid, stop_agent
from support.netutil import RecordingProxy
from support.nomad import Fetched, NomadClient
from test_agent import REGION_ENV, agent_config, operator_agent, socket_of
from test_security import WEB_IDENTITY, token

from nomad_secrets.agent import client
from nomad_secrets.agent.flight import Flights

DELAY = 0.2  # every call the proxy passes on is held this long first
BURST = 100
GET_SECRET_VALUE = "secretsmanager.GetSecretValue"  # the X-Amz-Target of a read


def get_calls(proxy: RecordingProxy) -> int:
    """The GetSecretValue calls the store was asked, so far."""
    return sum(1 for r in proxy.requests if r.headers.get("x-amz-target") == GET_SECRET_VALUE)


def failures(fetched: list[Fetched]) -> list[str | None]:
    return [f.error for f in fetched if not f.ok]


def burst(fetch: Callable[[int], Fetched], n: int = BURST) -> list[Fetched]:
    """``n`` fetches started at once, one thread each (as Nomad starts
    plugins: one goroutine per process)."""
    results: list[Any] = [None] * n
    ready = threading.Barrier(n)

    def one(i: int) -> None:
        ready.wait()
        results[i] = fetch(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Store:
    """moto behind the counting proxy, the config the agent reads, and the agent."""

    def __init__(self, nomad: NomadClient, proxy: RecordingProxy, tmp_path: Path) -> None:
        self.nomad, self.proxy, self.tmp_path = nomad, proxy, tmp_path
        self.agent: AgentProcess | None = None
        self.fetched = 0  # fetches the agent answered: each has its record and its count
        self._lock = threading.Lock()
        self.audit = tmp_path / "audit.jsonl"
        self.prom = tmp_path / "metrics" / "nomad-secrets.prom"
        self.prom.parent.mkdir(mode=0o755, parents=True)

    def start(self, aws: str = "", endpoint: str | None = None) -> None:
        """The agent, serving a config whose [aws] adds ``aws``."""
        config = aws_config(endpoint or self.proxy.url, aws) + (
            f'[audit]\nfile = "{self.audit}"\n[metrics]\nfile = "{self.prom}"\n[agent]\nauto = false\n'
        )
        write_config(self.nomad.plugin_dir, config)
        if self.agent is None:
            # At the priority a fetch starts it with (client.AGENT_NICE): under
            # a burst its small share of work unblocks many waiting plugins.
            self.agent = operator_agent(self.nomad, node=lambda: os.nice(client.AGENT_NICE))
            self.agent.wait_for("listening")

    def fetch(self, path: str, env: dict[str, str] | None = None, job_id: str = "web") -> Fetched:
        fetched = self.nomad.fetch("aws", path, env or REGION_ENV, job_id=job_id)
        with self._lock:
            self.fetched += 1
        return fetched

    def records(self) -> list[dict[str, Any]]:
        """Every fetch's audit record, once written (after its answer)."""
        self._settle(lambda: len(self._audit_lines()))
        return [json.loads(line) for line in self._audit_lines()]

    def counted(self, metric: str) -> float:
        """A count of the metrics file, once every fetch counted itself."""
        self._settle(lambda: self._counted("nomad_secrets_fetches_total"))
        return self._counted(metric)

    def by_agent(self, records: list[dict[str, Any]]) -> bool:
        """Every fetch answered by the agent, none in process."""
        assert self.agent is not None
        return {r["pid"] for r in records} == {self.agent.proc.pid}

    def _settle(self, seen: Callable[[], float]) -> None:
        for _ in range(1000):
            if seen() >= self.fetched:
                return
            time.sleep(0.01)
        raise AssertionError(f"{seen()} of {self.fetched} fetches written")

    def _audit_lines(self) -> list[str]:
        return self.audit.read_text().splitlines() if self.audit.exists() else []

    def _counted(self, metric: str) -> float:
        text = self.prom.read_text() if self.prom.exists() else ""
        wanted = f'{metric}{{provider="aws",store="aws-sm"'
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))

    def stop(self) -> None:
        if self.agent is not None:
            assert self.agent.stop() == 0
            self.agent = None


@pytest.fixture
def store(nomad: NomadClient, moto_endpoint: str, tmp_path: Path) -> Iterator[Store]:
    with RecordingProxy(moto_endpoint, delay=DELAY) as proxy:
        running = Store(nomad, proxy, tmp_path)
        try:
            yield running
        finally:
            running.stop()


@pytest.mark.serial  # 100 plugin processes at once: alone, as the other bursts
def test_a_burst_of_one_secret_shares_calls_without_any_cache(store: Store, secretsmanager: Any) -> None:
    """No cache setting: the fetches that arrive while a call is in flight
    share it. 100 at once make at most 10 calls, each answered right."""
    value = "shared-" + uuid.uuid4().hex
    put_secret(secretsmanager, "reads/shared", value)
    store.start()
    assert store.fetch("reads/shared").result == {"value": value}  # the agent's client made, warm
    before = get_calls(store.proxy)
    fetched = burst(lambda i: store.fetch("reads/shared"))
    assert [f.result for f in fetched] == [{"value": value}] * BURST, failures(fetched)
    calls = get_calls(store.proxy) - before
    assert 1 <= calls <= 10, calls
    records = store.records()[1:]
    assert len(records) == BURST and all(r["outcome"] == "ok" for r in records)
    assert store.by_agent(records)
    shared = sum(r["store_reads"]["aws-sm"]["shared"] for r in records)
    made = sum(r["store_reads"]["aws-sm"]["calls"] for r in records)
    assert made == calls and shared == BURST - calls and not any(r["stale"] for r in records)
    assert sum(r["store_reads"]["aws-sm"]["hits"] for r in records) == 0
    assert store.counted("nomad_secrets_store_calls_total") == calls + 1
    assert store.counted("nomad_secrets_store_calls_shared_total") == BURST - calls
    assert store.counted("nomad_secrets_cache_hits_total") == 0
    assert store.agent is not None
    assert value not in store.audit.read_text() + store.prom.read_text() + "\n".join(store.agent.lines)


@pytest.mark.serial  # 100 plugin processes at once: alone, as the other bursts
def test_with_cache_seconds_three_bursts_make_one_call(store: Store, secretsmanager: Any) -> None:
    value = "kept-" + uuid.uuid4().hex
    put_secret(secretsmanager, "reads/kept", value)
    store.start("cache_seconds = 60\n")
    before = get_calls(store.proxy)
    for _ in range(3):
        fetched = burst(lambda i: store.fetch("reads/kept"))
        assert [f.result for f in fetched] == [{"value": value}] * BURST, [
            f.error for f in fetched if not f.ok
        ]
    assert get_calls(store.proxy) - before == 1
    records = store.records()
    assert len(records) == 3 * BURST and store.by_agent(records)
    counts = {e: sum(r["store_reads"]["aws-sm"][e] for r in records) for e in ("calls", "shared", "hits")}
    assert counts["calls"] == 1 and counts["shared"] + counts["hits"] == 3 * BURST - 1, counts
    assert store.counted("nomad_secrets_cache_hits_total") == counts["hits"] >= 2 * BURST


@pytest.mark.serial  # 100 plugin processes at once: alone, as the other bursts
def test_a_burst_of_different_secrets_makes_a_call_each(store: Store, secretsmanager: Any) -> None:
    """Nothing is shared between different secrets, cache or not."""
    tag = uuid.uuid4().hex[:8]
    for i in range(BURST):
        put_secret(secretsmanager, f"reads/{tag}/{i}", f"v{i}")
    store.start("cache_seconds = 60\n")
    before = get_calls(store.proxy)
    fetched = burst(lambda i: store.fetch(f"reads/{tag}/{i}"))
    assert [f.result for f in fetched] == [{"value": f"v{i}"} for i in range(BURST)]
    assert get_calls(store.proxy) - before == BURST


def test_a_selector_and_a_name_are_each_callers_own(store: Store, secretsmanager: Any) -> None:
    """One call for three ways of writing the same secret; each caller gets
    its own shape, and its own words in an error."""
    put_secret(secretsmanager, "reads/shaped", json.dumps({"user": "u", "password": "p"}))
    store.start("cache_seconds = 60\n")
    before = get_calls(store.proxy)
    paths = ["reads/shaped", "reads/shaped#password", "db = reads/shaped#user\n"]
    fetched = burst(lambda i: store.fetch(paths[i % 3]), 30)
    wanted = [{"user": "u", "password": "p"}, {"value": "p"}, {"db": "u"}]
    assert [f.result for f in fetched] == [wanted[i % 3] for i in range(30)]
    assert get_calls(store.proxy) - before == 1
    missing = burst(lambda i: store.fetch(["reads/gone-x", "reads/gone-x#f"][i % 2]), 10)
    for i, f in enumerate(missing):
        said = ["'reads/gone-x'", "'reads/gone-x#f'"][i % 2]
        assert (f.plugin_error or "").startswith(said + " (AWS Secrets Manager): not found"), f.plugin_error


def test_two_jobs_identities_never_share_a_call_or_an_entry(store: Store, secretsmanager: Any) -> None:
    """Workload identity (STS AssumeRoleWithWebIdentity, each job its own
    role): two jobs reading one secret at once make a call each, signed
    with each one's own role's keys; later reads of each are its own cache
    hits, and a third job's read is a call of its own."""
    value = "per-job-" + uuid.uuid4().hex
    put_secret(secretsmanager, "reads/per-job", value)
    store.start("cache_seconds = 60\n" + WEB_IDENTITY)
    jobs = ["web", "api"]
    envs = {job: {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token(job=job)} for job in jobs}
    before = len(store.proxy.requests)
    fetched = burst(lambda i: store.fetch("reads/per-job", envs[jobs[i % 2]], job_id=jobs[i % 2]), 40)
    assert [f.result for f in fetched] == [{"value": value}] * 40, failures(fetched)
    reads = [
        r
        for r in store.proxy.requests[before:]
        if r.headers.get("x-amz-target") == "secretsmanager.GetSecretValue"
    ]
    assert len(reads) == 2
    signers = {r.headers["authorization"].split("Credential=")[1].split("/")[0] for r in reads}
    assert len(signers) == 2 and not any(s == "testing" for s in signers)
    # Each job's next read is its own entry; a third job's is a call.
    calls = get_calls(store.proxy)
    assert store.fetch("reads/per-job", envs["web"]).result == {"value": value}
    assert store.fetch("reads/per-job", envs["api"], job_id="api").result == {"value": value}
    assert get_calls(store.proxy) == calls
    third = {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token(job="batch")}
    assert store.fetch("reads/per-job", third, job_id="batch").result == {"value": value}
    assert get_calls(store.proxy) == calls + 1


def test_a_token_that_copies_anothers_claims_shares_nothing_with_it(
    store: Store, secretsmanager: Any
) -> None:
    """The plugin does not verify a workload identity token's signature (the
    store does, at its call): a token with the same claims as one already
    read but a signature of its own (forged) must not be served the kept
    value, nor join its call. It makes a call of its own, which a real
    store refuses (moto's STS does not check signatures, so here it counts)."""
    value = "token-" + uuid.uuid4().hex
    put_secret(secretsmanager, "reads/token", value)
    store.start("cache_seconds = 60\n" + WEB_IDENTITY)
    genuine = token(job="web")
    header, payload, _ = genuine.split(".")
    forged = f"{header}.{payload}.{'A' * 43}"
    calls = get_calls(store.proxy)
    assert store.fetch("reads/token", {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": genuine}).result == {
        "value": value
    }
    assert store.fetch("reads/token", {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": genuine}).ok  # kept: no call
    assert get_calls(store.proxy) == calls + 1
    assert store.fetch("reads/token", {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": forged}).ok
    assert get_calls(store.proxy) == calls + 2, "the forged token was served the genuine one's entry"


def test_a_config_change_empties_the_cache(store: Store, secretsmanager: Any) -> None:
    put_secret(secretsmanager, "reads/config", "one")
    store.start("cache_seconds = 60\n")
    assert store.fetch("reads/config").result == {"value": "one"}
    put_secret(secretsmanager, "reads/config", "two")
    assert store.fetch("reads/config").result == {"value": "one"}  # kept
    calls = get_calls(store.proxy)
    store.start("cache_seconds = 60\ncache_max_bytes = 1000000\n")
    assert store.fetch("reads/config").result == {"value": "two"}
    assert get_calls(store.proxy) == calls + 1


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(store: Store, secretsmanager: Any) -> None:
    """cache_max_bytes: room for about two of these values; the third
    evicts the least recently used, which is then read again."""
    tag = uuid.uuid4().hex[:8]
    for name in "abc":
        put_secret(secretsmanager, f"reads/{tag}/{name}", name * 400)
    store.start("cache_seconds = 60\ncache_max_bytes = 1300\n")
    for name in "aba":  # a is the most recently used
        store.fetch(f"reads/{tag}/{name}")
    calls = get_calls(store.proxy)
    store.fetch(f"reads/{tag}/c")  # evicts b
    assert get_calls(store.proxy) == calls + 1
    store.fetch(f"reads/{tag}/a")
    assert get_calls(store.proxy) == calls + 1
    store.fetch(f"reads/{tag}/b")
    assert get_calls(store.proxy) == calls + 2
    assert store.counted("nomad_secrets_cache_evictions_total") == 2
    assert sum(r["store_reads"]["aws-sm"]["evictions"] for r in store.records()) == 2


@pytest.mark.long
def test_stale_if_error_answers_a_kept_value_while_the_store_is_down(
    nomad: NomadClient, tmp_path: Path
) -> None:
    """cache_seconds = 1, stale_if_error_seconds = 3600, and the store (a
    moto server of its own, behind a proxy that is then shut) stopped: a
    fetch answers the kept value, marked stale in the audit record and the
    metrics; a secret the store said was not found before the outage is
    not answered; without stale_if_error_seconds the fetch fails as it
    does with no agent."""
    with moto_process() as endpoint:
        own = aws_client(endpoint, "secretsmanager")
        own.create_secret(Name="reads/stale", SecretString="still-here")
        own.create_secret(Name="reads/deleted", SecretString="gone-soon")
        # Without stale_if_error_seconds: once kept past its second, the store's failure.
        with RecordingProxy(endpoint) as proxy:
            store = Store(nomad, proxy, tmp_path)
            try:
                store.start("cache_seconds = 1\n")
                assert store.fetch("reads/stale").result == {"value": "still-here"}
                down(proxy)
                failed = _until(store, lambda f: not f.ok)
                assert "(AWS Secrets Manager): cannot reach" in (failed.plugin_error or ""), failed
                assert b"still-here" not in failed.run.stdout
            finally:
                store.stop()
        with RecordingProxy(endpoint) as proxy:
            store = Store(nomad, proxy, tmp_path / "with")
            try:
                store.start("cache_seconds = 1\nstale_if_error_seconds = 3600\n")
                assert store.fetch("reads/stale").result == {"value": "still-here"}
                assert store.fetch("reads/deleted").result == {"value": "gone-soon"}
                own.delete_secret(SecretId="reads/deleted", ForceDeleteWithoutRecovery=True)
                # Past its second the store is asked, says not found, and the entry is dropped.
                gone = _until(store, lambda f: not f.ok, "reads/deleted")
                assert "not found" in (gone.plugin_error or ""), gone
                down(proxy)
                kept = len(store.records())
                # Fresh, then past its second: answered all the same, and marked stale.
                stale = _until(store, lambda f: store.records()[-1].get("stale") is True)
                assert stale.result == {"value": "still-here"}, stale.error
                records = store.records()[kept:]
                assert [r["outcome"] for r in records] == ["ok"] * len(records)
                assert records[-1]["store_reads"]["aws-sm"]["stale"] == 1
                assert store.counted("nomad_secrets_stale_answers_total") == 1
                deleted = store.fetch("reads/deleted")
                assert "(AWS Secrets Manager): cannot reach" in (deleted.plugin_error or ""), deleted
                assert b"gone-soon" not in deleted.run.stdout
            finally:
                store.stop()


def test_an_agent_keeping_values_does_not_idle_out_before_they_can_stand_in(
    nomad: NomadClient, tmp_path: Path, socket_dir: Path
) -> None:
    """A self-started agent idles out (agent.idle_exit_seconds), and its
    kept values with it: after a quiet spell, the next outage found no value
    to stand in, whatever stale_if_error_seconds said (operator's review).
    It now stays while a kept value may still stand in: past its idle time
    it says so once, and the outage after it is answered stale, by it."""
    log = tmp_path / "debug.log"
    with moto_process() as endpoint:
        aws_client(endpoint, "secretsmanager").create_secret(Name="reads/idle", SecretString="kept")
        with RecordingProxy(endpoint) as proxy:
            write_config(
                nomad.plugin_dir,
                agent_config(
                    proxy.url,
                    log,
                    "cache_seconds = 1\nstale_if_error_seconds = 3600\n",
                    "idle_exit_seconds = 1\n",
                ),
            )
            sock = socket_of(nomad, socket_dir)
            try:
                assert store_fetch(nomad, "reads/idle").result == {"value": "kept"}
                started = agent_pid(sock)
                assert started is not None
                for _ in range(600):  # past its idle time: held, and said once
                    if "agent-idle-held" in log.read_text():
                        break
                    time.sleep(0.05)
                assert "agent-idle-held" in log.read_text() and "agent-stopped" not in log.read_text()
                down(proxy)
                stale = store_fetch(nomad, "reads/idle")
                assert stale.result == {"value": "kept"}, stale.error
                assert agent_pid(sock) == started
            finally:
                stop_agent(sock)


def store_fetch(nomad: NomadClient, path: str) -> Fetched:
    return nomad.fetch("aws", path, REGION_ENV)


def down(proxy: RecordingProxy) -> None:
    """The store stops answering: its address refuses connections."""
    proxy.server.shutdown()
    proxy.server.server_close()


def _until(store: Store, done: Callable[[Fetched], bool], path: str = "reads/stale") -> Fetched:
    """Fetch ``path`` until ``done`` says the answer is the one awaited
    (what the agent keeps passes its second: an event, not a time)."""
    for _ in range(100):
        fetched = store.fetch(path)
        if done(fetched):
            return fetched
        assert fetched.ok, fetched.error  # a kept value, until then
        time.sleep(0.1)
    raise AssertionError(f"{path}: the awaited answer never came")


BLOCK = (
    "a = reads/batch-a\nb = reads/batch-b\nc = reads/batch-a#k\nd = reads/batch-c?version_stage=AWSCURRENT\n"
)


def batch_calls(proxy: RecordingProxy) -> tuple[int, int]:
    """(BatchGetSecretValue calls, GetSecretValue calls) that passed the proxy."""
    targets = [r.headers.get("x-amz-target") for r in proxy.requests]
    return targets.count("secretsmanager.BatchGetSecretValue"), targets.count(GET_SECRET_VALUE)


@pytest.mark.parametrize("through", ["agent", "in process"])
def test_a_block_of_several_secrets_is_one_batch_call(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path, through: str
) -> None:
    """Secrets Manager references of one block reading the current version
    are one BatchGetSecretValue; one with a version option is read alone;
    each failure is the one GetSecretValue gives, in the reference's words."""
    put_secret(secretsmanager, "reads/batch-a", json.dumps({"k": "A"}))
    put_secret(secretsmanager, "reads/batch-b", "B")
    put_secret(secretsmanager, "reads/batch-c", "C")
    doomed_name = f"reads/batch-doomed-{uuid.uuid4().hex[:8]}"
    put_secret(secretsmanager, doomed_name, "D")
    secretsmanager.delete_secret(SecretId=doomed_name)  # scheduled for deletion
    with RecordingProxy(moto_endpoint) as proxy:
        store = Store(nomad, proxy, tmp_path)
        try:
            if through == "agent":
                store.start()
            else:
                write_config(nomad.plugin_dir, aws_config(proxy.url))  # no [agent]: in process
            fetched = store.fetch(BLOCK)
            assert fetched.result == {"a_k": "A", "b": "B", "c": "A", "d": "C"}, fetched.error
            assert batch_calls(proxy) == (1, 1)
            missing = store.fetch("a = reads/batch-a\nb = reads/batch-nothing\n")
            assert (missing.plugin_error or "").startswith(
                "'reads/batch-nothing' (AWS Secrets Manager): not found"
            ), missing
            doomed = store.fetch(f"a = reads/batch-a\nb = {doomed_name}\n")
            said = f"'{doomed_name}' (AWS Secrets Manager): the secret is scheduled for deletion"
            assert said in (doomed.plugin_error or ""), doomed
            assert batch_calls(proxy) == (3, 1)
            if through == "agent":
                (record, *_) = store.records()
                assert record["store_reads"]["aws-sm"]["calls"] == 2  # the batch, and the version's read
                assert record["store_reads"]["aws-sm"]["shared"] == 2
        finally:
            store.stop()


def test_a_batch_that_fails_whole_gives_no_name_its_failure(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """One name can fail the whole BatchGetSecretValue (moto: a secret that
    has no value yet). That failure is no other name's: each is read alone,
    the good one answers, and the fetch fails with the bad name's own
    error, never the good one's."""
    put_secret(secretsmanager, "reads/whole-good", "G")
    empty = f"reads/whole-empty-{uuid.uuid4().hex[:8]}"
    secretsmanager.create_secret(Name=empty)  # no value: GetSecretValue says not found
    with RecordingProxy(moto_endpoint) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url))  # in process
        for block in (f"a = reads/whole-good\nb = {empty}\n", f"b = {empty}\na = reads/whole-good\n"):
            failed = nomad.fetch("aws", block, REGION_ENV)
            said = failed.plugin_error or ""
            assert said.startswith(f"'{empty}' (AWS Secrets Manager): not found"), said
            assert "whole-good" not in said
        assert batch_calls(proxy)[0] == 2  # each block tried the batch, then read alone


def test_without_leave_to_batch_each_secret_is_read_alone(nomad: NomadClient, tmp_path: Path) -> None:
    """An IAM policy that grants GetSecretValue only (written before the
    batch call existed): the block still reads, one call each."""
    with moto_process({"INITIAL_NO_AUTH_ACTION_COUNT": "5"}) as endpoint:
        iam = aws_client(endpoint, "iam")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        allow = {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}
        policy = json.dumps({"Version": "2012-10-17", "Statement": [allow]})
        iam.put_user_policy(UserName="reader", PolicyName="get-only", PolicyDocument=policy)
        own = aws_client(endpoint, "secretsmanager")
        own.create_secret(Name="reads/one", SecretString="1")
        own.create_secret(Name="reads/two", SecretString="2")
        with RecordingProxy(endpoint) as proxy:
            config = MotoIam(proxy.url, key["AccessKeyId"], key["SecretAccessKey"]).config()
            write_config(nomad.plugin_dir, config)
            fetched = nomad.fetch("aws", "one = reads/one\ntwo = reads/two\n", REGION_ENV)
            assert fetched.result == {"one": "1", "two": "2"}, fetched.error
            assert batch_calls(proxy) == (1, 2)


def test_a_call_that_outlived_its_starters_deadline_is_joined_by_no_one() -> None:
    """The operator review: right after a hung store came back, a fetch
    joined the call left over from the outage (botocore's retries ran on in
    its thread) and failed at its own deadline while the store answered.
    A call is shared while the read that started it waits; after that, a
    read starts its own, and the old call's end takes out only itself."""
    flights: Flights[str] = Flights()
    hung, slow = threading.Event(), threading.Event()
    later = time.monotonic() + 60

    first, led = flights.join("k", lambda: "old" if hung.wait(30) else "", later)
    same, joined_led = flights.join("k", lambda: "unused", later)
    assert led and not joined_led and same is first  # while its starter waits: shared

    left, left_led = flights.join("j", lambda: "old" if hung.wait(30) else "", time.monotonic() - 1)
    fresh, fresh_led = flights.join("j", lambda: "new" if slow.wait(30) else "", later)
    assert left_led and fresh_led and fresh is not left  # its starter was answered: a call of its own
    hung.set()
    assert left.done.wait(10) and left.value == "old" and first.done.wait(10)
    behind, behind_led = flights.join("j", lambda: "unused", later)
    assert behind is fresh and not behind_led  # the old call's end left the fresh one joinable
    slow.set()
    assert fresh.done.wait(10) and fresh.value == "new"
