"""First code to run inside the executable: the zip's ``__main__.py``.

``scripts/build`` copies this file to the root of the zipapp, where Python
compiles it at every start: it stays small, and imports only ``os`` and
``sys``. ``fingerprint`` is answered from a file in the zip
(``fingerprint.json``, written at build time), before anything else is
read or compiled. Everything else starts in launch.py (stored beside this
file as ``nomad_secrets_launch.py``): unpacking the plugin's code into the
cache and running it from there.
"""

from __future__ import annotations

import os
import sys

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


STOPPED_STARTING = (
    b'{"result": {}, "error": "stopped by Nomad (SIGTERM) while nomad-secrets started;'
    b" Nomad's plugin timeout passed\"}\n"
)


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
        import json

        os.write(1, json.dumps({"result": {}, "error": message}).encode() + b"\n")
        os._exit(0)
    if operation == "fingerprint":
        os.write(1, loader.get_data("fingerprint.json"))  # type: ignore[attr-defined]
        os._exit(0)
    if operation == "fetch":
        # Nomad's SIGTERM gets an answer from here on: a first fetch of a
        # new build spends its first second unpacking (cli.py answers it
        # once it runs). _signal: the signal module's import costs ~3 ms.
        import _signal  # type: ignore[import-not-found]

        _signal.signal(_signal.SIGTERM, _stop)
    try:
        archive = _versioned(loader)  # before anything else is read from the zip
        try:  # the source tree and the installed package
            from nomad_secrets import launch
        except ImportError:  # the executable: scripts/build stores it beside this file
            import nomad_secrets_launch as launch  # type: ignore[import-not-found,no-redef]
    except Stopped:
        os.write(1, STOPPED_STARTING)
        os._exit(0)
    launch.start(archive, sys.path_importer_cache.get(archive, loader), Stopped)


if __name__ == "__main__":
    main(__loader__)  # type: ignore[name-defined]  # zipimport sets it
