"""What Secrets Manager and SSM share: one botocore client, one error map.

botocore alone (not boto3): the plugin needs two API calls, and boto3's
resource layer only adds import time.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from nomad_secrets.core.config import AwsSettings, Provider
from nomad_secrets.core.reference import MAX_REFERENCES
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.process import errors
from nomad_secrets.process.deadline import Deadline
from nomad_secrets.process.errors import ConfigError, PluginError, RequestError, StoreError

# What IAM allows in a role's name and a session's (ASCII: \w would let
# other scripts' letters through).
_IAM_NAME_CHARS = "A-Za-z0-9_+=,.@-"
_ROLE_NAME = re.compile(f"[{_IAM_NAME_CHARS}]+")
CONNECT_TIMEOUT = 3.0  # a dead endpoint should not eat the whole deadline
_THROTTLED = {"ThrottlingException", "TooManyRequestsException", "Throttling", "RequestLimitExceeded"}
_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
}


class AwsStore:
    """A store read through one botocore client, made in the main thread."""

    label = ""
    service = ""  # botocore's name: "secretsmanager", "ssm"

    def __init__(
        self,
        settings: AwsSettings,
        options: JobOptions,
        deadline: Deadline,
        identity: Identity,
        provider: Provider | None = None,
    ) -> None:
        self.client = make_client(self.service, settings, options, deadline, identity, provider)
        # For messages: where a read looked, and who chose that region.
        self.region = str(self.client.meta.region_name)
        self.region_source = "the job's AWS_REGION" if options.region else "aws.region in the config"

    def close(self) -> None:
        """Nothing to give back: AWS keeps no session for a client."""

    def store_error(self, exc: Exception, reference: str, *, action: str, resource: str) -> PluginError:
        return store_error(
            exc,
            reference,
            self.label,
            action=action,
            resource=resource,
            region=self.region,
            region_source=self.region_source,
        )


class NoRegion(RequestError):
    """Neither the job (AWS_REGION) nor the config (aws.region) names a
    region: the server, which has no job, says it its own way."""


def region_for(settings: AwsSettings, options: JobOptions) -> str | None:
    if options.region is not None:
        if not settings.job_region:
            raise RequestError(
                "this node's operator pins the AWS region (aws.job_region = false);"
                " remove AWS_REGION from the secret block's env"
            )
        return options.region
    return settings.region


def make_client(
    service: str,
    settings: AwsSettings,
    options: JobOptions,
    deadline: Deadline,
    identity: Identity,
    provider: Provider | None = None,
) -> Any:
    """A botocore client for ``service``; ``provider``, when the settings are
    a provider's, names its section in a message about its keys."""
    import botocore.config
    import botocore.exceptions
    import botocore.session

    from nomad_secrets._version import __version__
    from nomad_secrets.stores.aws.http import bound_answers

    region = region_for(settings, options)
    config = botocore.config.Config(
        region_name=region,
        connect_timeout=min(CONNECT_TIMEOUT, deadline.call_timeout()),
        read_timeout=deadline.call_timeout(),
        retries={"mode": "standard", "total_max_attempts": 4},  # 3 retries, backoff with jitter
        # Every reference's thread keeps its connection (as the Vault pool
        # does), and so does every request of the server, which shares one
        # client (botocore's default, 10, drops the rest after each call).
        max_pool_connections=MAX_REFERENCES,
        user_agent_extra=f"nomad-secrets/{__version__}",
    )
    session = botocore.session.Session()
    credentials: dict[str, str] = {}
    if settings.web_identity_role_arn:
        credentials = _web_identity(session, config, settings, options, identity, deadline, provider)
    elif settings.access_key_id or settings.secret_access_key:
        if not (settings.access_key_id and settings.secret_access_key):
            raise ConfigError("aws.access_key_id and aws.secret_access_key go together; set both or neither")
        credentials = {
            "aws_access_key_id": settings.access_key_id,
            "aws_secret_access_key": settings.secret_access_key,
        }
        if settings.session_token:
            credentials["aws_session_token"] = settings.session_token
    try:
        client = session.create_client(
            service, config=config, endpoint_url=_endpoint(settings, service, provider), **credentials
        )
    except botocore.exceptions.NoRegionError:
        raise NoRegion(
            "no AWS region: set AWS_REGION in the secret block's env, or aws.region in the config"
        ) from None
    except botocore.exceptions.InvalidRegionError:
        raise RequestError(f"the AWS region {region!r} is not a region name (such as us-east-2)") from None
    bound_answers(client)
    return client


def _endpoint(settings: AwsSettings, service: str, provider: Provider | None) -> str | None:
    """The endpoint for ``service``, checked before botocore sees it: botocore
    raises ValueError on some bad URLs (an unclosed [, a port past 65535) and
    sends to others (ftp://) only to fail there."""
    key = f"endpoint_urls.{service}" if service in settings.endpoint_urls else "endpoint_url"
    url = settings.endpoint_urls.get(service, settings.endpoint_url)
    problem = None if url is None else _endpoint_problem(url)
    if problem is None:
        return url
    section = "aws"
    if provider is not None and key.split(".")[0] in provider.own_keys:
        section = f"providers.{provider.name}"
    # The value is not repeated: the job author sees this message, and a URL may hold a password.
    raise ConfigError(
        f"{section}.{key} in the config {problem}; write https:// or http://, a host name or"
        " address (IPv6 in [ ]) and, if needed, a port and a path, such as"
        f" https://{service}.us-east-2.amazonaws.com or http://127.0.0.1:4566"
    )


def _endpoint_problem(url: str) -> str | None:
    from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url

    try:
        parts = urlsplit(url)
    except ValueError:  # a [ without its ], or no IPv6 address inside [ ]
        return "is not a URL (check the [ ] around an IPv6 address)"
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if parts.scheme not in ("http", "https"):
        return "must start with https:// or http://"
    if port == 0:
        return "has a port that is not a number from 1 to 65535"
    if parts.query or parts.fragment:
        return "has a query (?) or a fragment (#)"
    if not (is_valid_endpoint_url(url) or is_valid_ipv6_endpoint_url(url)):
        return "has no host name or address that botocore accepts"
    return None


def _web_identity(
    session: Any,
    config: Any,
    settings: AwsSettings,
    options: JobOptions,
    identity: Identity,
    deadline: Deadline,
    provider: Provider | None,
) -> dict[str, str]:
    """Credentials for the job's own role, from its workload identity token.

    The token's claims were checked against Nomad's identity before this
    (fetch.py); STS verifies its signature against the IAM OIDC provider.
    This call runs before the reads, in the calling thread, where nothing
    else bounds it: one attempt, within what is left of the deadline.
    """
    import botocore
    import botocore.exceptions

    from nomad_secrets.stores.aws.http import bound_answers

    if not options.workload_token or identity.namespace is None or identity.job_id is None:
        raise RequestError(
            "this node reads AWS with the job's workload identity: add an identity block"
            ' (env = true) and NOMAD_WORKLOAD_TOKEN = "${NOMAD_TOKEN_<identity name>}" to'
            " the secret block's env"
        )
    template = settings.web_identity_role_arn or ""
    for placeholder, value in (("namespace", identity.namespace), ("job", identity.job_id)):
        if "{" + placeholder + "}" in template and not _ROLE_NAME.fullmatch(value):
            # A '/' would end the role's name there: job "x/ns2@db" would
            # ask for role "ns2@db", another namespace's, which only the
            # role's trust policy would still refuse.
            raise RequestError(
                f"the {placeholder} {value!r} cannot fill {{{placeholder}}} in aws.web_identity_role_arn:"
                " an IAM role's name holds only letters, digits and _+=,.@- (no '/');"
                f" rename the {placeholder}, or read this secret through a provider without"
                " web_identity_role_arn (docs/policy.md)"
            )
    role_arn = template.replace("{namespace}", identity.namespace).replace("{job}", identity.job_id)
    session_name = re.sub(f"[^{_IAM_NAME_CHARS}]", "-", f"nomad-{identity.namespace}-{identity.job_id}")[:64]
    # AssumeRoleWithWebIdentity is unsigned: the token is the credential.
    left = deadline.call_timeout()
    unsigned = config.merge(
        botocore.config.Config(
            signature_version=botocore.UNSIGNED,
            connect_timeout=min(CONNECT_TIMEOUT, left),
            read_timeout=left,
            retries={"mode": "standard", "total_max_attempts": 1},
        )
    )
    sts = session.create_client("sts", config=unsigned, endpoint_url=_endpoint(settings, "sts", provider))
    bound_answers(sts)
    try:
        answer = sts.assume_role_with_web_identity(
            RoleArn=role_arn, RoleSessionName=session_name, WebIdentityToken=options.workload_token
        )
    except aws_errors() as exc:
        raise store_error(
            exc,
            "NOMAD_WORKLOAD_TOKEN",
            "AWS STS",
            action="sts:AssumeRoleWithWebIdentity (a trust policy for Nomad's OIDC issuer)",
            resource=f"role {role_arn!r}",
        ) from None
    creds = answer["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def not_an_aws_answer(reference: str, label: str) -> StoreError:
    """A success without the fields AWS always sends: not AWS answering."""
    return StoreError(
        reference,
        label,
        "the endpoint's answer is not an AWS answer (an error page?)",
        "check aws.endpoint_url and any proxy in between",
    )


def aws_errors() -> tuple[type[Exception], ...]:
    """What a botocore call raises: its own tree, and the response parser's
    errors, which sit outside it: ResponseParserError (an HTML error page
    where XML was due), and UnicodeDecodeError (the JSON parser decodes the
    body as UTF-8 before anything else: a binary answer)."""
    import botocore.exceptions
    import botocore.parsers

    return (
        botocore.exceptions.ClientError,
        botocore.exceptions.BotoCoreError,
        botocore.parsers.ResponseParserError,
        UnicodeDecodeError,
    )


def known_regions() -> set[str]:
    """Every region of every partition in botocore's endpoint data."""
    import botocore.loaders

    data = botocore.loaders.create_loader().load_data("endpoints")
    return {region for partition in data["partitions"] for region in partition["regions"]}


def store_error(
    exc: Exception,
    reference: str,
    label: str,
    *,
    action: str,
    resource: str,
    region: str | None = None,
    region_source: str = "",
) -> PluginError:
    """Map a botocore exception to the message a job author can act on.

    AWS's own error message is kept (cut short): for a denial it names the
    principal and the missing permission, which is what the operator needs.
    Secret values never appear in AWS error messages.

    A region AWS does not have fails in no helpful way: AWS's own endpoint
    name for it does not resolve (botocore: cannot connect), and a local or
    proxy endpoint answers what it likes (moto: HTTP 500). So any failure in
    a region botocore does not know is reported as that region's mistake.
    """
    import botocore
    import botocore.exceptions as bx
    import botocore.parsers

    from nomad_secrets.stores.aws.http import AnswerTooLarge

    if region and region not in known_regions():
        fix = (
            "set AWS_REGION in the secret block's env to an AWS region, such as us-east-2"
            if region_source.startswith("the job")
            else "set aws.region in the operator's config to an AWS region, such as us-east-2"
        )
        return RequestError(
            f"{reference!r} ({label}): {region!r} ({region_source}) is not an AWS region"
            f" (botocore {botocore.__version__} knows every region up to its release); {fix}"
        )
    where = f" in {region}" if region else ""
    if isinstance(exc, (botocore.parsers.ResponseParserError, UnicodeDecodeError)):
        return not_an_aws_answer(reference, label)
    if isinstance(exc, AnswerTooLarge):
        return StoreError(
            reference,
            label,
            f"the endpoint's answer is larger than {exc.kwargs['limit']} bytes, more than any AWS answer",
            "check aws.endpoint_url and any proxy in between",
        )
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = str(exc.response.get("Error", {}).get("Message", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if message.startswith("<"):  # an XML error body where JSON was due (proxies, moto)
            inner = re.search(r"<Code>([^<]*)</Code>.*?<Message>([^<]*)</Message>", message, re.S)
            code, message = inner.groups() if inner else (code, "")
        message = message[:300]
        said = f"AWS said {code}" + (f": {message}" if message else "")
        if code in ("ResourceNotFoundException", "ParameterNotFound", "ParameterVersionNotFound"):
            region_said = f", and the region ({region}: {region_source})" if region else " and the region"
            return errors.NotFound(
                reference, label, f"not found{where} ({said})", f"check the name of {resource}{region_said}"
            )
        if code in _DENIED or status == 403:
            return errors.AccessDenied(
                reference,
                label,
                f"access denied ({said})",
                f"the node's AWS identity needs {action} on {resource}",
            )
        if code in ("DecryptionFailure", "KMSAccessDeniedException"):
            return errors.AccessDenied(
                reference,
                label,
                f"cannot decrypt ({said})",
                f"the node's AWS identity needs kms:Decrypt on the key of {resource}",
            )
        if code in _THROTTLED or status == 429:
            return errors.Throttled(
                reference, label, f"throttled ({said})", "retry later, or fetch fewer secrets at once"
            )
        if isinstance(status, int) and status >= 500:  # the service, or whatever stands in front of it
            return StoreError(  # the endpoint answered: the store's side is broken, not the network
                reference,
                label,
                f"the endpoint failed with HTTP {status} ({said})",
                "retry; if it lasts, check aws.endpoint_url and any proxy in between",
            )
        return StoreError(reference, label, f"failed ({said})", "check the reference and its options")
    if isinstance(exc, bx.ParamValidationError):  # botocore checks names and options first
        return StoreError(
            reference,
            label,
            "the name or an option is not one AWS accepts (botocore refused to send it)",
            f"check {resource} and the reference's options",
        )
    if isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return errors.TimedOut(
            reference, label, "no answer in time", "check the endpoint is reachable from the node"
        )
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return errors.AccessDenied(
            reference,
            label,
            "no AWS credentials on this node",
            "the operator sets them in the config or the node's instance profile",
        )
    if isinstance(
        exc, (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ProxyConnectionError, bx.SSLError)
    ):
        return errors.Unreachable(
            reference, label, "cannot reach the AWS endpoint", "check aws.endpoint_url and the node's network"
        )
    return StoreError(reference, label, f"failed ({type(exc).__name__})", "see the operator's debug log")
