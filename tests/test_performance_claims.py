"""Every performance claim about the CI server is one number of one run:
docs/performance.md's latest table gives it, in a row whose label is the
one scripts/bench prints for it, and docs/ci.md and CHANGELOG.md quote that
row and nothing else (issue 25: they said 1.32x where the table said 1.19x
for the same measurement)."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

from conftest import ROOT

DOCS = ROOT / "docs"
NUMBER = re.compile(r"\d+\.\d+")


def bench() -> ModuleType:
    name = "nomad_secrets_bench"
    if name not in sys.modules:  # its dataclasses look their module up there
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "bench.py")
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def doors_rows() -> dict[str, tuple[str, str]]:
    """The table's CI server rows: label -> (measured, budget)."""
    rows = {}
    for line in (DOCS / "performance.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("CI server:"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def quotable() -> set[str]:
    return {n for measured, budget in doors_rows().values() for n in NUMBER.findall(measured + " " + budget)}


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def test_the_table_has_a_row_for_each_ratio_the_bench_prints_for_the_doors() -> None:
    rows = doors_rows()
    ratios = bench().DOORS_RATIOS
    assert set(rows) == set(ratios)
    assert {label for label in rows if "Drone" in label} and {
        label for label in rows if "Woodpecker" in label
    }
    for label, (_, budget) in ratios.items():
        assert rows[label][1] == budget


def test_the_ci_guide_quotes_the_table_and_nothing_else() -> None:
    text = (DOCS / "ci.md").read_text()
    performance = section(text, "## Performance")
    claims = NUMBER.findall(performance)
    assert claims and set(claims) <= quotable()
    # Nowhere else does the guide speak of latencies or rates.
    elsewhere = text.replace(performance, "")
    assert not re.search(r"\bp(50|99)\b|requests/s|req/s|\d\s*x the|\d+(\.\d+)?x\b", elsewhere)


def test_the_changelog_quotes_the_table() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    entries = re.split(r"\n\s*- ", section(text, "## [Unreleased]"))
    about_load = [entry for entry in entries if "server-load" in entry or "p50" in entry]
    claims = [n for entry in about_load for n in NUMBER.findall(entry)]
    assert claims and set(claims) <= quotable()
