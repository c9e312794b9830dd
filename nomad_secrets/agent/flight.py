"""Single flight: identical reads in flight at once share one store call.

A burst of task starts asks the store for the same secret many times in
the same second. The first read of a key makes the call (in a thread of its
own, so that no caller's wait is tied to another's); a read of the same key
that arrives while that call is in flight waits for its outcome instead of
calling again. No caller gets a value older than a call that started while
it waited, so this needs no setting. Each caller waits within its own
deadline, and was checked against the policy before it asked (fetch.py):
what the key holds is decided by reads.py, never here.

A call that has outlived the deadline of the read that started it is no
longer joined: that read has been answered, and the call is one a store
held that long (hung, then back, while botocore's retries run on). A read
that waited on it would spend its whole deadline there, as the operator
review saw right after an outage; it starts a call of its own instead.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Call(Generic[T]):
    """One store call and its outcome, for everyone who waits for it."""

    def __init__(self, ends: float) -> None:
        self.ends = ends  # time.monotonic() at which the read that started it was answered
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.about = ""  # the reference as the caller that started it wrote it

    def run(self, call: Callable[[], T]) -> None:
        try:
            self.value = call()
        except BaseException as exc:  # noqa: BLE001 - handed to every caller
            self.error = exc
        self.done.set()


class Flights(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Call[T]] = {}

    def join(
        self, key: Hashable, call: Callable[[], T], ends: float, about: str = ""
    ) -> tuple[Call[T], bool]:
        """The call in flight for ``key``, and whether this caller started it
        (then ``call`` runs, in a thread of its own); ``ends``: the caller's
        deadline, as time.monotonic() will read it."""
        with self._lock:
            running = self._calls.get(key)
            if running is not None and time.monotonic() < running.ends:
                return running, False
            running = self._calls[key] = Call(ends)  # an outlived call runs on, joined by no one
            running.about = about

        def run() -> None:
            try:
                running.run(call)
            finally:
                with self._lock:
                    if self._calls.get(key) is running:
                        del self._calls[key]

        try:
            # Not threading.Thread.start: it waits for the thread (the agent's rule).
            _thread.start_new_thread(run, ())
        except RuntimeError:  # no thread could start: the caller makes the call itself
            run()
        return running, True

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)
