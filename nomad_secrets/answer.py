"""A fetch's answer for Nomad, as bytes: the one place that turns a fetch's
outcome (a result, our own error, or an unexpected exception) into what
Nomad reads, and logs it for the operator. The plugin prints it; the node
agent sends it back for the plugin to print, so both say the same."""

from __future__ import annotations

import time
from collections.abc import Mapping

from nomad_secrets import debuglog, protocol
from nomad_secrets.config import Config
from nomad_secrets.deadline import Deadline
from nomad_secrets.errors import PluginError
from nomad_secrets.fetch import fetch
from nomad_secrets.pool import StorePool

TYPE_CHECKING = False  # not typing's (see cli.py)
if TYPE_CHECKING:
    from nomad_secrets.observe import Observer


def fetch_answer(
    path: str,
    environ: Mapping[str, str],
    provider: str,
    config: Config,
    deadline: Deadline,
    *,
    pool: StorePool | None = None,
    observer: Observer | None = None,
) -> bytes:
    """Fetch and encode; never raises. The operator's audit record and
    metrics (``observer``, made here unless given) see how it ended."""
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
        result = fetch(path, environ, provider, config, deadline, pool=pool)
    except BaseException as exc:  # noqa: BLE001 - Nomad must get an answer
        if observer is not None:
            observer.finish(exc.kind if isinstance(exc, PluginError) else "internal")
        return error_answer(exc, start)
    debuglog.log("fetched", provider=provider, keys=len(result), ms=_ms(start))
    if observer is not None:
        observer.finish(None)
    return protocol.encode_result(result)


def observer_for(
    config: Config, provider: str, path: str, environ: Mapping[str, str], start: float
) -> Observer | None:
    """The audit record and metrics of one fetch, when the config asks for
    either (their modules are imported only then)."""
    if not (config.audit.syslog or config.audit.file or config.metrics.file):
        return None
    from nomad_secrets.observe import Observer

    return Observer(config, provider, path, environ, start)


def error_answer(exc: BaseException, start: float) -> bytes:
    """Our own message, or for anything else its type only: an exception's
    text could quote a secret."""
    from nomad_secrets.limits import exhausted

    exc = exhausted(exc, "answering the fetch") or exc  # a limit of the process, reported as something else
    if isinstance(exc, PluginError):
        debuglog.log("failed", error=type(exc).__name__, message=exc.message, ms=_ms(start))
        return protocol.encode_error(exc.message)
    debuglog.log("failed", error=type(exc).__name__, message=None, ms=_ms(start))
    if isinstance(exc, ImportError) or type(exc).__name__ in ("UnknownServiceError", "DataNotFoundError"):
        # Our code or botocore's data missing: the unpack cache was damaged after it was made.
        import os

        import nomad_secrets

        unpacked = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(nomad_secrets.__file__))))
        return protocol.encode_error(
            f"nomad-secrets cannot run: its unpacked files in {unpacked} are damaged ({type(exc).__name__});"
            " the operator removes that directory, and the next fetch unpacks it again"
        )
    import traceback

    for frame in traceback.extract_tb(exc.__traceback__):
        debuglog.log("  at", file=frame.filename, line=frame.lineno, function=frame.name)
    return protocol.encode_error(
        f"internal error in nomad-secrets ({type(exc).__name__}); please report it."
        " The operator's debug log (plugin.debug_log) has the trace"
    )


def _ms(start: float) -> int:
    return round((time.monotonic() - start) * 1000)
