"""Result shaping rules, and a property: any secret gives a str->str map or
a clean error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomad_secrets.core.reference import parse_path, parse_reference
from nomad_secrets.core.shape import merge, shape
from nomad_secrets.process.errors import InvalidSecret, PluginError, RequestError

STORE = "test store"


def one(text: str, raw: Any) -> dict[str, str]:
    return shape(parse_reference(text), raw, STORE)


def test_json_object_gives_fields_with_documented_conversions() -> None:
    raw = json.dumps({"s": "x", "n": 1.5, "i": 3, "t": True, "z": None, "o": {"a": [1, 2]}, "l": ["a"]})
    assert one("x", raw) == {
        "s": "x",
        "n": "1.5",
        "i": "3",
        "t": "true",
        "z": "",
        "o": '{"a":[1,2]}',
        "l": '["a"]',
    }


@pytest.mark.parametrize("raw", ["text", "[1, 2]", "42", "{not json", '"quoted"', ""])
def test_anything_else_is_value(raw: str) -> None:
    assert one("x", raw) == {"value": raw}


def test_binary_is_base64() -> None:
    assert one("x", b"\x00\xff") == {"value_base64": "AP8="}


def test_selectors() -> None:
    raw = json.dumps({"a": {"b/c": {"d": 1}, "list": ["x", "y"]}, "top": "t", "~": "tilde"})
    assert one("x#top", raw) == {"value": "t"}
    assert one("x#/a/b~1c", raw) == {"d": "1"}
    assert one("x#/a/list/1", raw) == {"value": "y"}
    assert one("x#/~0", raw) == {"value": "tilde"}
    with pytest.raises(PluginError, match="no field 'missing'"):
        one("x#missing", raw)


def test_named_references_prefix_fields() -> None:
    refs = parse_path("db = a\ntoken = b\nbin = c\n")
    parts = [
        (refs[0], shape(refs[0], '{"user": "u", "value": "v"}', STORE)),
        (refs[1], shape(refs[1], "tok", STORE)),
        (refs[2], shape(refs[2], b"\x01", STORE)),
    ]
    assert merge(parts) == {"db_user": "u", "db_value": "v", "token": "tok", "bin_base64": "AQ=="}


def test_colliding_keys_are_an_error() -> None:
    refs = parse_path("db = a\ndb_user = b\n")
    parts = [(refs[0], shape(refs[0], '{"user": "u"}', STORE)), (refs[1], shape(refs[1], "x", STORE))]
    with pytest.raises(RequestError, match="both give the key 'db_user'"):
        merge(parts)


def test_deeply_nested_json_does_not_crash() -> None:
    raw = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
    assert one("x", raw) == {"value": raw}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


# JSON pointer steps, digits of every script among them (Arabic-Indic, superscript, "01").
pointer_steps = st.one_of(
    st.text(max_size=4),
    st.characters(categories=["Nd", "No"]).map(str),
    st.integers(0, 3).map(str),
    st.just("01"),
)
selectors = st.one_of(
    st.none(),
    st.text(min_size=1, max_size=10),
    st.lists(pointer_steps, min_size=1, max_size=3).map(lambda steps: "/" + "/".join(steps)),
)


@given(raw=st.one_of(st.text(), st.binary(), json_values.map(json.dumps)), selector=selectors)
def test_any_secret_gives_strings_or_a_clean_error(raw: Any, selector: str | None) -> None:
    text = "x" if selector is None else "x#" + selector
    try:
        ref = parse_reference(text)
        result = shape(ref, raw, STORE)
    except PluginError as exc:
        assert exc.message
        return
    # Any other exception fails here: the executable would call it an internal error.
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


@pytest.mark.parametrize("step", ["\u0661", "\u00b2", "01", "-1", "1e0"])
def test_array_indexes_are_ascii_digits_only(step: str) -> None:
    """Arabic-Indic one and superscript two are digits to str.isdigit, and
    int() of the superscript raised ValueError,
    which the executable answered as an internal error."""
    ref = parse_reference(f"x#/arr/{step}")
    with pytest.raises(InvalidSecret, match="no field"):
        shape(ref, json.dumps({"arr": ["a", "b"]}), STORE)
    assert shape(parse_reference("x#/arr/1"), json.dumps({"arr": ["a", "b"]}), STORE) == {"value": "b"}
