"""First code to run inside the executable: the zip's ``__main__.py``.

``scripts/build`` copies this file to the root of the zipapp, where Python
compiles it at every start: it stays small, and imports only ``os`` and
``sys``. ``fingerprint`` is answered from a file in the zip
(``fingerprint.json``, written at build time), before anything else is
read or compiled. A fetch goes to the node agent first
(agent/client.py, stored beside this file as
``nomad_secrets_agent_client.py``, starting the agent when none runs): its
answer is printed before anything of the plugin is unpacked or imported.
Everything else starts in launch.py (``nomad_secrets_launch.py``):
unpacking the plugin's code into the cache and running it from there, for
a fetch once it holds one of the node's slots for fetches in process
(admission.py). ``scripts/build`` stores these modules compiled for the
shebang's interpreter, so that a start compiles nothing.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: its import costs a fetch's start ms
if TYPE_CHECKING:
    from typing import Any

MIN_PYTHON = (3, 10)


class Stopped(BaseException):
    """Nomad's SIGTERM, before the plugin's own answer to it is in place:
    raised where the run is, so that an unpack on its way cleans up."""


def _stop(signum: int, frame: object) -> None:
    raise Stopped


def _versioned(loader: object) -> str:
    """The file to read from now on: the one the path Nomad ran leads to.

    zipimport opens the archive again by path for every read. ``install``
    keeps each build in its own file and swaps a symlink to it, so reading
    through the real path from here on never mixes two builds' bytes, even
    if an install swaps the link while this run starts (install.py)."""
    archive: str = loader.archive  # type: ignore[attr-defined]
    real = os.path.realpath(archive)
    if real == archive or sys.path[:1] != [archive]:
        return archive
    import zipimport

    try:
        sys.path_importer_cache[real] = zipimport.zipimporter(real)
    except zipimport.ZipImportError:
        return archive
    sys.path[0] = real  # the zip's own modules (launch, trust, cache) come from it too
    return real


def main(loader: object) -> None:
    operation = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CPI_OPERATION", "")
    if sys.version_info < MIN_PYTHON:
        found = ".".join(str(n) for n in sys.version_info[:3])
        message = (
            f"nomad-secrets needs Python 3.10 or newer, and {sys.executable} is {found}:"
            " rebuild it with scripts/build --python /path/to/python3.10+"
        )
        if operation == "fingerprint":  # not registered: Nomad logs the failed fingerprint
            os.write(2, message.encode() + b"\n")
            os._exit(1)
        _endings().answer_error(message)
    # `fetch --help` at a terminal: cli.py prints the help (never for Nomad,
    # whose stdout is a pipe and whose `--help` is a job's path).
    person = len(sys.argv) == 3 and sys.argv[2] in ("--help", "-h") and os.isatty(1)
    if operation == "fingerprint" and not person:
        os.write(1, loader.get_data("fingerprint.json"))  # type: ignore[attr-defined]
        os._exit(0)
    if operation == "fetch":
        # Nomad's SIGTERM gets an answer from here on: a first fetch of a
        # new build spends its first second unpacking (cli.py answers it
        # once it runs). _signal: the signal module's import costs ~3 ms.
        import _signal  # type: ignore[import-not-found]

        _signal.signal(_signal.SIGTERM, _stop)
    stopped = ""  # the answer to a SIGTERM now (endings' words): "" while it starts
    note = ""
    try:
        archive = _versioned(loader)  # before anything else is read from the zip
        loader = sys.path_importer_cache.get(archive, loader)
        endings = _endings()
        if operation == "fetch" and len(sys.argv) == 3 and not person:
            stopped = endings.STOPPED_AT_AGENT
            info = loader.get_data("build-info").decode().split("\n")  # type: ignore[attr-defined]
            note = _through_agent(archive, info[0], info[2] if len(info) > 3 else "")
            stopped = endings.STOPPED_WAITING
            note += _admitted(info[2] if len(info) > 3 else "")
            stopped = ""
        try:  # the source tree and the installed package
            from nomad_secrets import launch
        except ImportError:  # the executable: scripts/build stores it beside this file
            import nomad_secrets_launch as launch  # type: ignore[import-not-found,no-redef]
    except Stopped:
        endings = _endings()  # imported by now, unless the SIGTERM came first
        endings.answer_error(stopped or endings.STOPPED_STARTING)
    launch.start(archive, loader, Stopped, note)


def _endings() -> Any:
    """How a run ends (process/endings.py): the words of its answers to
    Nomad's SIGTERM, and the error object, before anything is unpacked."""
    try:  # the executable: scripts/build stores it beside this file (looked for first)
        import nomad_secrets_endings as endings  # type: ignore[import-not-found]
    except ImportError:  # the source tree and the installed package
        from nomad_secrets.process import endings
    return endings


def _through_agent(archive: str, build: str, socket_dir: str) -> str:
    """Print the node agent's answer and exit; or say why there is none,
    for the plugin's debug log, and go on to fetch in process."""
    try:  # the executable: scripts/build stores it beside this file (looked for first: ~0.3 ms)
        import nomad_secrets_agent_client as client  # type: ignore[import-not-found]
    except ImportError:  # the source tree and the installed package
        from nomad_secrets.agent import client
    executable = os.path.abspath(sys.argv[0])
    try:
        agent = client.Agent(
            executable,
            build,
            socket_dir or client.SOCKET_DIR,
            client.spawner(sys.executable, archive, executable),
        )
        message = client.request(client.KIND_FETCH, executable, sys.argv[2], build, dict(os.environb))
        answer = agent.ask(message)
    except client.NoAgent as exc:
        return f"agent not used: {exc}"
    except OSError as exc:  # out of descriptors, a socket directory gone meanwhile: in process
        where = f" ({exc.filename})" if exc.filename else ""
        return f"agent not used: {type(exc).__name__}: {exc.strerror or exc}{where}"
    os.write(1, answer)
    os._exit(0)


def _admitted(socket_dir: str) -> str:
    """One of the node's slots for fetches in process (admission.py), beside
    the agents' sockets: a burst that the agent does not take is a slope,
    not a cliff. A socket directory no fetch may use is one `check` names."""
    try:  # the executable: scripts/build stores them beside this file
        import nomad_secrets_admission as admission  # type: ignore[import-not-found]
        import nomad_secrets_agent_client as client  # type: ignore[import-not-found,unused-ignore]
        import nomad_secrets_cache as cache  # type: ignore[import-not-found]
    except ImportError:  # the source tree and the installed package
        from nomad_secrets.agent import client
        from nomad_secrets.process import admission, cache
    directory = socket_dir or client.SOCKET_DIR
    problem = client.untrusted_directory(directory)
    if problem:
        return f"; no slot: {problem}"
    waited = admission.admit(directory, cache.process_age())
    return f"; {waited}" if waited else ""


if __name__ == "__main__":
    main(__loader__)  # type: ignore[name-defined]  # zipimport sets it
