"""The suite's own runner (tests/conftest.py): the barrier that keeps every
other test out until the serial tests have ended."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import conftest
import pytest


def test_the_barrier_opens_once_each_serial_test_wrote_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conftest, "SERIAL_WAIT_ENDS", [])
    done = tmp_path / "serial.done"
    waiter = threading.Thread(target=conftest.after_the_serial_tests, args=(done, 2))
    waiter.start()
    done.write_text("tests/test_a.py::test_one\n")
    waiter.join(0.5)
    assert waiter.is_alive()  # one of two: still waiting
    with done.open("a") as more:
        more.write("tests/test_a.py::test_two\n")
    waiter.join(30)
    assert not waiter.is_alive()


def test_a_serial_test_lost_with_its_worker_holds_the_others_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its line never comes: the worker waits out one deadline, and the
    tests after the first no longer wait (each waited its own before)."""
    monkeypatch.setattr(conftest, "SERIAL_WAIT_ENDS", [])
    monkeypatch.setattr(conftest, "SERIAL_WAIT_SECONDS", 0.2)
    done = tmp_path / "serial.done"
    done.write_text("tests/test_a.py::test_one\n")
    conftest.after_the_serial_tests(done, 2)
    (ends,) = conftest.SERIAL_WAIT_ENDS
    assert time.monotonic() >= ends
    monkeypatch.setattr(conftest, "SERIAL_WAIT_SECONDS", 3600)  # a fresh wait would never end here
    for _ in range(3):
        conftest.after_the_serial_tests(done, 2)
    assert [ends] == conftest.SERIAL_WAIT_ENDS
