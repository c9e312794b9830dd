"""A Nomad client stand-in: runs a plugin exactly as Nomad's client does.

Read from hashicorp/nomad client/commonplugins/{secrets_plugin,commonplugins}.go:

- the executable ``<common_plugin_dir>/secrets/<name>`` is run directly, no
  shell, as ``<name> fingerprint`` or ``<name> fetch <path>``;
- the environment is built from scratch: ``CPI_OPERATION``, then the job's
  env block, then ``NOMAD_JOB_ID`` and ``NOMAD_NAMESPACE`` (Go keeps the last
  duplicate, so the job can override CPI_OPERATION but not the identity);
- at the timeout the process gets SIGTERM, and SIGKILL 2 s later;
- a non-zero exit throws stdout and stderr away; on exit 0, stdout is decoded
  by Go's encoding/json and go-version (tests/support/gocheck) and any stderr byte
  goes to a nil logger in the client: this harness counts it as a contract
  failure.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nomad_secrets.core.config import OPEN_POLICY

DEFAULT_TIMEOUT = 10.0  # Nomad 1.11.0 to 1.11.3
KILL_AFTER = 2.0


class ContractViolation(AssertionError):
    """The plugin broke a rule that would hurt a real Nomad client."""


@dataclass
class PluginRun:
    argv: list[str]
    env: dict[str, str]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float
    terminated: bool = False  # SIGTERM was sent at the timeout
    seconds_after_term: float | None = None


@dataclass
class Fetched:
    """What Nomad makes of a fetch: a result, or the message the user sees."""

    run: PluginRun
    ok: bool
    result: dict[str, str] = field(default_factory=dict)
    error: str = ""  # as Nomad would report it
    plugin_error: str | None = None  # the plugin's own "error" string


@dataclass
class Fingerprinted:
    run: PluginRun
    ok: bool
    version: str = ""
    error: str = ""


def nomad_env(
    operation: str, env_block: dict[str, str] | None, job_id: str | None, namespace: str | None
) -> dict[str, str]:
    env = {"CPI_OPERATION": operation}
    env.update(env_block or {})
    if operation == "fetch":
        if job_id is not None:
            env["NOMAD_JOB_ID"] = job_id
        if namespace is not None:
            env["NOMAD_NAMESPACE"] = namespace
    return env


def limited(**limits: int) -> Callable[[], None]:
    """A ``node`` for run_plugin: the child runs under these soft and hard
    limits (resource.RLIMIT_<NAME>), as under a Nomad client's."""
    pairs = [(getattr(resource, f"RLIMIT_{name.upper()}"), value) for name, value in limits.items()]

    def node() -> None:
        for which, value in pairs:
            resource.setrlimit(which, (value, value))

    return node


def run_plugin(
    executable: Path,
    argv: list[str],
    env: dict[str, str],
    timeout: float = DEFAULT_TIMEOUT,
    kill_after: float = KILL_AFTER,
    node: Callable[[], None] | None = None,
) -> PluginRun:
    """``node``: runs in the child before the exec, to give the plugin the
    node it is tested on (resource limits, a mount namespace)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(executable), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        preexec_fn=node,
    )
    terminated = False
    term_at: float | None = None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminated = True
        term_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the process, not its group, as Nomad does
        try:
            stdout, stderr = proc.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    end = time.monotonic()
    return PluginRun(
        argv=argv,
        env=env,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=end - start,
        terminated=terminated,
        seconds_after_term=None if term_at is None else end - term_at,
    )


class NomadClient:
    def __init__(self, plugin_dir: Path, decoder: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.plugin_dir = plugin_dir  # the common_plugin_dir
        self.decoder = decoder  # a gocheck.GoDecoder
        self.timeout = timeout

    def executable(self, name: str) -> Path:
        return self.plugin_dir / "secrets" / name

    def fingerprint(self, name: str, env_block: dict[str, str] | None = None) -> Fingerprinted:
        run = run_plugin(
            self.executable(name),
            ["fingerprint"],
            nomad_env("fingerprint", env_block, None, None),
            self.timeout,
        )
        self._check(run)
        if run.returncode != 0 or run.terminated:
            return Fingerprinted(run, ok=False, error=_exit_message(run))
        decoded = self.decoder.decode_fingerprint(run.stdout)
        return Fingerprinted(run, ok=decoded.ok, version=decoded.version, error=decoded.error)

    def fetch(
        self,
        name: str,
        path: str,
        env_block: dict[str, str] | None = None,
        *,
        job_id: str | None = "example",
        namespace: str | None = "default",
        timeout: float | None = None,
        node: Callable[[], None] | None = None,
    ) -> Fetched:
        run = run_plugin(
            self.executable(name),
            ["fetch", path],
            nomad_env("fetch", env_block, job_id, namespace),
            timeout or self.timeout,
            node=node,
        )
        self._check(run)
        if run.returncode != 0 or run.terminated:
            return Fetched(run, ok=False, error=_exit_message(run))
        decoded = self.decoder.decode_fetch(run.stdout, name)
        return Fetched(
            run,
            ok=decoded.ok,
            result=dict(decoded.result or {}),
            error=decoded.error,
            plugin_error=decoded.plugin_error,
        )

    @staticmethod
    def _check(run: PluginRun) -> None:
        if run.returncode == 0 and run.stderr:
            raise ContractViolation(f"stderr on exit 0 (panics Nomad's client): {run.stderr[:500]!r}")
        if b"Traceback (most recent call last)" in run.stdout + run.stderr:
            raise ContractViolation(f"a traceback reached Nomad: {run.stdout[:500]!r} {run.stderr[-1500:]!r}")


def _exit_message(run: PluginRun) -> str:
    if run.terminated:
        return "context deadline exceeded"
    if run.returncode < 0:
        return f"signal: {signal.Signals(-run.returncode).name}"
    return f"exit status {run.returncode}"


NO_AGENT = "[agent]\nauto = false\n"


def with_policy(config: str) -> str:
    """The config as the tests write it: one without a ``[[policy]]`` lets
    every job read everything, said as a rule (the plugin reads nothing for
    a config file without one). Tests of that write their file themselves.
    Without an ``[agent]`` section, fetches start no agent (``NO_AGENT``):
    most tests are of what a fetch does in process, where every answer is
    made; the agent's own tests (test_agent*.py) say what they want."""
    if "[agent]" not in config:  # before the rules, which come last in a config file
        head, rules, tail = config.partition("[[policy]]")
        config = f"{head}\n{NO_AGENT}{rules}{tail}"
    return config if "[[policy]]" in config else f"{config}\n{OPEN_POLICY}\n"


def install_plugin(artifact: Path, plugin_dir: Path, names: list[str], config: str | None) -> None:
    """Lay out ``<plugin_dir>/secrets/`` as an operator would: the executable
    once, a symlink per provider name, the config beside them (0600)."""
    secrets = plugin_dir / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = secrets / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(artifact)
    if config is not None:
        path = secrets / "nomad-secrets.toml"
        path.write_text(with_policy(config))
        os.chmod(path, 0o600)
