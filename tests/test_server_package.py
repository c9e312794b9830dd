"""nomad-secrets is not on PyPI: the server installs from the release's
wheel (or sdist), or from a source checkout, with the ``server`` extra
(docs/ci.md). Here, offline, as the release workflow builds them: the sdist
from this checkout, the wheel from the sdist; then the wheel with
``[server]`` into a fresh virtualenv, whose ``nomad-secrets serve`` checks a
config and serves /healthz.

The fresh virtualenv has no index to download the extra's dependencies
from, so they are lent from this checkout's .venv: a directory of links to
exactly the distributions that ``nomad-secrets[server]`` requires (found
from the wheel's own metadata), named in a .pth file. pip sees them as
installed and installs the wheel alone; nomad-secrets itself is not lent.
"""

from __future__ import annotations

import email
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import aws_config
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support.serverutil import ROOT, Server, server_config, write_secret

SERVER_EXTRA = {"starlette", "uvicorn", "pyjwt", "cryptography"}


def checkout_copy(to: Path) -> Path:
    """The files of this checkout (tracked, and new ones not ignored), as a
    fresh clone of it would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    return to


def build(source: Path, out: Path) -> tuple[Path, Path]:
    """The sdist (setuptools' PEP 517 hook, as ``python -m build`` calls it)
    and the wheel built from that sdist, offline."""
    out.mkdir()
    hook = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    made = subprocess.run(
        [sys.executable, "-c", hook, str(out)], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    sdist = out / made.stdout.strip().splitlines()[-1]
    wheel = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"),
            *("--disable-pip-version-check", "-w", str(out), str(sdist)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wheel.returncode == 0, wheel.stderr
    (built,) = out.glob("*.whl")
    return sdist, built


def wanted(requirements: list[str], extras: set[str]) -> list[Requirement]:
    """The requirements that apply on this Python with these extras."""
    found = []
    for text in requirements:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras | {""}):
            found.append(requirement)
    return found


def lend(requirements: list[Requirement], site: Path) -> set[str]:
    """Link into ``site`` every distribution of this .venv that these
    requirements need, with their own requirements; their names."""
    lent: set[str] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in lent:
            continue
        lent.add(name)
        dist = importlib.metadata.distribution(name)
        todo += wanted(dist.requires or [], set(requirement.extras))
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            if not (site / top).exists():
                (site / top).symlink_to(Path(str(dist.locate_file(top))))
    return lent


@pytest.mark.long
def test_the_wheel_installs_with_the_server_extra_and_serves(tmp_path: Path, moto_endpoint: str) -> None:
    sdist, wheel = build(checkout_copy(tmp_path / "checkout"), tmp_path / "dist")
    version = importlib.metadata.version("nomad-secrets")
    assert sdist.name == f"nomad_secrets-{version}.tar.gz"
    assert wheel.name == f"nomad_secrets-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        metadata = email.message_from_bytes(zf.read(f"nomad_secrets-{version}.dist-info/METADATA"))
        assert "nomad_secrets/serve/main.py" in zf.namelist()
    requires = metadata.get_all("Requires-Dist") or []
    server_only = {canonicalize_name(r.name) for r in wanted(requires, {"server"})} - {
        canonicalize_name(r.name) for r in wanted(requires, set())
    }
    assert server_only == SERVER_EXTRA and "server" in (metadata.get_all("Provides-Extra") or [])

    fresh = tmp_path / "venv"
    # No pip of its own (seeding one is seconds): this venv's pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    site = tmp_path / "lent"
    site.mkdir()
    lent = lend(wanted(requires, {"server"}), site)
    assert "nomad-secrets" not in lent and lent >= SERVER_EXTRA
    purelib = sysconfig.get_path("purelib", vars={"base": str(fresh), "platbase": str(fresh)})
    (Path(purelib) / "lent-from-the-checkout.pth").write_text(f"{site}\n")

    python = fresh / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check")
    installed = subprocess.run(
        [*pip, "install", "--no-index", f"{wheel}[server]"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    found = re.findall(r"Requirement already satisfied: ([A-Za-z0-9_.-]+)", installed.stdout)
    assert {canonicalize_name(name) for name in found} >= SERVER_EXTRA  # the extra asked, pip found each
    assert f"Successfully installed nomad-secrets-{version}" in installed.stdout
    where = subprocess.run(
        [str(python), "-c", "import nomad_secrets.serve.main as m; print(m.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(fresh)), where

    secret_file = write_secret(tmp_path / "drone-secret", "f" * 40)
    policy = '[[drone.policy]]\nrepo = "octocat/*"\nallow = ["aws-sm:ci/{repo}/**"]\n'
    config, port = server_config(
        tmp_path, aws_config(moto_endpoint) + f'[drone]\nsecret_file = "{secret_file}"\n' + policy
    )
    program = str(fresh / "bin" / "nomad-secrets")
    checked = subprocess.run(
        [program, "serve", "--config", str(config), "--check"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and "would serve /drone/secret, /healthz" in checked.stdout, checked.stderr
    with Server(config, port, program=program) as running:
        with urllib.request.urlopen(f"http://127.0.0.1:{running.port}/healthz", timeout=10) as answer:
            assert answer.read() == b"ok\n"
        assert running.terminate() == 0
    assert json.loads(running.stdout[0])["path"] == "/healthz"


@pytest.mark.long
@pytest.mark.process
def test_a_checkout_installs_as_docs_ci_says_today(tmp_path: Path) -> None:
    """docs/ci.md's route while there is no release: its lines as written, in
    a copy of this checkout, the venv's path aside. Offline here, so the
    extra's dependencies and setuptools are lent, and pip is told
    --no-index --no-build-isolation (the operator's index makes both needless)."""
    import shlex

    from conftest import doc_block

    block = doc_block(ROOT / "docs" / "ci.md", "pip install '.[server]'", "sh")
    venv = tmp_path / "venv"
    lines = [line.replace("/usr/local/lib/nomad-secrets", str(venv)) for line in block.splitlines()]
    assert lines == [
        f"python3 -m venv {venv}",
        f"{venv}/bin/pip install '.[server]'",
        f"{venv}/bin/nomad-secrets version",
    ]
    checkout = checkout_copy(tmp_path / "checkout")
    subprocess.run([sys.executable, *shlex.split(lines[0])[1:]], check=True, timeout=120)
    # Python < 3.12 seeds a venv with an old setuptools, which would shadow
    # the lent one; with an index, pip's build isolation gets setuptools>=77.
    pip = (str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check")
    subprocess.run([*pip, "uninstall", "--yes", "--quiet", "setuptools"], capture_output=True, timeout=120)
    site = tmp_path / "lent"
    site.mkdir()
    requires = importlib.metadata.requires("nomad-secrets") or []
    lent = lend([*wanted(requires, {"server"}), Requirement("setuptools")], site)
    assert lent >= SERVER_EXTRA | {"setuptools"} and "nomad-secrets" not in lent
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    (Path(purelib) / "lent-from-the-checkout.pth").write_text(f"{site}\n")
    installed = subprocess.run(
        [*shlex.split(lines[1]), "--no-index", "--no-build-isolation", "--disable-pip-version-check"],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    version = importlib.metadata.version("nomad-secrets")
    assert f"Successfully installed nomad-secrets-{version}" in installed.stdout
    said = subprocess.run(shlex.split(lines[2]), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert said.returncode == 0 and said.stdout.startswith(f"nomad-secrets {version} "), said
