"""From what a store returned to the flat ``{str: str}`` map Nomad needs.

Rules (docs/references.md, "Result keys"):

- text that is a JSON object gives one key per top-level field; any other
  text gives one key, ``value``;
- bytes (a Secrets Manager SecretBinary) give ``value_base64``;
- a mapping (a Vault ``data`` map, an SSM path) gives one key per entry;
- a ``#field`` or ``#/json/pointer`` selector picks one part first: a
  scalar gives ``value``, an object gives its fields;
- field values: strings as they are, numbers and booleans as JSON text,
  objects and arrays as compact JSON, null as the empty string;
- in a path of several ``NAME = reference`` lines, ``value`` becomes NAME,
  ``value_base64`` becomes ``NAME_base64`` and a field becomes
  ``NAME_field``;
- two references that give the same key are an error, never an overwrite.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Union

from nomad_secrets.core.reference import Reference
from nomad_secrets.process.errors import InvalidSecret, RequestError

# RFC 6901 array index: ASCII digits, no leading zero (Arabic-Indic and
# superscript digits pass str.isdigit, and int() of a superscript raises).
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")

# What a backend hands back: text, binary, or an already structured map.
Raw = Union[str, bytes, Mapping[str, object]]


def shape(ref: Reference, raw: Raw, store: str) -> dict[str, str]:
    """The keys and values one reference contributes to the result."""
    if isinstance(raw, bytes):
        if ref.selector is not None:
            raise InvalidSecret(
                ref.text, store, "the secret is binary, so a #selector cannot apply", "drop the #selector"
            )
        key = "value_base64" if ref.name is None else f"{ref.name}_base64"
        return {key: base64.b64encode(raw).decode("ascii")}
    value: object = raw
    if isinstance(raw, str):
        value = _as_object(raw)
    if ref.selector is not None:
        value = select(ref, value, store)
    if isinstance(value, Mapping):
        prefix = "" if ref.name is None else f"{ref.name}_"
        return {f"{prefix}{k}": to_text(v) for k, v in value.items()}
    return {ref.name or "value": to_text(value)}


def merge(parts: list[tuple[Reference, dict[str, str]]]) -> dict[str, str]:
    result: dict[str, str] = {}
    owner: dict[str, Reference] = {}
    for ref, values in parts:
        for key, value in values.items():
            if key in result:
                raise RequestError(
                    f"the references {owner[key].text!r} and {ref.text!r} both give the key"
                    f" {key!r}; give them different NAMEs or select fields with #"
                )
            result[key] = value
            owner[key] = ref
    return result


def to_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def select(ref: Reference, value: object, store: str) -> object:
    """Apply ``#field`` or ``#/json/pointer`` (RFC 6901) to ``value``."""
    selector = ref.selector or ""
    if not selector.startswith("/"):
        steps = [selector]
    else:
        steps = [s.replace("~1", "/").replace("~0", "~") for s in selector[1:].split("/")]
    for step in steps:
        if isinstance(value, Mapping) and step in value:
            value = value[step]
        elif isinstance(value, list) and _ARRAY_INDEX.fullmatch(step) and int(step) < len(value):
            value = value[int(step)]
        else:
            raise InvalidSecret(
                ref.text,
                store,
                f"the secret has no field {step!r} for #{selector}",
                "check the field name; the secret's keys are not shown here, to keep values out of logs",
            )
    return value


def _as_object(text: str) -> object:
    """JSON object text becomes a dict; anything else stays text."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # too deep to be fields: keep the text
        return text
    return parsed if isinstance(parsed, dict) else text
