"""``nomad-secrets check``'s look at an ``[aws]`` connection: STS
GetCallerIdentity with the settings' credentials (reads no secret), or,
with a workload identity role, what a fetch would assume."""

from __future__ import annotations

from nomad_secrets.core.config import AwsSettings, Provider, Settings
from nomad_secrets.core.policy import template_ambiguity
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import PluginError
from nomad_secrets.stores.aws.store import aws_errors, make_client, store_error
from nomad_secrets.stores.backend import Said


def probe(settings: Settings, providers: list[Provider], report: Said, seconds: float) -> None:
    if not isinstance(settings, AwsSettings):
        raise TypeError(f"AWS settings to probe, not {type(settings).__name__}")
    names = [p.name for p in providers]
    # A provider that sets its own endpoint: a message about it names its section.
    own = [p for p in providers if {"endpoint_url", "endpoint_urls"} & set(p.own_keys)]
    provider = own[0] if own else None
    where = f"region {settings.region or '(job sets AWS_REGION)'}, endpoint {settings.endpoint_url or 'AWS'}"
    used_by = f"AWS for {', '.join(names)}"
    if settings.web_identity_role_arn:
        problem = template_ambiguity(settings.web_identity_role_arn)
        if problem:
            report.warn(f"aws.web_identity_role_arn: {problem}")
        report.ok(
            f"{used_by}: {where}; reads use the job's workload identity and role"
            f" {settings.web_identity_role_arn!r} (not testable without a job's token)"
        )
        return
    credentials = "static keys from the config" if settings.access_key_id else "the node's default chain"
    try:
        # The probe's region is not a job's: with aws.region set (and pinned by
        # job_region = false), it is the config's own.
        options = JobOptions(region=None if settings.region or not settings.job_region else "us-east-1")
        sts = make_client("sts", settings, options, Deadline(seconds), Identity(None, None), provider)
        arn = sts.get_caller_identity()["Arn"]
    except PluginError as exc:
        report.problem(f"{used_by} ({where}, {credentials}): {exc.message}")
    except aws_errors() as exc:
        error = store_error(
            exc,
            "sts:GetCallerIdentity",
            "AWS STS",
            action="sts:GetCallerIdentity",
            resource="the node's identity",
            region=options.region,
            region_source="aws.region in the config",
        )
        report.problem(f"{used_by} ({where}, {credentials}): {error.message}")
    else:
        report.ok(f"{used_by}: {where}; {credentials} are {arn}")
