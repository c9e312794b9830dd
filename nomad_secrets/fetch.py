"""One fetch: references in, one flat result out, or the first failure.

Several references are read concurrently, one thread each, inside the one
deadline. It fails closed: the first failure ends the fetch, and no partial
result is ever returned.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping

from nomad_secrets import debuglog, policy
from nomad_secrets.backends import STORE_LABELS, Backend, open_backend
from nomad_secrets.config import Config
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import PluginError, TimedOut
from nomad_secrets.identity import check_workload_token
from nomad_secrets.reference import Reference, parse_path
from nomad_secrets.request import parse_environment
from nomad_secrets.shape import merge, shape


def fetch(
    path: str, environ: Mapping[str, str], provider_name: str, config: Config, deadline: Deadline
) -> dict[str, str]:
    identity, options = parse_environment(environ)
    refs = parse_path(path)
    default_store = config.provider(provider_name).store
    stores = [ref.scheme or default_store for ref in refs]
    # Every reference is checked before any store is asked: a denied one
    # fails the block before anything is read.
    for ref, store in zip(refs, stores, strict=True):
        policy.check(config.policy, identity, f"{store}:{ref.locator}", ref.text)
    if options.workload_token is not None:
        check_workload_token(options.workload_token, identity)
    backends: dict[str, Backend] = {}
    try:
        for store in stores:
            if store not in backends:
                backends[store] = open_backend(store, config, options, identity, deadline)
        return _read_all(refs, stores, backends, deadline)
    finally:
        for backend in backends.values():
            backend.close()


def _read_all(
    refs: list[Reference], stores: list[str], backends: dict[str, Backend], deadline: Deadline
) -> dict[str, str]:
    done: queue.SimpleQueue[tuple[int, dict[str, str] | BaseException]] = queue.SimpleQueue()

    def read(index: int) -> None:
        ref, store = refs[index], stores[index]
        try:
            done.put((index, shape(ref, backends[store].read(ref), STORE_LABELS[store])))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            done.put((index, exc))

    for index in range(len(refs)):
        threading.Thread(target=read, args=(index,), daemon=True, name=f"ref-{index}").start()
    results: dict[int, dict[str, str]] = {}
    while len(results) < len(refs):
        try:
            index, outcome = done.get(timeout=max(deadline.remaining(), 0))
        except queue.Empty:
            first = min(i for i in range(len(refs)) if i not in results)
            raise _timed_out(refs[first], stores[first], deadline) from None
        if isinstance(outcome, BaseException):
            debuglog.log("reference-failed", reference=refs[index].text, error=type(outcome).__name__)
            raise outcome
        results[index] = outcome
    return merge([(refs[i], results[i]) for i in range(len(refs))])


def _timed_out(ref: Reference, store: str, deadline: Deadline) -> PluginError:
    return TimedOut(
        ref.text,
        STORE_LABELS[store],
        f"no answer within the plugin's {deadline.seconds:g} s deadline",
        "check that the store is reachable from the node; the operator sets plugin.deadline_seconds",
    )
