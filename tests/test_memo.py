"""The node agent's memory cache on its own (agent/memo.py): the bound in
bytes evicts least recently used, an entry is fresh, then only stale, then
gone, and the process that keeps values is made undumpable."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ROOT

from nomad_secrets.agent.memo import Memo


def test_the_bound_evicts_the_least_recently_used() -> None:
    memo = Memo()
    for name in "ab":
        assert memo.put("p", name, name * 300, 60, 0, 1000) == 0
    assert memo.get("p", "a") == ("a" * 300, True)  # a is now the most recent
    assert memo.put("p", "c", "c" * 300, 60, 0, 1000) == 1
    assert memo.get("p", "b") is None and memo.get("p", "a") is not None
    assert memo.put("p", "huge", "x" * 2000, 60, 0, 1000) == 0  # larger than the bound: not kept
    assert memo.get("p", "huge") is None
    assert memo.put("other", "b", "b" * 300, 60, 0, 1000) == 0  # each provider its own bound
    assert len(memo) == 3


def test_fresh_then_stale_then_gone() -> None:
    memo = Memo()
    memo.put("p", "k", "v", 0.05, 0.2, 1 << 20)
    assert memo.get("p", "k") == ("v", True)
    while (kept := memo.get("p", "k")) == ("v", True):
        time.sleep(0.01)
    assert kept == ("v", False)  # past its seconds: only to stand in for a failing store
    while memo.get("p", "k") is not None:
        time.sleep(0.01)
    assert len(memo) == 0  # dropped once past its stale time
    memo.put("p", "k", "v", 60, 0, 1 << 20)
    memo.drop("p", "k")
    assert memo.get("p", "k") is None
    memo.put("p", "k", "v", 60, 0, 1 << 20)
    assert memo.clear() == 1 and memo.get("p", "k") is None


@pytest.mark.process
def test_the_agent_that_keeps_values_is_undumpable() -> None:
    """prctl(PR_GET_DUMPABLE) says 0 once undumpable() ran: no core dump,
    no ptrace by another user."""
    script = (
        "import ctypes; from nomad_secrets.agent.memo import undumpable;"
        " get = lambda: ctypes.CDLL(None).prctl(3, 0, 0, 0, 0);"
        " before = get(); print(before, undumpable(), get())"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["1", "True", "0"], out


def test_kept_until_is_the_last_stale_end() -> None:
    memo = Memo()
    assert memo.kept_until() == 0.0
    before = time.monotonic()
    memo.put("p", "a", "v", 1, 10, 1 << 20)
    memo.put("q", "b", "v", 1, 100, 1 << 20)
    assert before + 101 <= memo.kept_until() <= time.monotonic() + 101
    memo.clear()
    assert memo.kept_until() == 0.0
