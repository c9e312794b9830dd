"""PEP 440 -> go-version: each mapped string parses in Go's go-version, and a
list of versions sorts the same in both worlds (the ``decoder`` runs the real
hashicorp/go-version, tests/support/gocheck)."""

from __future__ import annotations

import random

import pytest
from goversion import UnmappableVersion, to_go_version
from packaging.version import Version
from support.gocheck import GoDecoder

from nomad_secrets._version import GO_VERSION, __version__

TABLE = [
    ("1.2", "1.2.0"),
    ("1.2.3", "1.2.3"),
    ("1.2.0a1", "1.2.0-alpha.1"),
    ("1.2.0b2", "1.2.0-beta.2"),
    ("1.2.0rc1", "1.2.0-rc.1"),
    ("1.2.0c1", "1.2.0-rc.1"),  # PEP 440 normalises c to rc
    ("1.2.0rc1.dev4", "1.2.0-rc.1.dev.4"),
    ("1.2.0.dev4", "1.2.0-0.dev.4"),
    ("1.2.0.post3", "1.2.0.3"),
    ("1.2.0.post3.dev1", "1.2.0.3-0.dev.1"),
    ("1.2.0+g1a2b.dirty", "1.2.0+g1a2b.dirty"),
    ("1.2.0.dev3+g1a2b", "1.2.0-0.dev.3+g1a2b"),
    ("1.2.0.0", "1.2.0"),
    ("v1.2.0", "1.2.0"),
]

# Every kind the mapping covers, around two neighbouring releases.
ORDERED = [
    "0.9.9",
    "0.9.9.post1",
    "1.0.0.dev1",
    "1.0.0.dev2",
    "1.0.0.dev10",
    "1.0.0a1.dev1",
    "1.0.0a1",
    "1.0.0a2.dev0",
    "1.0.0a2",
    "1.0.0a10",
    "1.0.0b1",
    "1.0.0rc1.dev3",
    "1.0.0rc1",
    "1.0.0rc2",
    "1.0.0",
    "1.0.0.post1.dev1",
    "1.0.0.post1",
    "1.0.0.post2",
    "1.0.0.post10",
    "1.0.1.dev0",
    "1.0.1",
    "1.1",
    "1.10.0",
    "2.0.0rc1",
    "2.0.0",
    "10.0.0",
]


@pytest.mark.parametrize(("pep440", "go"), TABLE)
def test_mapping_table(pep440: str, go: str) -> None:
    assert to_go_version(pep440) == go


@pytest.mark.parametrize(
    ("pep440", "why"),
    [
        ("1!1.0.0", "epoch"),
        ("1.0.0.1", "at most 3"),
        ("1.0.0.post0", "post1"),
        ("1.0.0rc1.post1", "pre-release"),
        ("not a version", "not a PEP 440"),
        (f"1.0.{2**63}", "int64"),
    ],
)
def test_refused_versions_say_why(pep440: str, why: str) -> None:
    with pytest.raises(UnmappableVersion, match=why):
        to_go_version(pep440)


def test_the_refusals_are_go_facts(decoder: GoDecoder) -> None:
    assert decoder.compare("1.0.0.0", "1.0.0") == 0  # so .post0 would equal the final
    assert decoder.parses(to_go_version(f"1.0.{2**63 - 1}"))
    assert not decoder.parses(f"1.0.{2**63}")  # go-version's numbers are int64


def test_package_version_is_mapped() -> None:
    assert to_go_version(__version__) == GO_VERSION


def test_every_mapped_version_parses_in_go(decoder: GoDecoder) -> None:
    mapped = [go for _, go in TABLE] + [to_go_version(v) for v in ORDERED]
    assert all(decoder.parses(v) for v in mapped), [v for v in mapped if not decoder.parses(v)]
    # and the PEP 440 spellings that motivated the mapping do not:
    assert not decoder.parses("1.0.0.post1")
    assert not decoder.parses("1.0.0.dev3+g1a2b")


def test_order_is_the_same_in_both_worlds(decoder: GoDecoder) -> None:
    assert sorted(ORDERED, key=Version) == ORDERED  # the list itself is in PEP 440 order
    shuffled = ORDERED[:]
    random.Random(7).shuffle(shuffled)
    go_of = {to_go_version(v): v for v in shuffled}
    assert len(go_of) == len(ORDERED)  # the mapping is one to one here
    go_sorted = decoder.sort_versions(list(go_of))
    assert [go_of[g] for g in go_sorted] == ORDERED


def test_pairwise_comparisons_agree(decoder: GoDecoder) -> None:
    for i, a in enumerate(ORDERED):
        for b in ORDERED[i + 1 :: 3]:
            assert decoder.compare(to_go_version(a), to_go_version(b)) == -1, (a, b)
            assert decoder.compare(to_go_version(b), to_go_version(a)) == 1, (b, a)


def test_local_labels_compare_equal_in_go_as_documented(decoder: GoDecoder) -> None:
    assert Version("1.0.0+abc") > Version("1.0.0")
    assert decoder.compare(to_go_version("1.0.0+abc"), to_go_version("1.0.0")) == 0
    assert decoder.compare(to_go_version("1.0.0+abc"), to_go_version("1.0.0.post1")) == -1
