"""A bounded GET of a JSON document, for the services the doors ask
(GitHub's API, an OIDC issuer): one urllib3 pool, no retries and no
redirects, timeouts from the request's deadline, the answer cut at a size.
Any transport failure is ``Unreachable``, naming the URL and the error's
type only (never a header: they carry tokens)."""

from __future__ import annotations

import json
from typing import Any

import urllib3

from nomad_secrets._version import __version__
from nomad_secrets.deadline import Deadline

CONNECT_TIMEOUT = 3.0


class Unreachable(Exception):
    """No answer (or no complete one) from the URL."""


def pool(ca_cert: str | None = None) -> urllib3.PoolManager:
    """TLS verified always; ``ca_cert`` adds trust (a GitHub Enterprise's CA)."""
    return urllib3.PoolManager(
        num_pools=2, maxsize=8, retries=False, cert_reqs="CERT_REQUIRED", ca_certs=ca_cert
    )


def get(
    http: urllib3.PoolManager, url: str, headers: dict[str, str], deadline: Deadline, max_bytes: int
) -> tuple[int, Any]:
    """The status and the JSON body (None when it is not JSON or too large)."""
    remaining = deadline.call_timeout()
    timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, remaining), read=remaining)
    headers = {"User-Agent": f"nomad-secrets/{__version__}", **headers}
    try:
        answer = http.request(
            "GET", url, headers=headers, timeout=timeout, preload_content=False, redirect=False
        )
        try:
            body = answer.read(max_bytes + 1)
        finally:
            answer.release_conn()
    except urllib3.exceptions.HTTPError as exc:
        raise Unreachable(f"no answer from {url} ({type(exc).__name__})") from None
    try:
        document = json.loads(body) if len(body) <= max_bytes else None
    except (ValueError, RecursionError):
        document = None
    return answer.status, document
