"""A hostile job cannot run code, redirect credentials or read another job's
secrets: each case through the built executable, as Nomad runs it."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from conftest import aws_config, put_secret, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.netutil import RecordingProxy
from support.nomad import NomadClient, nomad_env, run_plugin

REGION_ENV = {"AWS_REGION": "us-east-2"}


class CaptureServer:
    """Records every request it gets (it must get none)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            def do_any(self) -> None:
                capture.requests.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST = do_PUT = do_CONNECT = do_any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer()
    yield server
    server.close()


def jwt(claims: dict[str, object]) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def error_of(fetched: Any) -> str:
    assert fetched.run.returncode == 0 and not fetched.ok and fetched.result == {}, fetched
    return str(fetched.plugin_error)


# --- the environment is input, not configuration --------------------------------


def hostile_env(tmp_path: Path, capture_url: str, marker: Path) -> dict[str, dict[str, str]]:
    aws_dir = tmp_path / "aws"
    aws_dir.mkdir(exist_ok=True)
    (aws_dir / "config").write_text(
        f"[default]\ncredential_process = /bin/sh -c 'touch {marker}; echo {{}}'\n"
        f"endpoint_url = {capture_url}\n"
    )
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n")
    code = tmp_path / "py"
    code.mkdir(exist_ok=True)
    (code / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w')\n")
    return {
        "PYTHONPATH": {"PYTHONPATH": str(code)},
        "PYTHONSTARTUP": {"PYTHONSTARTUP": str(code / "sitecustomize.py")},
        "AWS_CONFIG_FILE": {"AWS_CONFIG_FILE": str(aws_dir / "config"), "AWS_PROFILE": "default"},
        "AWS_ENDPOINT_URL": {"AWS_ENDPOINT_URL": capture_url},
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": {"AWS_ENDPOINT_URL_SECRETS_MANAGER": capture_url},
        "AWS credentials": {"AWS_ACCESS_KEY_ID": "AKIAEVIL", "AWS_SECRET_ACCESS_KEY": "x"},
        "AWS_WEB_IDENTITY_TOKEN_FILE": {
            "AWS_ROLE_ARN": "arn:aws:iam::1:role/x",
            "AWS_WEB_IDENTITY_TOKEN_FILE": str(ca),
        },
        "VAULT_ADDR": {"VAULT_ADDR": capture_url, "VAULT_TOKEN": "evil"},
        "BAO_ADDR": {"BAO_ADDR": capture_url},
        "HTTPS_PROXY": {"HTTPS_PROXY": capture_url, "HTTP_PROXY": capture_url, "https_proxy": capture_url},
        "NO_PROXY": {"NO_PROXY": "*"},
        "CA bundles": {
            "AWS_CA_BUNDLE": str(ca),
            "REQUESTS_CA_BUNDLE": str(ca),
            "SSL_CERT_FILE": str(ca),
            "SSL_CERT_DIR": str(tmp_path),
        },
        "HOME": {"HOME": str(tmp_path)},
        "LD_LIBRARY_PATH": {"LD_LIBRARY_PATH": str(code)},
        "OPENSSL_CONF": {"OPENSSL_CONF": str(ca)},
    }


CASES = [
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "AWS_CONFIG_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AWS credentials",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "VAULT_ADDR",
    "BAO_ADDR",
    "HTTPS_PROXY",
    "NO_PROXY",
    "CA bundles",
    "HOME",
    "LD_LIBRARY_PATH",
    "OPENSSL_CONF",
]


@pytest.mark.parametrize("case", CASES)
def test_hostile_env_has_no_effect(
    case: str, nomad: NomadClient, capture: CaptureServer, secretsmanager: Any, tmp_path: Path
) -> None:
    """Each variable is refused by name; nothing it points at is run or
    contacted, and the same fetch without it still works."""
    marker = tmp_path / "marker"
    name = "hostile-" + uuid.uuid4().hex[:8]
    secretsmanager.create_secret(Name=name, SecretString="real")
    env = hostile_env(tmp_path, capture.url, marker)[case]
    message = error_of(nomad.fetch("aws", name, {**REGION_ENV, **env}))
    assert any(repr(key) in message for key in env), message
    assert capture.requests == []
    assert not marker.exists()
    assert nomad.fetch("aws", name, REGION_ENV).result == {"value": "real"}


def test_forged_identity_in_env_is_overwritten_by_nomad(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, POLICY))
    put_secret(secretsmanager, "nomad/default/admin/db", "admin's")
    forged = {**REGION_ENV, "NOMAD_JOB_ID": "admin", "NOMAD_NAMESPACE": "default"}
    message = error_of(nomad.fetch("aws", "nomad/default/admin/db", forged, job_id="web"))
    assert "job 'web'" in message and "admin's" not in message


# --- per-job access policy -------------------------------------------------------

POLICY = """
[[policy]]
namespace = "payments"
allow = ["aws-ssm:/payments/*"]

[[policy]]
allow = ["aws-sm:nomad/{namespace}/{job}/**"]
"""


def test_policy_allows_own_and_denies_others(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, ssm: Any
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, POLICY))
    put_secret(secretsmanager, "nomad/default/web/db", "web's")
    put_secret(secretsmanager, "nomad/default/api/db", "api's")
    ssm.put_parameter(Name="/payments/key", Value="pay", Type="String", Overwrite=True)
    assert nomad.fetch("aws", "nomad/default/web/db", REGION_ENV, job_id="web").result == {"value": "web's"}
    message = error_of(nomad.fetch("aws", "nomad/default/api/db", REGION_ENV, job_id="web"))
    assert "'nomad/default/api/db'" in message and "namespace 'default', job 'web'" in message
    assert nomad.fetch("aws", "aws-ssm:/payments/key", REGION_ENV, namespace="payments").result == {
        "value": "pay"
    }
    error_of(nomad.fetch("aws", "aws-ssm:/payments/key", REGION_ENV, namespace="default"))


def test_denied_reference_fails_the_whole_block(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, POLICY))
    canary = uuid.uuid4().hex
    put_secret(secretsmanager, "nomad/default/web/ok", canary)
    fetched = nomad.fetch(
        "aws", "mine = nomad/default/web/ok\ntheirs = nomad/default/api/db\n", REGION_ENV, job_id="web"
    )
    assert "'nomad/default/api/db'" in error_of(fetched)
    assert canary.encode() not in fetched.run.stdout


def test_older_nomad_without_identity_is_denied(nomad: NomadClient, moto_endpoint: str) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, POLICY))
    message = error_of(nomad.fetch("aws", "nomad/default/web/db", REGION_ENV, job_id=None, namespace=None))
    assert "does not let" in message and "1.11.1" in message


@pytest.mark.parametrize(
    "job_id",
    [
        "web/prod",  # a job named with a slash
        "web/dispatch-1700000000-0a1b2c3d",  # Nomad's child of the parameterized job web
        "web/periodic-1700000000",  # Nomad's child of the periodic job web
    ],
)
def test_a_job_id_with_a_slash_cannot_reach_another_jobs_secrets(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, job_id: str
) -> None:
    """With the README's rule, job "web/prod" used to read
    nomad/default/web/prod/password, which is under job web's prefix. The
    plugin never takes an ID apart: a child (or a job named like one) gets
    nothing from a {job} rule; docs/policy.md shows the explicit rule."""
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, POLICY))
    canary = "web's own " + uuid.uuid4().hex
    put_secret(secretsmanager, f"nomad/default/{job_id}/password", canary)
    put_secret(secretsmanager, "nomad/default/web/password", canary)
    for name in (f"nomad/default/{job_id}/password", "nomad/default/web/password"):
        fetched = nomad.fetch("aws", name, REGION_ENV, job_id=job_id)
        message = error_of(fetched)
        assert f"job {job_id!r}" in message and canary.encode() not in fetched.run.stdout
    assert "contains '/', so it cannot fill {job}" in error_of(
        nomad.fetch("aws", f"nomad/default/{job_id}/password", REGION_ENV, job_id=job_id)
    )


CHILDREN = """
[[policy]]
job = "backup/periodic-*"
allow = ["aws-sm:nomad/{namespace}/backup/**"]

[[policy]]
allow = ["aws-sm:nomad/{namespace}/{job}/**"]
"""


def test_children_read_their_parents_secrets_by_an_explicit_rule(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, CHILDREN))
    put_secret(secretsmanager, "nomad/default/backup/key", "backup key")
    put_secret(secretsmanager, "nomad/default/web/key", "web key")
    child = "backup/periodic-1700000000"
    assert nomad.fetch("aws", "nomad/default/backup/key", REGION_ENV, job_id=child).result == {
        "value": "backup key"
    }
    error_of(nomad.fetch("aws", "nomad/default/web/key", REGION_ENV, job_id=child))
    # A job named like web's child gets nothing of web's: no rule names web's children.
    error_of(nomad.fetch("aws", "nomad/default/web/key", REGION_ENV, job_id="web/periodic-1700000000"))


def test_a_pathological_pattern_and_path_answer_at_once(nomad: NomadClient, moto_endpoint: str) -> None:
    """fnmatch's regex took seconds per reference here (three * took 6.3 s;
    four ran into Nomad's SIGTERM): the answer is now a denial."""
    policy = '[[policy]]\nallow = ["aws-sm:*/*/*/*/db-password"]\n'
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, policy))
    path = "aws-sm:" + "/" * 2040 + "x"
    fetched = nomad.fetch("aws", path, REGION_ENV)
    assert not fetched.run.terminated
    assert "does not let namespace 'default', job 'example'" in error_of(fetched)


# --- the answer's size (issue #10 item 3) ------------------------------------------------


def test_the_answer_is_capped_with_a_clear_error(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any
) -> None:
    big = "x" * (300 * 1024)
    put_secret(secretsmanager, "big-secret", big)
    path = "".join(f"k{i} = big-secret\n" for i in range(4))  # 1.2 MB of answer
    write_config(nomad.plugin_dir, aws_config(moto_endpoint))
    fetched = nomad.fetch("aws", path, REGION_ENV)
    message = error_of(fetched)
    assert "larger than the plugin's limit of 1,048,576 bytes (plugin.max_output_bytes)" in message
    assert len(fetched.run.stdout) < 1024 and big[:100].encode() not in fetched.run.stdout
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, "[plugin]\nmax_output_bytes = 2097152\n"))
    assert nomad.fetch("aws", path, REGION_ENV).result == {f"k{i}": big for i in range(4)}


# --- workload identity: STS AssumeRoleWithWebIdentity -------------------------------


WEB_IDENTITY = 'web_identity_role_arn = "arn:aws:iam::123456789012:role/nomad-{namespace}-{job}"\n'


def token(job: str = "web", namespace: str = "default", ttl: float = 300) -> str:
    return jwt(
        {
            "nomad_namespace": namespace,
            "nomad_job_id": job,
            "exp": time.time() + ttl,
            "sub": f"global:{namespace}:{job}:group:task:secrets",
        }
    )


def test_web_identity_reads_with_the_jobs_role(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any
) -> None:
    """STS gets the job's token and its templated role, unsigned; the read
    is then signed with the role's temporary keys, never the node's."""
    put_secret(secretsmanager, "web-secret", "for web only")
    jwt_token = token()
    with RecordingProxy(moto_endpoint) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url) + WEB_IDENTITY)
        fetched = nomad.fetch(
            "aws", "web-secret", {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": jwt_token}, job_id="web"
        )
    assert fetched.result == {"value": "for web only"}
    sts, read = proxy.requests
    form = parse_qs(sts.body.decode())
    assert form["Action"] == ["AssumeRoleWithWebIdentity"]
    assert form["RoleArn"] == ["arn:aws:iam::123456789012:role/nomad-default-web"]
    assert form["WebIdentityToken"] == [jwt_token] and "authorization" not in sts.headers
    assert "Credential=ASIA" in read.headers["authorization"] and "x-amz-security-token" in read.headers
    assert "Credential=testing/" not in read.headers["authorization"]


def test_web_identity_refuses_another_jobs_token(nomad: NomadClient, moto_endpoint: str) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + WEB_IDENTITY)
    stolen = token(job="web")
    message = error_of(
        nomad.fetch("aws", "web-secret", {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": stolen}, job_id="api")
    )
    assert "nomad_job_id claim is not 'api'" in message and stolen not in message


def test_a_childs_token_assumes_its_parents_role(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any
) -> None:
    """Nomad names a periodic child's parent in its token (nomad_job_id), so
    the role is the parent's, as the IAM trust policy on Nomad's claims
    expects."""
    put_secret(secretsmanager, "backup-secret", "for backup")
    child = "backup/periodic-1700000000"
    with RecordingProxy(moto_endpoint) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url) + WEB_IDENTITY)
        env = {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token(job="backup")}
        assert nomad.fetch("aws", "backup-secret", env, job_id=child).result == {"value": "for backup"}
    form = parse_qs(proxy.requests[0].body.decode())
    assert form["RoleArn"] == ["arn:aws:iam::123456789012:role/nomad-default-backup"]
    imitator = {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token(job="backup")}
    assert "nomad_job_id claim" in error_of(nomad.fetch("aws", "backup-secret", imitator, job_id="backup/x"))


def test_a_job_id_with_a_slash_cannot_name_another_jobs_role(nomad: NomadClient, moto_endpoint: str) -> None:
    """IAM names a role by the last part of its ARN: job "x/ns2@db" would
    fill the docs' template to role "ns2@db", job db of namespace ns2's.
    Nomad allows '/' in a job ID; the plugin asks STS for no such role."""
    template = 'web_identity_role_arn = "arn:aws:iam::123456789012:role/nomad/{namespace}@{job}"\n'
    job = "x/ns2@db"
    with RecordingProxy(moto_endpoint) as proxy:
        write_config(nomad.plugin_dir, aws_config(proxy.url) + template)
        env = {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token(job=job)}
        message = error_of(nomad.fetch("aws", "db-secret", env, job_id=job))
    assert proxy.requests == []
    assert message.endswith(
        "the job 'x/ns2@db' cannot fill {job} in aws.web_identity_role_arn: an IAM role's name holds only"
        " letters, digits and _+=,.@- (no '/'); rename the job, or read this secret through a provider"
        " without web_identity_role_arn (docs/policy.md)"
    ), message
    # A role that names no job: such a job ID fills nothing, and STS is asked.
    with RecordingProxy(moto_endpoint) as proxy:
        fixed = 'web_identity_role_arn = "arn:aws:iam::123456789012:role/nomad-fixed"\n'
        write_config(nomad.plugin_dir, aws_config(proxy.url) + fixed)
        nomad.fetch("aws", "db-secret", env, job_id=job)
        other = {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token(job="café")}
        nomad.fetch("aws", "db-secret", other, job_id="café")
    form = parse_qs(proxy.requests[0].body.decode())
    assert form["RoleArn"] == ["arn:aws:iam::123456789012:role/nomad-fixed"]
    # the session's name keeps only what IAM allows (ASCII), the rest as -
    assert form["RoleSessionName"] == ["nomad-default-x-ns2@db"]
    sessions = [parse_qs(r.body.decode()).get("RoleSessionName") for r in proxy.requests]
    assert ["nomad-default-caf-"] in sessions, sessions


@pytest.mark.parametrize(("expired", "needle"), [(False, "NOMAD_WORKLOAD_TOKEN"), (True, "expired")])
def test_web_identity_needs_a_live_token(
    nomad: NomadClient, moto_endpoint: str, expired: bool, needle: str
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + WEB_IDENTITY)
    env = {"NOMAD_WORKLOAD_TOKEN": token(ttl=-3600)} if expired else {}
    assert needle in error_of(nomad.fetch("aws", "web-secret", {**REGION_ENV, **env}, job_id="web"))


# --- trust in files -------------------------------------------------------------------


def test_config_writable_by_others_is_refused(nomad: NomadClient, moto_endpoint: str) -> None:
    path = write_config(nomad.plugin_dir, aws_config(moto_endpoint))
    path.chmod(0o666)
    message = error_of(nomad.fetch("aws", "x", REGION_ENV))
    assert f"the config file {path} is writable by group or others; chmod go-w {path}" in message


def test_plugin_dir_writable_by_others_is_refused(nomad: NomadClient) -> None:
    secrets = nomad.plugin_dir / "secrets"
    secrets.chmod(0o777)
    assert f"the plugin directory {secrets} is writable" in error_of(nomad.fetch("aws", "x", REGION_ENV))


def test_directory_above_the_plugin_dir_writable_by_others_is_refused(nomad: NomadClient) -> None:
    nomad.plugin_dir.chmod(0o777)  # common_plugin_dir: anyone could swap secrets/ for their own
    message = error_of(nomad.fetch("aws", "x", REGION_ENV))
    assert f"the directory {nomad.plugin_dir} is writable by group or others" in message
    nomad.plugin_dir.chmod(0o1777)  # sticky, like /tmp: others cannot rename what root owns
    assert "the directory" not in error_of(nomad.fetch("aws", "x", REGION_ENV))


def test_config_symlink_is_refused(nomad: NomadClient, moto_endpoint: str, tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text(aws_config(moto_endpoint))
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    path.unlink()
    path.symlink_to(real)
    assert "is a symlink" in error_of(nomad.fetch("aws", "x", REGION_ENV))


def test_vault_token_file_writable_by_others_is_refused(
    nomad: NomadClient, moto_endpoint: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s.secret")
    token_file.chmod(0o622)
    vault = f'[vault]\naddress = "http://127.0.0.1:1"\ntoken_file = "{token_file}"\n'
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, vault))
    message = error_of(nomad.fetch("aws", "vault:secret/x", REGION_ENV))
    assert f"the file of vault.token_file {token_file} is writable" in message
    # Only a fetch that uses the file is refused: one provider's file does not stop the others.
    assert "(AWS Secrets Manager): not found" in error_of(nomad.fetch("aws", "x", REGION_ENV))
    check = run_plugin(nomad.executable("aws"), ["check"], {})
    assert (
        f"PROBLEM  refusing to run: the file of vault.token_file {token_file} is writable"
        in check.stdout.decode()
    )


def _debug_log_config(nomad: NomadClient, moto_endpoint: str, log: Path) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, f'[plugin]\ndebug_log = "{log}"\n'))


@pytest.mark.parametrize("plant", ["other-owner-0666", "fifo", "symlink", "directory"])
def test_debug_log_is_held_to_the_trust_rules(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path, plant: str
) -> None:
    """A log planted by someone else is never appended to, a FIFO never hangs
    the fetch, and the job is never blamed: the fetch answers as if no log
    were set, and check names the problem."""
    log = tmp_path / "debug.log"
    target = tmp_path / "elsewhere"
    if plant == "other-owner-0666":
        log.write_bytes(b"")
        os.chown(log, 65534, 65534)
        log.chmod(0o666)
    elif plant == "fifo":
        os.mkfifo(log, 0o600)
    elif plant == "symlink":
        target.write_bytes(b"")
        target.chmod(0o600)
        log.symlink_to(target)
    else:
        log.mkdir(mode=0o700)
    _debug_log_config(nomad, moto_endpoint, log)
    put_secret(secretsmanager, "debug-log-trust", "v")
    fetched = nomad.fetch("aws", "debug-log-trust", REGION_ENV, timeout=5)
    assert fetched.ok and fetched.result == {"value": "v"}, fetched.error
    if plant == "other-owner-0666":
        assert log.read_bytes() == b""
    if plant == "symlink":
        assert target.read_bytes() == b""
    check = run_plugin(nomad.executable("aws"), ["check"], {})
    assert f"debug log {log}" in check.stdout.decode(), check.stdout
    assert "WARNING" in check.stdout.decode()


def test_debug_log_created_private(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    log = tmp_path / "debug.log"
    _debug_log_config(nomad, moto_endpoint, log)
    put_secret(secretsmanager, "debug-log-private", "v")
    assert nomad.fetch("aws", "debug-log-private", REGION_ENV).ok
    assert log.stat().st_mode & 0o777 == 0o600 and b"fetched" in log.read_bytes()


# --- hygiene: canaries never leak -----------------------------------------------------


def test_canaries_never_reach_errors_or_logs(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    canary = "CANARY" + uuid.uuid4().hex
    log = tmp_path / "debug.log"
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, f'[plugin]\ndebug_log = "{log}"\n'))
    name = "canary-" + uuid.uuid4().hex[:8]
    secretsmanager.create_secret(Name=name, SecretString=json.dumps({"password": canary, "n": 1}))
    outputs = [nomad.fetch("aws", name, REGION_ENV)]
    assert outputs[0].result["password"] == canary
    failing = [
        f"{name}#missing",
        f"{name}#/password/deeper",
        f"a = {name}\na_password = {name}#n\n",
        f"{name}?version_id=nope",
        f"ok = {name}\nbad = missing-{name}\n",
    ]
    for secret_path in failing:
        fetched = nomad.fetch("aws", secret_path, REGION_ENV)
        error_of(fetched)
        assert canary.encode() not in fetched.run.stdout + fetched.run.stderr, secret_path
    for written in [log, *Path(nomad.plugin_dir).rglob("*")]:
        if written.is_file():
            assert canary.encode() not in written.read_bytes(), written
    assert log.stat().st_size > 0


# --- property: any env and path give one JSON object, exit 0 --------------------------

env_keys = st.one_of(
    st.sampled_from(["AWS_REGION", "NOMAD_WORKLOAD_TOKEN", "CPI_OPERATION", "PATH", "PYTHONPATH", "NOMAD_X"]),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="), min_size=1, max_size=12
    ),
)
env_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF), max_size=40)
# Paths as Nomad passes them: any text, and bytes that are not UTF-8 (argv
# is bytes; Python gives them to us as surrogate escapes).
paths = st.one_of(
    st.text(st.characters(min_codepoint=0x01, max_codepoint=0x2FFF), max_size=80),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b).map(os.fsdecode),
    st.lists(
        st.sampled_from(["vault:", "aws-ssm:", "#/", "/", "\u0661", "\u00b2", "?version=", "\udcff", "x"]),
        max_size=8,
    ).map("".join),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(env_keys, env_values, max_size=4), path=paths)
def test_any_env_and_path_give_one_json_object(nomad: NomadClient, env: dict[str, str], path: str) -> None:
    run = run_plugin(nomad.executable("aws"), ["fetch", path], nomad_env("fetch", env, "j", "default"))
    assert run.returncode == 0 and run.stderr == b"", run
    answer = json.loads(run.stdout)
    assert set(answer) <= {"result", "error"} and isinstance(answer["result"], dict)
    assert all(isinstance(v, str) for v in answer["result"].values())
    assert b"Traceback" not in run.stdout
    # Every input a job controls gets a message about that input.
    assert "internal error" not in answer.get("error", ""), answer
    assert os.path.exists(nomad.executable("aws"))


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        (b"vault:secret/app/\xff\xfe", "not valid UTF-8"),
        (b"aws-ssm:/app/\xc3", "not valid UTF-8"),
        ("x#/arr/\u0661".encode(), "no field"),
        ("x#/arr/\u00b2".encode(), "no field"),
    ],
)
def test_inputs_that_were_internal_errors(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, path: bytes, needle: str
) -> None:
    put_secret(secretsmanager, "x", json.dumps({"arr": ["a", "b"]}))
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, '[vault]\naddress = "http://127.0.0.1:1"\n'))
    argv = ["fetch", os.fsdecode(path)]  # subprocess gives Nomad's bytes back
    run = run_plugin(nomad.executable("aws"), argv, nomad_env("fetch", REGION_ENV, "j", "default"))
    answer = json.loads(run.stdout)
    assert needle in answer["error"] and "internal error" not in answer["error"], answer


def test_nothing_but_loopback_is_reachable() -> None:
    """scripts/test runs the suite, as root, where only 127.0.0.1 exists: no
    credential chain of any test can reach the instance metadata address."""
    import socket

    if os.environ.get("NOMAD_SECRETS_TEST_NETNS") != "1":
        pytest.skip("needs the loopback-only network namespace scripts/test makes as root")
    for address in (("169.254.169.254", 80), ("1.1.1.1", 443)):
        with pytest.raises(OSError), socket.create_connection(address, timeout=1):
            pass


# --- round three: a hostile job author's review ------------------------------------------


def test_an_ssm_path_read_with_empty_segments_is_refused_before_the_policy(
    nomad: NomadClient, moto_endpoint: str, ssm: Any
) -> None:
    """SSM's path read sees /shared for /shared//, the policy saw one segment
    more: /shared/*/* allowed the children of /shared."""
    canary = "TOP-" + uuid.uuid4().hex
    ssm.put_parameter(Name="/shared/topsecret", Value=canary, Type="String", Overwrite=True)
    policy = '[[policy]]\nallow = ["aws-ssm:/shared/*/*", "aws-ssm:/shared/*/*/**"]\n'
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, policy))
    for path in ("aws-ssm:/shared//", "aws-ssm:/shared///?recursive=true", "aws-ssm:/shared//topsecret"):
        fetched = nomad.fetch("aws", path, REGION_ENV)
        assert "write it without //" in error_of(fetched), path
        assert canary.encode() not in fetched.run.stdout


def test_a_hanging_sts_is_bounded_by_the_deadline(nomad: NomadClient, moto_endpoint: str) -> None:
    """The web identity exchange runs before the reads, where nothing else
    bounds it: botocore's 4 attempts of 8 s each took 32 s, past Nomad's kill."""
    from support.netutil import HangingServer

    with HangingServer() as hanging:
        config = aws_config(moto_endpoint, f'endpoint_urls = {{ sts = "{hanging.url}" }}\n') + WEB_IDENTITY
        write_config(nomad.plugin_dir, config + "[plugin]\ndeadline_seconds = 4\n")
        fetched = nomad.fetch(
            "aws", "web-secret", {**REGION_ENV, "NOMAD_WORKLOAD_TOKEN": token()}, job_id="web"
        )
    assert not fetched.run.terminated
    message = error_of(fetched)
    assert "'NOMAD_WORKLOAD_TOKEN' (AWS STS): no answer in time" in message


@pytest.mark.parametrize(
    ("env", "path", "needle"),
    [
        ({"AWS_REGION": "us-" + "a" * 62 + "-1"}, "x", "is not an AWS region name"),
        (REGION_ENV, "x?version_id=\u00e9", "the name or an option is not one AWS accepts"),
    ],
)
def test_inputs_botocore_refuses_get_a_message(
    nomad: NomadClient, moto_endpoint: str, env: dict[str, str], path: str, needle: str
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint))
    message = error_of(nomad.fetch("aws", path, env))
    assert needle in message and "internal error" not in message


def test_a_denial_never_shows_a_pattern_filled_with_a_value_that_cannot_fill_it(
    nomad: NomadClient, moto_endpoint: str
) -> None:
    write_config(nomad.plugin_dir, aws_config(moto_endpoint, POLICY))
    message = error_of(nomad.fetch("aws", "nomad/default/web/prod/x", REGION_ENV, job_id="web/prod"))
    assert "allows 'aws-sm:nomad/default/{job}/**'" in message
    assert "'aws-sm:nomad/default/web/prod/**'" not in message
