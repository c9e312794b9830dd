"""The stores a reference can name, as the configuration knows them.

Each row says what ``core`` needs of a store: its scheme (``aws-sm:`` in a
reference, ``store = "aws-sm"`` in ``[providers.NAME]``), its label in
messages, and the config section whose settings it reads (``[aws]`` or
``[vault]``; ``config.model.SECTIONS`` has the settings class of each).
What opens a store, warms it and probes it is ``stores/registry.py``, keyed
by the same schemes: it refuses to load when the two tables disagree.
"""

from __future__ import annotations


class Scheme:
    """One row (a plain class: a dataclass costs its making at every fetch)."""

    __slots__ = ("label", "name", "section")

    def __init__(self, name: str, label: str, section: str) -> None:
        self.name = name  # in a reference and in `store = ...`
        self.label = label  # the store's own name, in messages
        self.section = section  # the config section of its settings

    def __repr__(self) -> str:
        return f"Scheme({self.name!r}, {self.label!r}, section={self.section!r})"


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
