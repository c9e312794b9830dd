"""The stores a reference can name, as the configuration knows them.

Each row says what ``core`` needs of a store: its scheme (``aws-sm:`` in a
reference, ``store = "aws-sm"`` in ``[providers.NAME]``), its label in
messages, and the config section whose settings it reads (``[aws]`` or
``[vault]``; ``config.model.SECTIONS`` has the settings class of each).
What opens a store, warms it and probes it is ``stores/registry.py``, keyed
by the same schemes: it refuses to load when the two tables disagree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scheme:
    name: str  # in a reference and in `store = ...`
    label: str  # the store's own name, in messages
    section: str  # the config section of its settings


DECLARED = (
    Scheme("aws-sm", "AWS Secrets Manager", section="aws"),
    Scheme("aws-ssm", "AWS SSM Parameter Store", section="aws"),
    Scheme("vault", "Vault", section="vault"),
)
BY_NAME = {scheme.name: scheme for scheme in DECLARED}
SCHEMES = tuple(BY_NAME)
LABELS = {scheme.name: scheme.label for scheme in DECLARED}


def section_of(store: str) -> str:
    """The config section of a known store's settings (KeyError otherwise:
    the config parser and the reference grammar admit only known ones)."""
    return BY_NAME[store].section
