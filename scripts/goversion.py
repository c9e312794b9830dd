"""Map a PEP 440 version to a string that hashicorp/go-version orders alike.

Nomad reads the fingerprint's ``version`` with go-version, which rejects PEP
440 spellings such as ``1.0.0.post1`` or ``1.0.0.dev3+g1a2b``. The mapping:

====================  ========================  =============================
PEP 440               go-version                why
====================  ========================  =============================
``1.2``               ``1.2.0``                 release padded to 3 segments
``1.2.0a1``           ``1.2.0-alpha.1``         alpha < beta < rc, lexically
``1.2.0b2``           ``1.2.0-beta.2``
``1.2.0rc1``          ``1.2.0-rc.1``
``1.2.0rc1.dev4``     ``1.2.0-rc.1.dev.4``      a missing part sorts after an
                                                alphabetic one in go-version
``1.2.0.dev4``        ``1.2.0-0.dev.4``         a numeric part sorts before
                                                ``alpha``: before every pre
``1.2.0.post3``       ``1.2.0.3``               a 4th segment: above the final
``1.2.0.post3.dev1``  ``1.2.0.3-0.dev.1``
``1.2.0+g1a2b.dirty``  ``1.2.0+g1a2b.dirty``    local label as build metadata
====================  ========================  =============================

go-version ignores build metadata when ordering (as SemVer does), so two
versions that differ only in their local label compare equal there.

Some PEP 440 versions have no faithful image and are refused, each with the
reason: an epoch, a release of more than 3 components, ``.post0`` (its 4th
segment 0 would equal the final), and a post-release of a pre-release (PEP
440 itself discourages it; go-version's rule for a missing prerelease part
cannot put it between ``rc1`` and ``rc2.dev0``).

Build-time only: the executable carries the mapped string, so fingerprint
never imports ``packaging``.
"""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

_PRE_NAMES = {"a": "alpha", "b": "beta", "rc": "rc"}
_GO_INT_MAX = 2**63 - 1  # go-version parses segments as int64


class UnmappableVersion(ValueError):
    """A valid PEP 440 version that go-version cannot order faithfully."""


def to_go_version(pep440: str) -> str:
    """Return the go-version spelling of ``pep440`` (see the module table)."""
    try:
        v = Version(pep440)
    except InvalidVersion as exc:
        raise UnmappableVersion(f"{pep440!r} is not a PEP 440 version") from exc
    if v.epoch:
        raise UnmappableVersion(f"{pep440!r}: epochs have no go-version form")
    release = list(v.release)
    while len(release) > 3 and release[-1] == 0:
        release.pop()
    if len(release) > 3:
        raise UnmappableVersion(f"{pep440!r}: at most 3 release components (the 4th carries .postN)")
    release += [0] * (3 - len(release))
    segments = list(release)
    if v.post is not None:
        if v.pre is not None:
            raise UnmappableVersion(
                f"{pep440!r}: a post-release of a pre-release cannot be ordered"
                " by go-version; release the next pre-release instead"
            )
        if v.post == 0:
            raise UnmappableVersion(f"{pep440!r}: use .post1, .post0 would equal the final")
        segments.append(v.post)
    numbers = [*segments, *(v.pre[1:] if v.pre else ()), v.dev or 0]
    if any(n > _GO_INT_MAX for n in numbers):
        raise UnmappableVersion(f"{pep440!r}: a number exceeds go-version's int64")

    prerelease: list[str] = []
    if v.pre is not None:
        prerelease += [_PRE_NAMES[v.pre[0]], str(v.pre[1])]
    if v.dev is not None:
        prerelease += ["dev", str(v.dev)] if v.pre is not None else ["0", "dev", str(v.dev)]

    text = ".".join(str(s) for s in segments)
    if prerelease:
        text += "-" + ".".join(prerelease)
    if v.local is not None:
        text += "+" + v.local
    return text
