"""The fetch request from Nomad's environment: identity and job options.

Nomad builds the plugin's environment from scratch: ``CPI_OPERATION``, every
key of the job's ``env {}`` block, then ``NOMAD_JOB_ID`` and
``NOMAD_NAMESPACE``, which Nomad sets last so a job cannot forge them (since
1.11.1). Everything else in it was written by the job author, so it is read
through an allowlist: a key that is not a documented job option is an error
naming it (a typo is seen, and ``AWS_ACCESS_KEY_ID`` or ``VAULT_ADDR`` is
refused, not silently used). Other ``NOMAD_*`` keys are ignored, so that a
future Nomad adding one does not break every fetch, and so is the
``LC_CTYPE`` that Python itself sets when it starts in an empty environment
(PEP 538 locale coercion).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from nomad_secrets.process.errors import RequestError

# Documented job options (docs/configuration.md, "Job options").
JOB_OPTIONS = ("AWS_REGION", "NOMAD_WORKLOAD_TOKEN")
# What CPython writes into its own environ at start (PEP 538).
_COERCED_LOCALES = ("C.UTF-8", "C.utf8", "UTF-8")
# The longest region names today are 14 characters; botocore refuses over 63.
_REGION = re.compile(r"(?=.{1,32}\Z)[a-z]{2,4}(-[a-z]+)+-[0-9]{1,2}\Z")


@dataclass(frozen=True)
class Identity:
    """Who is asking, as Nomad (not the job) says: None when Nomad is older."""

    namespace: str | None
    job_id: str | None


@dataclass(frozen=True)
class JobOptions:
    region: str | None = None
    # The job's Nomad workload identity (a JWT), for stores that log in
    # with it: the store checks its signature, so it cannot be forged here.
    workload_token: str | None = None

    def __repr__(self) -> str:  # never print the token
        return (
            f"JobOptions(region={self.region!r}, workload_token={'<set>' if self.workload_token else None})"
        )


def _ignored(key: str, value: str) -> bool:
    return (
        key == "CPI_OPERATION"
        or key.startswith("NOMAD_")
        or (key == "LC_CTYPE" and value in _COERCED_LOCALES)
    )


def parse_environment(environ: Mapping[str, str]) -> tuple[Identity, JobOptions]:
    unknown = sorted(
        key for key, value in environ.items() if key not in JOB_OPTIONS and not _ignored(key, value)
    )
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RequestError(
            f"the secret block's env sets {shown}, which this plugin does not read;"
            f" job options are {', '.join(JOB_OPTIONS)} (credentials, endpoints and"
            " trust come from the operator's config)"
        )
    region = environ.get("AWS_REGION")
    if region is not None and not _REGION.match(region):
        raise RequestError(
            f"the secret block's env sets AWS_REGION={region[:64]!r}, which is not an AWS region name:"
            " set it to one, such as us-east-2, or remove it to read in the operator's region"
        )
    identity = Identity(
        namespace=environ.get("NOMAD_NAMESPACE") or None,
        job_id=environ.get("NOMAD_JOB_ID") or None,
    )
    return identity, JobOptions(region=region, workload_token=environ.get("NOMAD_WORKLOAD_TOKEN") or None)
