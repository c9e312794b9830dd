"""Nomad's decoding of a plugin's stdout, by Go itself.

``build`` compiles tests/support/gocheck/main.go (the real ``encoding/json`` and
``hashicorp/go-version``, with Nomad's struct types) with the local Go in
GOPATH mode: no module download, no network. ``GoDecoder`` runs it.

Where Go or go-version is missing, ``GoMissing`` says what to install; the
test fixture turns it into a skip with that reason. ``GOCHECK_GO`` names the
``go`` binary to use instead of PATH's (a path that does not exist hides Go,
to see the suite without it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAIN_GO = Path(__file__).resolve().parent / "gocheck" / "main.go"
GO_VERSION_SRC = Path("src/github.com/hashicorp/go-version/version.go")
NEEDS_GO = (
    "needs Go and hashicorp/go-version: run scripts/setup as root, or"
    " apt-get install golang-go golang-github-hashicorp-go-version-dev"
)


class GoMissing(RuntimeError):
    """No Go toolchain or no go-version source here."""


@dataclass(frozen=True)
class FetchDecode:
    """What Nomad makes of a fetch's stdout (the process exited 0).

    ``decoded``: json.Unmarshal returned no error; ``result`` and
    ``plugin_error`` are then the decoded fields (None = nil). ``error``:
    what Nomad reports, "" when ``ok``.
    """

    ok: bool
    decoded: bool
    result: dict[str, str] | None
    error: str
    plugin_error: str | None


@dataclass(frozen=True)
class FingerprintDecode:
    """What Nomad makes of a fingerprint's stdout: ``ok`` means registered,
    with node attribute ``plugins.secrets.<name>.version = version``."""

    ok: bool
    decoded: bool
    version: str | None
    plugin_type: str | None
    error: str


class GoDecoder:
    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def _run(self, args: list[str], stdin: bytes = b"") -> Any:
        proc = subprocess.run(
            [str(self.binary), *args], input=stdin, capture_output=True, timeout=60, check=True
        )
        return json.loads(proc.stdout)

    def decode_fetch(self, stdout: bytes, provider: str = "provider", secret: str = "secret") -> FetchDecode:
        out = self._run(["fetch", provider, secret], stdout)
        return FetchDecode(
            out["ok"], out["decoded"], out.get("result"), out.get("error", ""), out.get("plugin_error")
        )

    def decode_fingerprint(self, stdout: bytes) -> FingerprintDecode:
        out = self._run(["fingerprint"], stdout)
        return FingerprintDecode(
            out["ok"], out["decoded"], out.get("version"), out.get("type"), out.get("error", "")
        )

    def parses(self, v: str) -> bool:
        """go-version's NewVersion accepts ``v``."""
        return not self._run(["versions", v])["errors"]

    def sort_versions(self, vs: list[str]) -> list[str]:
        """The parsable ``vs`` as sort.SliceStable with LessThan leaves them."""
        return list(self._run(["versions", *vs])["sorted"])

    def compare(self, a: str, b: str) -> int:
        out = self._run(["compare", a, b])
        if "cmp" not in out:
            raise ValueError(out["error"])
        return int(out["cmp"])


def find_go_binary(missing: str = NEEDS_GO) -> Path:
    """The ``go`` binary (``GOCHECK_GO``, or PATH's), or GoMissing(missing)."""
    go = os.environ.get("GOCHECK_GO") or shutil.which("go")
    if not go or not os.access(go, os.X_OK):
        raise GoMissing(missing)
    return Path(go)


def find_go() -> tuple[Path, Path]:
    """The ``go`` binary and a GOPATH holding go-version (Debian's is
    /usr/share/gocode), or GoMissing."""
    go = find_go_binary()
    gopaths = [p for p in os.environ.get("GOPATH", "").split(os.pathsep) if p]
    for gopath in [*map(Path, gopaths), Path.home() / "go", Path("/usr/share/gocode")]:
        if (gopath / GO_VERSION_SRC).is_file():
            return go, gopath
    raise GoMissing(NEEDS_GO)


def build(cache_dir: Path, main_go: Path = MAIN_GO, go: Path | None = None) -> Path:
    """Compile ``main_go`` into ``cache_dir``, once per source and toolchain:
    gocheck's own with go-version, or (with ``go`` given) a program of the
    standard library alone."""
    if go is None:
        go, gopath = find_go()
        extra = (gopath / GO_VERSION_SRC).read_bytes()
    else:
        gopath, extra = cache_dir / "gopath", b""
        gopath.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(main_go.read_bytes() + str(go.resolve()).encode() + extra)
    binary = cache_dir / f"{main_go.parent.name}-{digest.hexdigest()[:16]}"
    if binary.is_file():
        return binary
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GO111MODULE="off",
        GOPATH=str(gopath),
        GOCACHE=str(cache_dir / "gocache"),
        GOFLAGS="",
        GOENV="off",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        CGO_ENABLED="0",
    )
    partial = cache_dir / f"{binary.name}.{os.getpid()}"
    proc = subprocess.run(
        [str(go), "build", "-o", str(partial), main_go.name],
        cwd=main_go.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{main_go}: go build failed (exit {proc.returncode}):\n{proc.stderr}")
    partial.replace(binary)  # atomic: a concurrent build is harmless
    return binary


def decoder(cache_dir: Path) -> GoDecoder:
    """A decoder backed by Go, built into ``cache_dir``; GoMissing without Go."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    return GoDecoder(build(cache_dir))
