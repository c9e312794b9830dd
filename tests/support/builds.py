"""Builds of the executable made once per test process and written again for
each cache directory (conftest.build_artifact).

scripts/build is reproducible: two builds of one source, lock and arguments
differ only in build-info, whose second line is the cache directory the
build unpacks into. A fresh node needs a build of its own cache directory,
and some 60 tests make one: each ran scripts/build again (0.4 s of CPU).
Here the first build of some arguments is scripts/build's; a later one is
that build's entries with its own cache directory in build-info, written by
scripts/build's own zip writer. tests/test_build.py checks that the two ways
give the same bytes.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent
SUFFIX = " -IS\n"  # the shebang's end (scripts/build's write_zipapp)


@functools.cache
def build_script() -> ModuleType:
    """scripts/build as a module, for its zip writer."""
    scripts = str(ROOT / "scripts")
    sys.path.insert(0, scripts)  # its goversion import, beside it
    try:
        loader = importlib.machinery.SourceFileLoader(
            "nomad_secrets_build_script", str(ROOT / "scripts" / "build")
        )
        spec = importlib.util.spec_from_loader(loader.name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    finally:
        sys.path.remove(scripts)
    return module


class Built:
    """One build's shebang interpreter and entries, as scripts/build wrote them."""

    def __init__(self, executable: Path) -> None:
        data = executable.read_bytes()
        shebang = data.split(b"\n", 1)[0].decode() + "\n"
        assert shebang.startswith("#!") and shebang.endswith(SUFFIX), shebang
        self.python = shebang[2 : -len(SUFFIX)]
        with zipfile.ZipFile(executable) as zf:
            self.entries = [(name, zf.read(name)) for name in zf.namelist()]

    def write(self, output: Path, cache_dir: Path) -> Path:
        """This build, unpacking into ``cache_dir``, at ``output``."""
        entries = []
        for name, content in self.entries:
            if name == "build-info":
                build_id, _, socket_dir, end = content.decode().split("\n")
                content = "\n".join([build_id, str(cache_dir), socket_dir, end]).encode()
            entries.append((name, content))
        build_script().write_zipapp(output, self.python, entries)
        return output
