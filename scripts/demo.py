"""The demo: build the executable, then use it exactly as a Nomad client would.

    scripts/demo [--output dist/nomad-secrets] [--node-python /usr/bin/python3]

1. build dist/nomad-secrets exactly as `scripts/build` does (the same file,
   `#!/usr/bin/python3 -IS`, the one to ship); only where this machine has
   no usable /usr/bin/python3 does it build a demo-only file elsewhere, and
   say so;
2. start moto's server (an AWS-compatible server) on 127.0.0.1;
3. store a secret there, as `aws secretsmanager create-secret` would;
4. install the executable into a temporary common_plugin_dir as `secrets/aws`,
   with an operator config that points at that server and names test
   credentials (so no AWS credential chain runs);
5. run `fingerprint` and `fetch` with the environment Nomad builds (nothing
   but CPI_OPERATION, the job's env block, NOMAD_JOB_ID, NOMAD_NAMESPACE),
   using the env block of the Nomad docs' example job, and print what Nomad
   makes of the output: decoded by Go's encoding/json and go-version as the
   Nomad client does (tests/support/gocheck); on a machine without Go, the raw
   output with a note saying so.

Everything stays on 127.0.0.1 and in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import gocheck  # noqa: E402
from support.nomad import install_plugin, nomad_env, run_plugin  # noqa: E402

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


def usable_python(path: str) -> str | None:
    """Why ``path`` cannot run the executable, or None when it can (3.10+)."""
    if not os.access(path, os.X_OK):
        return f"{path} does not exist here"
    proc = subprocess.run(
        [path, "-I", "-S", "-c", "import sys; print(sys.version_info >= (3, 10))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if proc.stdout.strip() == "True" else f"{path} is older than Python 3.10"


def build(output: Path, node_python: str, scratch: Path) -> Path:
    """The documented build when this machine can run it; else a demo-only
    build elsewhere, said out loud."""
    problem = usable_python(node_python)
    if problem is None:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build"), "--output", str(output)], check=True)
        print(f"{output}: the same file `scripts/build` makes (#!{node_python} -IS), the one to ship")
        return output
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    elsewhere = scratch / "demo-build" / "nomad-secrets"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build"), "--python", python, "--output", str(elsewhere)],
        check=True,
    )
    print(
        f"note: {problem}, so this demo runs its own build {elsewhere} (#!{python} -IS), which only"
        f" runs where {python} exists: do not ship it. {output} is not written; build the file for"
        " your nodes with scripts/build (--python names their interpreter)"
    )
    return elsewhere


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "nomad-secrets")
    parser.add_argument(
        "--node-python",
        default="/usr/bin/python3",
        help="the interpreter the executable's shebang names, as scripts/build's default (%(default)s)",
    )
    args = parser.parse_args()
    step = iter(range(1, 10))
    with tempfile.TemporaryDirectory(prefix="nomad-secrets-demo-") as tmp:
        print(f"== {next(step)}. build the executable")
        artifact = build(args.output, args.node_python, Path(tmp))
        try:
            decoder: gocheck.GoDecoder | None = gocheck.decoder(Path(tmp) / "gocheck")
        except gocheck.GoMissing as missing:
            decoder = None
            print(
                "note: no Go here, so the output below is the plugin's raw stdout, not decoded by"
                f" Go's encoding/json as the Nomad client does ({missing}); the demo checks it"
                " with Python's json instead"
            )
        return demo(artifact, Path(tmp), decoder, step)


def demo(artifact: Path, tmp: Path, decoder: gocheck.GoDecoder | None, step: Iterator[int]) -> int:
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

        plugin_dir = tmp / "common_plugins"
        config = (
            f'[aws]\nendpoint_url = "{endpoint}"\naccess_key_id = "testing"\nsecret_access_key = "testing"\n'
            "\n[[policy]]                # which jobs read what: without rules, none reads anything\n"
            'allow = ["aws-sm:my-aws-*"]\n'
        )
        install_plugin(artifact, plugin_dir, ["aws"], config)
        print(
            f"\n== {next(step)}. installed as {plugin_dir}/secrets/aws, with this"
            f" nomad-secrets.toml beside it:\n{config}"
        )
        print(f'client agent config: client {{ common_plugin_dir = "{plugin_dir}" }}')
        plugin = plugin_dir / "secrets" / "aws"

        fp = run_plugin(plugin, ["fingerprint"], nomad_env("fingerprint", None, None, None))
        print(f"\n== {next(step)}. Nomad runs `aws fingerprint` with env {fp.env}")
        print(
            f"stdout: {fp.stdout.decode().strip()}   stderr: {len(fp.stderr)} bytes,"
            f" {fp.seconds * 1000:.0f} ms"
        )
        if decoder is not None:
            decoded_fp = decoder.decode_fingerprint(fp.stdout)
            fp_ok = decoded_fp.ok
            print(f"node attribute (Go decoded it): plugins.secrets.aws.version = {decoded_fp.version}")
        else:
            fp_ok = json.loads(fp.stdout).get("type") == "secrets"
            print("(raw: Nomad would decode it with Go's encoding/json and go-version)")

        print(f"\n== {next(step)}. the job:\n{JOB}")
        env = nomad_env("fetch", {"AWS_REGION": "us-east-2"}, "docs", "default")
        fetched = run_plugin(plugin, ["fetch", "my-aws-secret"], env)
        print(f"\nNomad runs `aws fetch my-aws-secret` with env {fetched.env}")
        print(
            f"stdout: {fetched.stdout.decode().strip()}   stderr: {len(fetched.stderr)}"
            f" bytes, {fetched.seconds * 1000:.0f} ms (the first run of a build unpacks its dependencies)"
        )
        result, _ = outcome(fetched.stdout, decoder)
        for key, value in result.items():
            print(f"  ${{secret.my_secret.{key}}} = {value}")

        missing = run_plugin(plugin, ["fetch", "my-aws-secret-that-is-not-there"], env)
        _, error = outcome(missing.stdout, decoder)
        print(f"\n== {next(step)}. a job asking for a missing secret sees, in `nomad alloc status`:")
        print(f'  provider "aws" for secret "my_secret" response contained error: "{error}"')
        ok = (
            fp_ok
            and fetched.returncode == missing.returncode == 0
            and fetched.stderr == missing.stderr == b""
            and result.get("password") == password
            and bool(error)
        )
    finally:
        moto.terminate()
        moto.wait()
    print(
        "\ndemo: "
        + ("OK" if ok else "FAILED")
        + ("" if decoder else " (raw output: no Go here to decode it)")
    )
    return 0 if ok else 1


def outcome(stdout: bytes, decoder: gocheck.GoDecoder | None) -> tuple[dict[str, str], str]:
    """The result and the error message, as Go decodes them (or as Python's
    json reads them, without Go)."""
    if decoder is not None:
        decoded = decoder.decode_fetch(stdout, "aws", "my_secret")
        return dict(decoded.result or {}), decoded.plugin_error or ""
    answer = json.loads(stdout)
    return dict(answer.get("result") or {}), str(answer.get("error") or "")


if __name__ == "__main__":
    sys.exit(main())
