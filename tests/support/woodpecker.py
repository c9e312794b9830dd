"""A Woodpecker server's side of the secret extension, for the tests: two
signers, each independent of the server's verifier, that sign and send a
request as Woodpecker 3.x does (RFC 9421, ed25519, label
``woodpecker-ci-extensions`` over ``@request-target`` and
``content-digest``, ``created`` then ``alg``; the body is Go's
json.Encoder output).

- ``GoWoodpecker``: tests/support/woodpecker_sign/main.go, Go's own crypto/ed25519,
  encoding/json and net/http (needs Go; the tests skip with that reason
  where it is missing);
- ``PyWoodpecker``: written here on ``cryptography`` from the RFC, sending
  with http.client, so that the tests run where Go is missing too.

Both have ``public_pem()`` (what ``/api/signature/public-key`` serves) and
``send(url, body, send_body=, created_offset=, times=)``: the answers to
one signed request sent ``times`` times, as (status, body text).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support import gocheck

SIGN_GO = Path(__file__).resolve().parent / "woodpecker_sign" / "main.go"
NEEDS_GO = "needs Go (its crypto/ed25519 signs as Woodpecker does): apt-get install golang-go"
LABEL = "woodpecker-ci-extensions"


class GoWoodpecker:
    def __init__(self, binary: Path, seed: bytes) -> None:
        self.binary, self.seed = binary, seed

    def _run(self, instruction: dict[str, Any]) -> bytes:
        proc = subprocess.run(
            [str(self.binary)],
            input=json.dumps({"seed": self.seed.hex(), **instruction}).encode(),
            capture_output=True,
            timeout=120,
            check=True,
        )
        return proc.stdout

    def public_pem(self) -> bytes:
        return self._run({"mode": "pubkey"})

    def send(
        self,
        url: str,
        body: dict[str, Any],
        *,
        send_body: str | None = None,
        created_offset: int = 0,
        times: int = 1,
    ) -> list[tuple[int, str]]:
        instruction = {"mode": "send", "url": url, "body": body, "created_offset": created_offset}
        out = self._run({**instruction, "send_body": send_body, "times": times})
        return [(r["status"], r["body"]) for r in json.loads(out)]


def go_woodpecker(cache_dir: Path, seed: bytes) -> GoWoodpecker:
    """The Go signer, built into ``cache_dir``; gocheck.GoMissing without Go."""
    go = gocheck.find_go_binary(NEEDS_GO)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return GoWoodpecker(gocheck.build(cache_dir, SIGN_GO, go), seed)


class PyWoodpecker:
    def __init__(self, seed: bytes) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(seed)

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def send(
        self,
        url: str,
        body: dict[str, Any],
        *,
        send_body: str | None = None,
        created_offset: int = 0,
        times: int = 1,
    ) -> list[tuple[int, str]]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        data, headers = self.signed(target, body, created_offset)
        answers = []
        for _ in range(times):
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
            try:
                sent = data if send_body is None else send_body.encode()
                conn.request("POST", target, sent, headers)
                answer = conn.getresponse()
                answers.append((answer.status, answer.read().decode()))
            finally:
                conn.close()
        return answers

    def signed(
        self, target: str, body: dict[str, Any], created_offset: int = 0
    ) -> tuple[bytes, dict[str, str]]:
        """The body as Go's json.Encoder writes it, and the headers that
        sign it for ``target`` (the path and query it is sent to)."""
        data = (json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n").encode()
        digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
        created = int(time.time()) + created_offset
        params = f'("@request-target" "content-digest");created={created};alg="ed25519"'
        base = f'"@request-target": {target}\n"content-digest": {digest}\n"@signature-params": {params}'
        signature = base64.b64encode(self.key.sign(base.encode())).decode()
        return data, {
            "Content-Type": "application/json",
            "Content-Digest": digest,
            "Signature-Input": f"{LABEL}={params}",
            "Signature": f"{LABEL}=:{signature}:",
        }


Woodpecker = Union[GoWoodpecker, PyWoodpecker]
