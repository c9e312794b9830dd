"""The demo: build the executable, then use it exactly as a Nomad client would.

1. build dist/nomad-secrets (scripts/build);
2. start moto's server (an AWS-compatible server) on 127.0.0.1;
3. store a secret there, as `aws secretsmanager create-secret` would;
4. install the executable into a temporary common_plugin_dir as `secrets/aws`,
   with an operator config that points at that server and names test
   credentials (so no AWS credential chain runs);
5. run `fingerprint` and `fetch` with the environment Nomad builds (nothing
   but CPI_OPERATION, the job's env block, NOMAD_JOB_ID, NOMAD_NAMESPACE),
   using the env block of the Nomad docs' example job, and print what Nomad
   makes of the output.

Everything stays on 127.0.0.1 and in a temporary directory.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import gocheck  # noqa: E402
from nomad import NomadClient, install_plugin  # noqa: E402

JOB = """\
job "docs" {
  group "example" {
    task "server" {
      secret "my_secret" {
        provider = "aws"
        path     = "my-aws-secret"
        env {
          AWS_REGION = "us-east-2"
        }
      }
      env {
        DB_PASSWORD = "${secret.my_secret.password}"
      }
    }
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("demo: moto's server did not start")


def main() -> int:
    step = iter(range(1, 10))
    print(f"== {next(step)}. build dist/nomad-secrets")
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build"), "--python", python], check=True)
    artifact = ROOT / "dist" / "nomad-secrets"

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    print(f"\n== {next(step)}. start moto's AWS-compatible server on {endpoint}")
    moto = start_moto(port)
    try:
        import botocore.session

        password = secrets.token_urlsafe(12)
        client = botocore.session.Session().create_client(
            "secretsmanager",
            region_name="us-east-2",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_secret(
            Name="my-aws-secret", SecretString=json.dumps({"username": "app", "password": password})
        )
        print(
            f"\n== {next(step)}. stored secret 'my-aws-secret' in us-east-2:"
            f' {{"username": "app", "password": "{password}"}}'
        )

        with tempfile.TemporaryDirectory(prefix="nomad-secrets-demo-") as tmp:
            plugin_dir = Path(tmp) / "common_plugins"
            config = (
                f'[aws]\nendpoint_url = "{endpoint}"\n'
                'access_key_id = "testing"\nsecret_access_key = "testing"\n'
            )
            install_plugin(artifact, plugin_dir, ["aws"], config)
            print(
                f"\n== {next(step)}. installed as {plugin_dir}/secrets/aws, with this"
                f" nomad-secrets.toml beside it:\n{config}"
            )
            print(f'client agent config: client {{ common_plugin_dir = "{plugin_dir}" }}')

            nomad = NomadClient(plugin_dir, gocheck.decoder(Path(tmp) / "gocheck"))
            fp = nomad.fingerprint("aws")
            print(f"\n== {next(step)}. Nomad runs `aws fingerprint` with env {fp.run.env}")
            print(
                f"stdout: {fp.run.stdout.decode().strip()}   stderr: {len(fp.run.stderr)} bytes,"
                f" {fp.run.seconds * 1000:.0f} ms"
            )
            print(f"node attribute: plugins.secrets.aws.version = {fp.version}")

            print(f"\n== {next(step)}. the job:\n{JOB}")
            fetched = nomad.fetch(
                "aws", "my-aws-secret", {"AWS_REGION": "us-east-2"}, job_id="docs", namespace="default"
            )
            print(f"\nNomad runs `aws fetch my-aws-secret` with env {fetched.run.env}")
            print(
                f"stdout: {fetched.run.stdout.decode().strip()}   stderr: {len(fetched.run.stderr)}"
                f" bytes, {fetched.run.seconds * 1000:.0f} ms (first run unpacks the dependencies)"
            )
            for key, value in fetched.result.items():
                print(f"  ${{secret.my_secret.{key}}} = {value}")

            missing = nomad.fetch("aws", "no-such-secret", {"AWS_REGION": "us-east-2"})
            print(f"\n== {next(step)}. a job asking for a missing secret sees, in `nomad alloc status`:")
            print(
                f'  provider "aws" for secret "my_secret" response contained error: "{missing.plugin_error}"'
            )
            ok = fp.ok and fetched.ok and fetched.result.get("password") == password and not missing.ok
    finally:
        moto.terminate()
        moto.wait()
    print("\ndemo: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
