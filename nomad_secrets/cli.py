"""Entry point of every way to run the plugin: the executable, ``python -m
nomad_secrets`` and the ``nomad-secrets`` console script.

The operation is ``argv[1]``; ``CPI_OPERATION`` only when there is no
``argv[1]`` (a job can set ``CPI_OPERATION`` in its env block; Go keeps the
last duplicate, so it may even win there). Module level imports are stdlib
and cheap: fingerprint must not pay for anything else.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from nomad_secrets.nomad import protocol
from nomad_secrets.process import endings

TYPE_CHECKING = False  # not typing's: importing typing costs ms, and a forwarded fetch needs none
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

USAGE = """\
usage: {name} <command> [options]

Nomad runs it as:
  {name} fingerprint          answer Nomad's fingerprint (JSON on stdout)
  {name} fetch <path>         read the secret(s) in <path> (JSON on stdout)

For operators:
  {name} check [--format json]
                              check the config, files, store credentials and policy
  {name} install --common-plugin-dir DIR [--as NAME ...] [--force]
                              install this executable for a Nomad client: itself in
                              DIR, a provider NAME in the plugin directory DIR/secrets/
  {name} agent [--config FILE]
                              serve fetches with warm clients (docs/agent.md)
  {name} version              print the version ({name} --version too)
  {name} <command> --help     a command's options
  nomad-secrets serve [--config PATH]
                              serve Drone and Bitbucket Pipelines (the installed
                              package with the server extra; docs/ci.md)

Docs: README.md and docs/ in the source of nomad-secrets.
"""
# Nomad's two commands, asked for help by a person: at a terminal only. Nomad
# reads stdout from a pipe and passes the job's path verbatim, so there
# `fetch --help` is a fetch of the secret named "--help", answered in JSON.
NOMAD_COMMAND_HELP = {
    "fetch": """\
usage: {name} fetch <path>

Read the secret(s) in <path> as Nomad does for a task's secret block, and
print one JSON object: {{"result": {{...}}}}, or {{"result": {{}}, "error": "..."}};
exit status 0 either way. The environment is the job's: its env {{}} block,
NOMAD_NAMESPACE and NOMAD_JOB_ID. By hand, give it that and nothing else:

  env -i AWS_REGION=us-east-2 NOMAD_NAMESPACE=default NOMAD_JOB_ID=web \\
      {name} fetch 'prod/db#password'

<path> is one reference, [aws-sm: | aws-ssm: | vault:] name [?options] [#field],
or NAME = reference lines (docs/references.md). It is a path whatever it
starts with: --help and -h are help only at a terminal; piped, as Nomad runs
it, `fetch --help` reads the secret named "--help" (write aws-sm:--help to
read it at a terminal).
""",
    "fingerprint": """\
usage: {name} fingerprint

Print the plugin's fingerprint, as Nomad reads it at agent start and on
SIGHUP: one JSON line, {{"type": "secrets", "version": "<go-version>"}}.
""",
}
OPERATOR_COMMANDS = ("check", "install", "agent", "serve", "version", "help")
COMMANDS = ("fingerprint", "fetch", *OPERATOR_COMMANDS)
HELP_FLAGS = ("--help", "-h", "--version", "-V")


def run(agent_note: str = "") -> NoReturn:
    """``agent_note``: why the bootstrap's try of the node agent gave no
    answer (the executable's fetch), for the debug log."""
    argv = list(sys.argv)
    operation = argv[1] if len(argv) > 1 else os.environ.get("CPI_OPERATION", "")
    person_asks_help = operation in NOMAD_COMMAND_HELP and argv[2:] in (["--help"], ["-h"]) and os.isatty(1)
    if operation == "fingerprint" and not person_asks_help:
        from nomad_secrets._version import GO_VERSION

        protocol.answer(protocol.fingerprint_line(GO_VERSION))
    from nomad_secrets.process import cache

    start = time.monotonic() - cache.process_age()  # the deadline counts from Nomad's start of us
    # The environment is the job's input, not configuration: take it out of
    # os.environ before any library can read it (proxies, CA bundles, AWS_*).
    environ = dict(os.environ)
    for key in environ:  # not clear(): unsetenv("") fails, and a job can write an empty key
        with contextlib.suppress(OSError):  # "": no library reads it; the allowlist refuses it by name
            del os.environ[key]
    # Ours, set on a run started again after a damaged cache (cache.heal).
    again = cache.started_again(environ)
    if operation in OPERATOR_COMMANDS or operation in HELP_FLAGS:
        sys.exit(operator_command(operation, argv, environ))
    if person_asks_help:
        from nomad_secrets.core.config import provider_name

        print(NOMAD_COMMAND_HELP[operation].format(name=provider_name(argv[0])), end="")
        sys.exit(0)
    if operation != "fetch" and os.isatty(1):
        # A person at a terminal, never Nomad (Nomad reads stdout from a pipe).
        sys.exit(by_hand(operation, argv[0]))
    protocol.guard_stdio()
    if operation == "fetch":
        plugin_fetch(argv, environ, start, again, agent_note)
    from nomad_secrets.core.config import provider_name

    protocol.answer_error(
        f"unknown operation {operation[:64]!r}{_did_you_mean(operation)}: Nomad runs this plugin as"
        " `fingerprint` or `fetch <path>`; check that the file in the plugin directory is"
        f" nomad-secrets (`{provider_name(argv[0])} --help` lists its commands)"
    )


def operator_command(operation: str, argv: list[str], environ: dict[str, str]) -> int:
    """Commands a person runs: plain text on stdout, an exit status that says
    whether all is well. Never run by Nomad."""
    if operation == "check":
        from nomad_secrets.ops.check import main as check

        return check(argv[2:], argv[0])
    if operation == "install":
        from nomad_secrets.ops.install import main as install

        return install(argv[2:], argv[0])
    if operation == "agent":
        from nomad_secrets.agent.server import main as agent_main

        return agent_main(argv[0], argv[2:], environ)
    if operation == "serve":
        try:
            from nomad_secrets.serve.main import main as serve
        except ModuleNotFoundError:  # the plugin's executable carries no server
            print(
                "serve is not part of this executable: it runs from the Python package with the server"
                " extra, installed from a release's wheel or a checkout (docs/ci.md, Install and run)",
                file=sys.stderr,
            )
            return 2
        return serve(argv[2:])
    if operation in ("version", "--version", "-V"):
        print(version_line())
        return 0
    print(usage(argv[0]), end="")
    return 0


def by_hand(operation: str, executable: str) -> int:
    """No command, or an unknown one, typed at a terminal: say so, and how."""
    from nomad_secrets.core.config import provider_name

    if operation:
        print(f"{provider_name(executable)}: unknown command {operation[:64]!r}{_did_you_mean(operation)}\n")
    print(usage(executable), end="")
    return 2


def usage(executable: str) -> str:
    from nomad_secrets.core.config import provider_name

    return version_line() + "\n\n" + USAGE.format(name=provider_name(executable))


def version_line() -> str:
    from nomad_secrets._version import GO_VERSION, __version__

    return (
        f"nomad-secrets {__version__} (fingerprint version {GO_VERSION}):"
        " a secret provider plugin for HashiCorp Nomad"
    )


def _did_you_mean(operation: str) -> str:
    import difflib

    close = difflib.get_close_matches(operation.lstrip("-"), COMMANDS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != operation else ""


def plugin_fetch(
    argv: list[str], environ: dict[str, str], start: float, again: bool, agent_note: str = ""
) -> NoReturn:
    protocol.on_sigterm_answer(endings.STOPPED_FETCHING)
    executable = argv[0]
    try:  # the imports too: a damaged file among them gets an answer (and a heal)
        from nomad_secrets.core import config as config_module
        from nomad_secrets.process import debuglog
        from nomad_secrets.process.deadline import DEFAULT_SECONDS, Deadline
        from nomad_secrets.process.errors import PluginError

        if len(argv) < 3:
            raise PluginError("no secret path: Nomad runs `fetch <path>`; set path in the secret block")
        if len(argv) > 3:
            raise PluginError("fetch takes one path; Nomad passes the secret block's path as one argument")
        config = config_module.load(executable)
        if config.plugin.debug_log:
            debuglog.enable(config.plugin.debug_log)  # a log that fails the trust rules is left off
        if protocol.discard_note:
            debuglog.log("no-dev-null", reason=protocol.discard_note)
        deadline = Deadline(config.plugin.deadline_seconds or DEFAULT_SECONDS, start=start)
        if agent_note:
            debuglog.log("agent-not-used", reason=agent_note)
        from nomad_secrets.core.config import provider_name
        from nomad_secrets.nomad.answer import fetch_answer, observer_for
    except BaseException as exc:  # noqa: BLE001 - Nomad must get an answer
        protocol.answer(_error_answer(exc, start, _healer(environ, again)))

    name = provider_name(executable)
    observer = observer_for(config, name, argv[2], environ, start)
    if observer is not None:  # Nomad's SIGTERM is a fetch's end too: record it
        protocol.on_sigterm_answer(endings.STOPPED_FETCHING, before=lambda: observer.finish("terminated"))
    answer = fetch_answer(
        argv[2], environ, name, config, deadline, observer=observer, heal=_healer(environ, again)
    )
    protocol.answer(answer)


def _healer(environ: dict[str, str], again: bool) -> Callable[[str], bool]:
    """Move a damaged unpack directory aside and start this run again in
    place (cache.heal), with Nomad's environment."""

    def heal(entry: str) -> bool:
        from nomad_secrets.process import cache

        return cache.heal(entry, environ, cache.process_age(), again)

    return heal


def _error_answer(exc: BaseException, start: float, heal: Callable[[str], bool]) -> bytes:
    try:
        from nomad_secrets.nomad.answer import error_answer
    except BaseException:  # noqa: BLE001 - our own modules damaged, answer.py among them
        from nomad_secrets.process import cache

        said = cache.healed(cache.held_by(__file__), heal)
        return protocol.encode_error(said or endings.not_started(exc))
    return error_answer(exc, start, heal)
