"""A fetch's answer for Nomad, as bytes: the one place that turns a fetch's
outcome (a result, our own error, or an unexpected exception) into what
Nomad reads, and logs it for the operator. The plugin prints it; the node
agent sends it back for the plugin to print, so both say the same."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from nomad_secrets.core.config import Config
from nomad_secrets.nomad import protocol
from nomad_secrets.nomad.fetch import Reads, fetch
from nomad_secrets.process import debuglog, endings
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import PluginError
from nomad_secrets.process.limits import Exhausted
from nomad_secrets.process.limits import exhausted as limit_of
from nomad_secrets.stores.pool import StorePool

TYPE_CHECKING = False  # not typing's (see cli.py)
if TYPE_CHECKING:
    from nomad_secrets.records.observe import Observer


def fetch_answer(
    path: str,
    environ: Mapping[str, str],
    provider: str,
    config: Config,
    deadline: Deadline,
    *,
    pool: StorePool | None = None,
    reads: Reads | None = None,
    observer: Observer | None = None,
    heal: Callable[[str], bool] | None = None,
    exhausted: Callable[[Exhausted], None] | None = None,
) -> bytes:
    """Fetch and encode; never raises but MemoryError. The operator's audit
    record and metrics (``observer``, made here unless given) see how it
    ended; ``heal`` and ``exhausted``: see error_answer."""
    start = deadline.start
    observer = observer or observer_for(config, provider, path, environ, start)
    debuglog.log(
        "fetch",
        provider=provider,
        path=path,
        job=environ.get("NOMAD_JOB_ID"),
        namespace=environ.get("NOMAD_NAMESPACE"),
    )
    try:
        result = fetch(path, environ, provider, config, deadline, pool=pool, reads=reads)
    except BaseException as exc:  # noqa: BLE001 - Nomad must get an answer
        if observer is not None:
            kind = exc.kind if isinstance(exc, PluginError) else "internal"
            observer.finish(kind, None if reads is None else reads.counts())
        return error_answer(exc, start, heal, exhausted)
    debuglog.log("fetched", provider=provider, keys=len(result), ms=_ms(start))
    if observer is not None:
        observer.finish(None, None if reads is None else reads.counts())
    return protocol.encode_result(result)


def observer_for(
    config: Config, provider: str, path: str, environ: Mapping[str, str], start: float
) -> Observer | None:
    """The audit record and metrics of one fetch, when the config asks for
    either (their modules are imported only then)."""
    if not (config.audit.syslog or config.audit.file or config.metrics.file):
        return None
    from nomad_secrets.records.observe import Observer

    return Observer(config, provider, path, environ, start)


def error_answer(
    exc: BaseException,
    start: float,
    heal: Callable[[str], bool] | None = None,
    exhausted: Callable[[Exhausted], None] | None = None,
) -> bytes:
    """Our own message, or for anything else its type only: an exception's
    text could quote a secret. An exception that is not ours may come from
    the unpack directory, damaged since it was made: its manifest says
    (cache.damage, read only here, on the way out). ``heal`` (the plugin's,
    not the agent's) moves it aside and may start the run again. A limit
    of the process (file descriptors, memory) comes first: it is named,
    never taken for damage, and told to ``exhausted`` (the agent's: its
    own limits, not the plugin's)."""
    exc = limit_of(exc, "answering the fetch") or exc  # a limit of the process, reported as something else
    if isinstance(exc, Exhausted) and exhausted is not None:
        exhausted(exc)
    if isinstance(exc, PluginError):
        debuglog.log("failed", error=type(exc).__name__, message=exc.message, ms=_ms(start))
        return protocol.encode_error(exc.message)
    debuglog.log("failed", error=type(exc).__name__, message=None, ms=_ms(start))
    import nomad_secrets
    from nomad_secrets.process import cache

    said = cache.healed(
        cache.held_by(nomad_secrets.__file__),
        heal,
        lambda entry, damage: debuglog.log("damaged", directory=entry, damage=damage),
    )
    if said is not None:
        return protocol.encode_error(said)
    import traceback

    for frame in traceback.extract_tb(exc.__traceback__):
        debuglog.log("  at", file=frame.filename, line=frame.lineno, function=frame.name)
    return protocol.encode_error(endings.internal_error(exc))


def _ms(start: float) -> int:
    return round((time.monotonic() - start) * 1000)
