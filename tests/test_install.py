"""`nomad-secrets install` into a temporary plugin directory; the installed
names then fingerprint and fetch as Nomad runs them."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, aws_config, write_config
from support.attacker import ATTACKER, as_attacker, public_dir
from support.nomad import ContractViolation, NomadClient

from nomad_secrets.core import config


def install(
    exe: Path, plugin_dir: Path, *args: str, option: str = "--common-plugin-dir"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), "install", option, str(plugin_dir), *args],
        capture_output=True,
        text=True,
        env={},
        timeout=60,
    )


def test_install_then_fingerprint_and_fetch(
    artifact: Path, tmp_path: Path, decoder: Any, moto_endpoint: str, secretsmanager: Any, ssm: Any
) -> None:
    plugins = tmp_path / "common_plugins"
    proc = install(artifact, plugins, "--as", "aws", "--as", "aws-ssm")
    assert proc.returncode == 0, proc.stdout
    assert f'client {{ common_plugin_dir = "{plugins}" }}' in proc.stdout and "kill -HUP" in proc.stdout
    exe = plugins / "nomad-secrets"
    assert exe.read_bytes() == artifact.read_bytes() and stat.S_IMODE(exe.stat().st_mode) == 0o755
    for name in ("aws", "aws-ssm"):
        assert os.readlink(plugins / "secrets" / name) == "../nomad-secrets"
    example = plugins / "secrets" / "nomad-secrets.toml"
    assert stat.S_IMODE(example.stat().st_mode) == 0o600
    config.parse(example.read_bytes(), str(example))  # the example config is valid

    nomad = NomadClient(plugins, decoder)
    assert nomad.fingerprint("aws").ok and nomad.fingerprint("aws-ssm").ok
    write_config(plugins, aws_config(moto_endpoint))
    secretsmanager.create_secret(Name="installed-secret", SecretString='{"k": "v"}')
    ssm.put_parameter(Name="/installed/param", Value="p", Type="String")
    assert nomad.fetch("aws", "installed-secret", {"AWS_REGION": "us-east-2"}).result == {"k": "v"}
    assert nomad.fetch("aws-ssm", "/installed/param", {"AWS_REGION": "us-east-2"}).result == {"value": "p"}

    again = install(exe, plugins, "--as", "aws")  # idempotent, even run from the installed copy
    assert (
        again.returncode == 0 and "(already)" in again.stdout and "kept the existing config" in again.stdout
    )
    assert "[aws]" in example.read_text() and "127.0.0.1" in example.read_text()


def test_reserved_names_are_refused(artifact: Path, tmp_path: Path) -> None:
    for name in ("nomad", "vault"):
        proc = install(artifact, tmp_path, "--as", name)
        assert proc.returncode == 1 and "built-in providers" in proc.stdout
    assert not (tmp_path / "secrets" / "vault").exists()


def test_a_different_executable_needs_force(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "nomad-secrets").write_text("#!/bin/sh\necho other\n")
    proc = install(artifact, tmp_path)
    assert proc.returncode == 1 and "different file; add --force" in proc.stdout
    assert install(artifact, tmp_path, "--force").returncode == 0
    assert (tmp_path / "nomad-secrets").read_bytes() == artifact.read_bytes()


def test_a_foreign_file_under_a_name_needs_force(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "aws").write_text("someone else's plugin")
    proc = install(artifact, tmp_path)
    assert proc.returncode == 1 and "is not this plugin's symlink" in proc.stdout


@pytest.mark.process
def test_install_needs_the_built_executable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nomad_secrets", "install", "--plugin-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and "is not the built executable" in proc.stdout


def test_the_plugin_directory_is_refused_where_the_common_plugin_dir_is_due(
    artifact: Path, tmp_path: Path
) -> None:
    """The docs call <common_plugin_dir>/secrets/ the plugin directory: given
    as the common plugin dir, it would make secrets/secrets/."""
    common = tmp_path / "common_plugins"
    (common / "secrets").mkdir(parents=True)
    for option in ("--common-plugin-dir", "--plugin-dir"):
        proc = install(artifact, common / "secrets", "--as", "aws", option=option)
        assert proc.returncode == 1, proc.stdout
        assert f"{common / 'secrets'} is a plugin directory (<common_plugin_dir>/secrets/)" in proc.stdout
        assert f"run install --common-plugin-dir {common}" in proc.stdout
    assert os.listdir(common / "secrets") == [] and os.listdir(common) == ["secrets"]


def test_the_old_option_name_still_installs(artifact: Path, tmp_path: Path) -> None:
    proc = install(artifact, tmp_path / "common_plugins", "--as", "aws", option="--plugin-dir")
    assert proc.returncode == 0, proc.stdout
    assert os.readlink(tmp_path / "common_plugins" / "secrets" / "aws") == "../nomad-secrets"


def test_a_common_plugin_dir_named_secrets_that_holds_secrets_is_accepted(
    artifact: Path, tmp_path: Path
) -> None:
    common = tmp_path / "secrets"
    (common / "secrets").mkdir(parents=True)
    assert install(artifact, common, "--as", "aws").returncode == 0
    assert (common / "secrets" / "aws").is_symlink()


def test_the_docs_and_the_option_use_the_same_words(artifact: Path, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    line = re.search(
        r"^\./nomad-secrets (install --common-plugin-dir /opt/nomad/data/common_plugins .*)$", readme, re.M
    )
    assert line, "README.md lost its install line"
    args = line.group(1).replace("/opt/nomad/data/common_plugins", str(tmp_path / "common_plugins")).split()
    run = subprocess.run([str(artifact), *args], capture_output=True, text=True, env={}, timeout=60)
    assert run.returncode == 0, run.stdout
    assert (tmp_path / "common_plugins" / "secrets" / "aws").is_symlink()
    assert "--plugin-dir" not in readme.replace("--common-plugin-dir", "")
    assert "`<common_plugin_dir>/secrets/` (the plugin directory)" in " ".join(readme.split())
    help_text = subprocess.run(
        [str(artifact), "install", "--help"], capture_output=True, text=True, env={}
    ).stdout
    words = " ".join(help_text.split())
    assert "the common plugin dir: the Nomad client's common_plugin_dir" in words
    assert "which holds the plugin directory secrets/" in words


@pytest.mark.serial
def test_each_build_is_its_own_file_and_the_name_a_symlink_swapped_at_install(
    tmp_path: Path, decoder: Any, moto_endpoint: str, secretsmanager: Any
) -> None:
    """A fetch reads its executable again by path after it starts (zipimport
    reopens the archive): a file replaced under it mixed two builds' bytes
    ("bad local file header", exit 1 with a traceback). Each build is now a
    file of its own, never written again; the name is a symlink swapped
    atomically, and the bootstrap reads through the real path from its
    start. Installs alternate while fetches run: every fetch answers. Each
    install also prunes the other build's unpack directory unless a fetch
    holds it (the race of tests/test_cache.py's lock: fetches look up their
    directory and import from it while an install removes it), so the
    installs go on until one did."""
    import threading

    from conftest import build_artifact

    builds = [
        build_artifact(tmp_path / v / "nomad-secrets", tmp_path / "cache", "--version", v)
        for v in ("0.2.0", "0.3.0")
    ]
    plugins = tmp_path / "common_plugins"
    assert install(builds[0], plugins, "--as", "aws").returncode == 0
    write_config(plugins, aws_config(moto_endpoint))
    link = plugins / "nomad-secrets"
    first = os.readlink(link)
    assert re.fullmatch(r"nomad-secrets\.[0-9a-f]{24}", first) and (plugins / first).is_file()
    assert install(builds[1], plugins, "--as", "aws", "--force").returncode == 0
    second = os.readlink(link)
    assert second != first and (plugins / first).exists()  # kept for the fetches still running it
    assert install(builds[0], plugins, "--as", "aws", "--force").returncode == 0
    assert sorted(p.name for p in plugins.glob("nomad-secrets.*")) == sorted([first, second])

    secretsmanager.create_secret(Name="upgrade-race", SecretString="v")
    nomad = NomadClient(plugins, decoder)
    stop = threading.Event()
    fetched: list[Any] = []

    broke: list[str] = []

    def fetch_on() -> None:
        while not stop.is_set():
            try:
                fetched.append(nomad.fetch("aws", "upgrade-race", {"AWS_REGION": "us-east-2"}))
            except ContractViolation as exc:  # a traceback, stderr on exit 0: the test's failure too
                broke.append(str(exc)[-1500:])

    installs: list[subprocess.CompletedProcess[str]] = []

    def pruned() -> bool:
        return any("removed 1 unpack directories of other builds" in i.stdout for i in installs)

    threads = [threading.Thread(target=fetch_on) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        while len(installs) < 10 or (not pruned() and len(installs) < 40):
            installs.append(install(builds[len(installs) % 2], plugins, "--as", "aws", "--force"))
            assert installs[-1].returncode == 0, installs[-1].stdout
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    failed = [
        (f.error, f.run.stdout[:200], f.run.stderr[:200]) for f in fetched if f.result != {"value": "v"}
    ]
    assert fetched and not failed and not broke, (failed, broke)
    assert pruned(), [i.stdout for i in installs]


# -- issue 23, items 4 and 5: an install that trusts nothing it is given -------------


def test_an_untrusted_common_plugin_dir_is_refused(artifact: Path, tmp_path: Path) -> None:
    """A directory the attacker made (in a sticky /tmp-like directory) with
    a planted `nomad-secrets.<id>.tmp` symlink to a root-only file: install
    refuses it, and writes nothing there or through the link. So do a
    directory others may write, and one whose parent they may."""
    secret = tmp_path / "root-only"
    secret.write_bytes(b"root's own\n")
    secret.chmod(0o600)
    with public_dir() as public:
        theirs = public / "common_plugins"
        planted = theirs / "nomad-secrets.0123456789abcdef01234567.tmp"
        as_attacker(f"mkdir {theirs} && ln -s {secret} {planted}")
        proc = install(artifact, theirs, "--as", "aws")
        listed = sorted(os.listdir(theirs))
        fresh = public / "fresh" / "common_plugins"  # missing: made only below a trusted directory
        made = install(artifact, fresh, "--as", "aws")
        assert (
            made.returncode == 1 and f"the directory {public} is writable by group or others" in made.stdout
        )
        assert not (public / "fresh").exists()
    assert proc.returncode == 1, proc.stdout
    assert (
        f"refusing the common plugin dir {theirs}: the common plugin dir {theirs} is owned by uid {ATTACKER}"
        in (proc.stdout)
    )
    assert listed == [planted.name]
    assert secret.read_bytes() == b"root's own\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600

    for mode, where in ((0o777, "common"), (0o1777, "common"), (0o777, "parent")):
        parent = tmp_path / f"p{mode:o}{where}"
        common = parent / "common_plugins"
        common.mkdir(parents=True)
        (common if where == "common" else parent).chmod(mode)
        proc = install(artifact, common, "--as", "aws")
        assert proc.returncode == 1 and "is writable by group or others" in proc.stdout, proc.stdout
        assert os.listdir(common) == []


def test_a_symlink_along_the_common_plugin_dir_is_refused(artifact: Path, tmp_path: Path) -> None:
    real = tmp_path / "real" / "common_plugins"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    proc = install(artifact, tmp_path / "link" / "common_plugins", "--as", "aws")
    assert proc.returncode == 1
    assert (
        f"goes through a symlink (to {real}); give its real path, --common-plugin-dir {real}" in proc.stdout
    )
    assert os.listdir(real) == []


def test_a_missing_common_plugin_dir_is_made_0755(artifact: Path, tmp_path: Path) -> None:
    common = tmp_path / "a" / "b" / "common_plugins"
    old = os.umask(0o000)  # made 0755 whatever the umask
    try:
        assert install(artifact, common, "--as", "aws").returncode == 0
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", common, common / "secrets"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory


def test_the_new_build_is_unpacked_before_the_link_is_swapped(artifact: Path, tmp_path: Path) -> None:
    """A new build whose unpack fails (its shebang names an interpreter the
    node lacks; install itself runs under another) leaves the installed
    build in service: the link still points at the old file. The unpack
    comes before the swap, so the first fetches of a new build never wait
    for it."""
    from conftest import build_artifact, interpreter, reshebang

    plugins = tmp_path / "common_plugins"
    assert install(artifact, plugins, "--as", "aws").returncode == 0
    before = os.readlink(plugins / "nomad-secrets")
    other = build_artifact(tmp_path / "b" / "nomad-secrets", tmp_path / "cache", "--version", "0.9.0")
    broken = reshebang(other, tmp_path / "b" / "broken", "/nonexistent/python3")
    proc = subprocess.run(
        [interpreter(), "-IS", str(broken), "install", "--common-plugin-dir", str(plugins), "--force"],
        capture_output=True,
        text=True,
        env={},
        timeout=60,
    )
    assert proc.returncode == 1 and "did not run" in proc.stdout, proc.stdout + proc.stderr
    assert os.readlink(plugins / "nomad-secrets") == before
    assert (plugins / before).read_bytes() == artifact.read_bytes()


@pytest.mark.process
def test_a_relative_common_plugin_dir_keeps_the_previous_build(tmp_path: Path) -> None:
    """The keep-list compared a real path with a joined one: given as a
    relative path, the previous build's file went at once, under the
    fetches still running it."""
    from conftest import build_artifact

    builds = [
        build_artifact(tmp_path / v / "nomad-secrets", tmp_path / "cache", "--version", v)
        for v in ("0.2.0", "0.3.0")
    ]
    for build in builds:
        proc = subprocess.run(
            [str(build), "install", "--common-plugin-dir", "common_plugins", "--as", "aws", "--force"],
            capture_output=True,
            text=True,
            env={},
            cwd=tmp_path,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout
    files = sorted(p.name for p in (tmp_path / "common_plugins").glob("nomad-secrets.*"))
    assert len(files) == 2 and os.readlink(tmp_path / "common_plugins" / "nomad-secrets") in files
    assert not list((tmp_path / "common_plugins").glob(".*"))  # no temporary file or link left
