"""Entry point of every way to run the plugin: the executable, ``python -m
nomad_secrets`` and the ``nomad-secrets`` console script.

The operation is ``argv[1]``; ``CPI_OPERATION`` only when there is no
``argv[1]`` (a job can set ``CPI_OPERATION`` in its env block; Go keeps the
last duplicate, so it may even win there). Module level imports are stdlib
and cheap: fingerprint must not pay for anything else.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NoReturn

from nomad_secrets import protocol

USAGE = """\
nomad-secrets: a secret provider plugin for HashiCorp Nomad.

Nomad runs it as:
  <name> fingerprint          answer Nomad's fingerprint (JSON on stdout)
  <name> fetch <path>         read the secret(s) in <path> (JSON on stdout)

For operators:
  <name> check                check the config, files, store credentials and policy
  <name> install --plugin-dir DIR [--as NAME ...] [--force]
                              install this executable for a Nomad client
  <name> version              print the version
  nomad-secrets serve [--config PATH]
                              serve Drone and Bitbucket Pipelines (the installed
                              package with the server extra; docs/ci.md)
"""


def run() -> NoReturn:
    start = time.monotonic()
    argv = list(sys.argv)
    operation = argv[1] if len(argv) > 1 else os.environ.get("CPI_OPERATION", "")
    if operation == "fingerprint":
        from nomad_secrets._version import GO_VERSION

        protocol.answer(protocol.fingerprint_line(GO_VERSION))
    # The environment is the job's input, not configuration: take it out of
    # os.environ before any library can read it (proxies, CA bundles, AWS_*).
    environ = dict(os.environ)
    os.environ.clear()
    if operation in ("check", "install", "serve", "version", "help", "--help", "-h"):
        sys.exit(operator_command(operation, argv))
    protocol.guard_stdio()
    if operation == "fetch":
        plugin_fetch(argv, environ, start)
    protocol.answer_error(
        f"unknown operation {operation[:64]!r}: Nomad runs this plugin as `fingerprint`"
        " or `fetch <path>`; check that the file in the plugin directory is nomad-secrets"
    )


def operator_command(operation: str, argv: list[str]) -> int:
    """Commands a person runs: plain text on stdout, an exit status that says
    whether all is well. Never run by Nomad."""
    if operation == "check":
        from nomad_secrets.check import run_check

        return run_check(argv[0])
    if operation == "install":
        from nomad_secrets.install import main

        return main(argv[2:], argv[0])
    if operation == "serve":
        try:
            from nomad_secrets.server.main import main as serve
        except ModuleNotFoundError:  # the plugin's executable carries no server
            print(
                "serve runs from the installed package: pip install 'nomad-secrets[server]' (docs/ci.md)",
                file=sys.stderr,
            )
            return 2
        return serve(argv[2:])
    if operation == "version":
        from nomad_secrets._version import GO_VERSION, __version__

        print(f"nomad-secrets {__version__} (fingerprint version {GO_VERSION})")
        return 0
    print(USAGE, end="")
    return 0


def provider_name(executable: str) -> str:
    """The provider name is the file name Nomad ran (a symlink counts)."""
    name = os.path.basename(executable)
    return "nomad-secrets" if name == "__main__.py" else name


def plugin_fetch(argv: list[str], environ: dict[str, str], start: float) -> NoReturn:
    from nomad_secrets.deadline import DEFAULT_SECONDS, Deadline
    from nomad_secrets.errors import PluginError

    protocol.on_sigterm_answer(
        "stopped by Nomad (SIGTERM) before the fetch finished: Nomad's plugin timeout"
        " passed; check that the store answers quickly from this node"
    )
    executable = argv[0]
    try:
        if len(argv) < 3:
            raise PluginError("no secret path: Nomad runs `fetch <path>`; set path in the secret block")
        if len(argv) > 3:
            raise PluginError("fetch takes one path; Nomad passes the secret block's path as one argument")
        from nomad_secrets import config as config_module
        from nomad_secrets import debuglog
        from nomad_secrets.fetch import fetch

        config = config_module.load(executable)
        if config.plugin.debug_log:
            debuglog.enable(config.plugin.debug_log)
        deadline = Deadline(config.plugin.deadline_seconds or DEFAULT_SECONDS, start=start)
        name = provider_name(executable)
        debuglog.log(
            "fetch",
            provider=name,
            path=argv[2],
            job=environ.get("NOMAD_JOB_ID"),
            namespace=environ.get("NOMAD_NAMESPACE"),
        )
        result = fetch(argv[2], environ, name, config, deadline)
        debuglog.log("fetched", provider=name, keys=len(result), ms=round((time.monotonic() - start) * 1000))
    except PluginError as exc:
        _log_failure(exc, start)
        protocol.answer_error(exc)
    except BaseException as exc:  # noqa: BLE001 - Nomad must get an answer
        _log_failure(exc, start, traceback=True)
        protocol.answer_error(
            f"internal error in nomad-secrets ({type(exc).__name__}); please report it."
            " The operator's debug log (plugin.debug_log) has the trace"
        )
    protocol.answer(protocol.encode_result(result))


def _log_failure(exc: BaseException, start: float, *, traceback: bool = False) -> None:
    """Log where it failed: our own message, or for an unexpected exception
    its type and frames, never its text (that could quote a secret)."""
    from nomad_secrets import debuglog
    from nomad_secrets.errors import PluginError

    # Our own messages (the job author sees them too) are safe to keep.
    message = exc.message if isinstance(exc, PluginError) else None
    debuglog.log(
        "failed", error=type(exc).__name__, message=message, ms=round((time.monotonic() - start) * 1000)
    )
    if traceback:
        import traceback as tb

        for frame in tb.extract_tb(exc.__traceback__):
            debuglog.log("  at", file=frame.filename, line=frame.lineno, function=frame.name)
