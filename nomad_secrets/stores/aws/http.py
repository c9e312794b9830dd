"""botocore's HTTP sends, with a bound on the answer's size.

botocore reads every answer whole before parsing it (AWSResponse.content
joins the urllib3 stream), with no limit: a wrong aws.endpoint_url, a
proxy's error page or a hostile server sending gigabytes filled the
plugin's memory until the deadline. Here a ``before-send`` handler (the
hook botocore gives for sending a request another way) sends through
botocore's own HTTP session, which keeps its pools, proxies, TLS and error
mapping, but leaves the body unread; the body is then read up to the bound,
counted as it arrives (Content-Length may be absent, with chunked encoding,
or lie), and refused past it.

Imported only when a client is made: it imports botocore and urllib3.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import botocore.exceptions as bx
import urllib3.exceptions

# The largest answer any call here can legitimately get: Secrets Manager's
# GetSecretValue holds at most 64 KiB of SecretString, or of SecretBinary
# (88 KiB in base64), and JSON escapes a control character in six bytes, so
# at most 384 KiB; SSM's GetParametersByPath page holds at most 10
# parameters of at most 8 KiB (the advanced tier), so at most 480 KiB with
# escapes and names; STS and error answers are a few KiB. 4 MiB is eight
# times the largest, and the Vault client's bound.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024


class AnswerTooLarge(bx.BotoCoreError):  # type: ignore[misc]  # botocore is untyped
    """Not a ConnectionError or HTTPClientError: botocore's retry modes retry
    those, and an endpoint that sent too much once will again."""

    fmt = "The answer from {endpoint_url} is larger than {limit} bytes"


def bound_answers(client: Any) -> None:
    """Make every call of ``client`` refuse an answer past MAX_ANSWER_BYTES."""
    # The HTTP session the client's endpoint sends with: botocore has no
    # public name for it (the lock pins botocore; the tests use this path).
    session = client._endpoint.http_session
    client.meta.events.register("before-send", functools.partial(_send, session))


def _send(session: Any, request: Any, **_: Any) -> Any:
    if request.stream_output:  # no call here streams; if one did, as botocore does
        return None
    request.stream_output = True  # botocore's send stops after the headers
    try:
        response = session.send(request)
    finally:
        request.stream_output = False
    declared = str(response.headers.get("Content-Length", ""))
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        response.raw.close()
        raise AnswerTooLarge(endpoint_url=request.url, limit=MAX_ANSWER_BYTES)
    response.raw = _Bounded(response.raw, request.url)
    # What botocore's send does past the headers, with its mapping of urllib3's
    # errors, so that its retries see what they saw before.
    try:
        response.content  # noqa: B018 (reads and keeps the body)
    except urllib3.exceptions.SSLError as exc:
        raise bx.SSLError(endpoint_url=request.url, error=exc) from None
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise bx.ReadTimeoutError(endpoint_url=request.url, error=exc) from None
    except urllib3.exceptions.ProtocolError as exc:  # closed, or cut short, mid-answer
        raise bx.ConnectionClosedError(error=exc, request=request, endpoint_url=request.url) from None
    except urllib3.exceptions.HTTPError as exc:
        raise bx.HTTPClientError(error=exc) from None
    return response


class _Bounded:
    """The urllib3 response, as AWSResponse.content reads it (``stream()``),
    counted: past the bound, the connection is closed and the read refused."""

    def __init__(self, raw: Any, url: str) -> None:
        self.raw, self.url = raw, url

    def stream(self) -> Iterator[bytes]:
        read = 0
        for chunk in self.raw.stream(_CHUNK):
            read += len(chunk)
            if read > MAX_ANSWER_BYTES:
                self.raw.close()
                raise AnswerTooLarge(endpoint_url=self.url, limit=MAX_ANSWER_BYTES)
            yield chunk
