"""One fetch: references in, one flat result out, or the first failure.

``fetch`` is Nomad's front door: it turns the path and the environment into
references and a caller, then ``resolve`` answers. Every front door (the CI
extensions too) asks ``resolve`` the same question: these references, for
this caller, under this policy.

Several references are read concurrently, one thread each, inside the one
deadline. It fails closed: the first failure ends the fetch, and no partial
result is ever returned. The answer is bounded: past ``max_output_bytes``
of JSON it is an error naming the limit, never a truncated result.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from nomad_secrets import debuglog, limits, policy
from nomad_secrets.backends import STORE_LABELS, Backend, open_backend, read_scope
from nomad_secrets.config import Config, check_files, require_policy
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import NodeBusy, PluginError, RequestError, TimedOut
from nomad_secrets.identity import check_workload_token
from nomad_secrets.reference import Reference, parse_path
from nomad_secrets.request import Identity, parse_environment
from nomad_secrets.shape import merge, shape

if TYPE_CHECKING:
    from nomad_secrets.agent.reads import Tally
    from nomad_secrets.pool import StorePool


def fetch(
    path: str,
    environ: Mapping[str, str],
    provider_name: str,
    config: Config,
    deadline: Deadline,
    *,
    pool: StorePool | None = None,
    tally: Tally | None = None,
) -> dict[str, str]:
    """Nomad's question, answered; ``pool`` lends warm clients (the agent),
    and with ``tally`` reads through its single flight and cache."""
    identity, options = parse_environment(environ)
    refs = parse_path(path)
    caller = policy.nomad_caller(identity.namespace, identity.job_id)
    provider = config.provider(provider_name)
    stores = [ref.scheme or provider.store for ref in refs]
    require_policy(config)
    check_policy(refs, stores, caller, config.policy, deadline)
    if "vault" in stores:
        check_files(config, provider.vault)
    claims = None
    if options.workload_token is not None:
        claims = check_workload_token(options.workload_token, identity)
        # The store sees the job as its token names it: a child as its parent.
        identity = Identity(identity.namespace, str(claims["nomad_job_id"]))
    backends: dict[str, Backend] = {}
    shared = None if pool is None else pool.shared

    def backend_for(store: str) -> Backend:
        seconds = config.plugin.deadline_seconds
        warm = None if pool is None else pool.backend(store, provider, seconds, options, identity, deadline)
        if warm is None:
            if store not in backends:
                backends[store] = open_backend(store, provider, options, identity, deadline)
            warm = backends[store]
        if store == "aws-sm":  # several secrets of the block: one BatchGetSecretValue
            from nomad_secrets.backends.aws_batch import batched

            warm = batched(warm, [ref for ref, at in zip(refs, stores, strict=True) if at == store])
        if shared is None or tally is None:
            return warm
        from nomad_secrets.agent.reads import SharedBackend

        return SharedBackend(shared, warm, store, provider, options, claims, deadline, tally)

    try:
        return resolve(refs, stores, backend_for, deadline, config.plugin.max_output_bytes)
    except BaseException as exc:
        # A library reports a limit as something else ("cannot connect"): say which limit.
        limit = limits.exhausted(exc)
        if limit is None:
            raise
        raise limit from None
    finally:
        for backend in backends.values():
            backend.close()


# How often the wait for the readers looks for one that died without a word.
CRASH_CHECK_SECONDS = 0.25


def check_policy(
    refs: list[Reference],
    stores: list[str],
    caller: policy.Caller,
    rules: tuple[policy.Rule, ...] | None,
    deadline: Deadline,
) -> None:
    """Every reference is checked before any store is asked: a denied one
    fails the request before anything is read."""
    for ref, store in zip(refs, stores, strict=True):
        policy.check(rules, caller, store, ref.locator, ref.text, read_scope(store, ref))
    if deadline.expired():  # nothing asked of any store yet
        raise NodeBusy.late(refs[0].text, time.monotonic() - deadline.start, deadline.seconds)


def resolve(
    refs: list[Reference],
    stores: list[str],
    backend_for: Callable[[str], Backend],
    deadline: Deadline,
    max_output_bytes: int,
) -> dict[str, str]:
    """Read every reference (already allowed) and shape one result.

    ``backend_for`` gives the store's client; it is called here, in the
    calling thread, before any read starts (botocore's client creation is
    not thread-safe; its clients are).
    """
    backends = {store: backend_for(store) for store in dict.fromkeys(stores)}
    done: queue.SimpleQueue[tuple[int, dict[str, str] | BaseException]] = queue.SimpleQueue()
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(refs)):
        pending.put(index)
    failed = threading.Event()
    asked = [False]  # a reader has sent something to a store
    # A reader's failure that not even a queue item could carry (memory ran
    # out in its handler): set without allocating, found by the wait below.
    crashed: list[BaseException | None] = [None]

    def read_pending() -> None:
        try:
            while not failed.is_set() and not deadline.expired():
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                ref, store = refs[index], stores[index]
                asked[0] = True
                try:
                    done.put((index, shape(ref, backends[store].read(ref), STORE_LABELS[store])))
                except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                    failed.set()  # fail closed: no reader starts another reference
                    done.put((index, exc))
        except BaseException as exc:  # noqa: BLE001 - a thread that died silently held the fetch to its deadline
            crashed[0] = exc
            failed.set()

    readers = start_readers(read_pending, reader_count(len(refs)))
    if readers == 0:  # no thread could start (memory, or the threads limit): read in turn, here
        debuglog.log("reading-in-turn", references=len(refs))
        read_pending()
    results: dict[int, dict[str, str]] = {}
    size = 0
    while len(results) < len(refs):
        try:
            index, outcome = done.get(timeout=min(max(deadline.remaining(), 0), CRASH_CHECK_SECONDS))
        except queue.Empty:
            if crashed[0] is not None:
                raise crashed[0] from None
            if not deadline.expired():
                continue
            first = min(i for i in range(len(refs)) if i not in results)
            if not asked[0]:  # the deadline passed while the node made the clients (imports, CPU)
                age = time.monotonic() - deadline.start
                raise NodeBusy.late(refs[first].text, age, deadline.seconds) from None
            raise _timed_out(refs[first], stores[first], deadline) from None
        if isinstance(outcome, BaseException):
            debuglog.log("reference-failed", reference=refs[index].text, error=type(outcome).__name__)
            raise outcome
        size += encoded_size(outcome)
        if size > max_output_bytes:
            raise _too_large(refs[index], max_output_bytes)
        results[index] = outcome
    return merge([(refs[i], results[i]) for i in range(len(refs))])


def reader_count(references: int) -> int:
    """Readers to start: one a reference, as many as the file descriptor
    limit leaves room for (each holds a connection while it reads)."""
    free = limits.descriptors_free()
    if free is None:
        return references
    room = free - limits.SPARE_DESCRIPTORS
    if room < 1:
        raise limits.out_of_descriptors("starting to read the secrets")
    return min(references, room)


def start_readers(target: Callable[[], None], count: int) -> int:
    """Start up to ``count`` threads running ``target``; how many started.
    A thread that cannot start (its stack is more than the memory limit
    leaves, or the threads limit is reached) leaves the work to the others."""
    for started in range(count):
        try:
            threading.Thread(target=target, daemon=True, name=f"reader-{started}").start()
        except RuntimeError:
            debuglog.log("reader-not-started", started=started, wanted=count)
            return started
    return count


def encoded_size(values: Mapping[str, str]) -> int:
    """Bytes these keys and values take in the JSON answer (as protocol
    encodes it: ASCII, escapes included)."""
    return sum(len(json.dumps(k)) + len(json.dumps(v)) + 4 for k, v in values.items())


def _too_large(ref: Reference, limit: int) -> PluginError:
    return RequestError(
        f"{ref.text!r}: the answer would be larger than the plugin's limit of {limit:,} bytes"
        " (plugin.max_output_bytes); read fewer or smaller secrets, select fields with #,"
        " or ask the operator to raise the limit"
    )


def _timed_out(ref: Reference, store: str, deadline: Deadline) -> PluginError:
    return TimedOut(
        ref.text,
        STORE_LABELS[store],
        f"no answer within the plugin's {deadline.seconds:g} s deadline",
        "check that the store is reachable from the node; the operator sets plugin.deadline_seconds",
    )
