"""One deadline for the whole process; every network call gets what is left."""

from __future__ import annotations

import time

DEFAULT_SECONDS = 8.0  # Nomad 1.11.0 to 1.11.3 send SIGTERM at 10 s
MIN_CALL_SECONDS = 0.05  # never hand a library a zero or negative timeout


class Deadline:
    def __init__(self, seconds: float, *, start: float | None = None) -> None:
        self.seconds = seconds
        self.start = time.monotonic() if start is None else start
        self.at = self.start + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def call_timeout(self) -> float:
        """A timeout for one network call: what is left, but never <= 0."""
        return max(self.remaining(), MIN_CALL_SECONDS)
