"""The operator's config file: lookup order, schema, provider resolution."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, aws_config, doc_block, put_secret, write_config
from support.nomad import NomadClient

from nomad_secrets.core import config
from nomad_secrets.process.errors import ConfigError, PolicyDenied


def test_no_file_means_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(tmp_path / "absent.toml"))
    loaded = config.load(str(tmp_path / "aws"))
    assert loaded.path is None
    assert loaded.provider("aws").store == "aws-sm"
    assert loaded.provider("aws-ssm").store == "aws-ssm"
    assert loaded.plugin.deadline_seconds == 8.0


def test_file_beside_the_executable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "etc.toml"
    system.write_text("[plugin]\ndeadline_seconds = 3\n")
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(system))
    assert config.load(str(tmp_path / "aws")).plugin.deadline_seconds == 3
    (tmp_path / "nomad-secrets.toml").write_text("[plugin]\ndeadline_seconds = 5\n")
    assert config.load(str(tmp_path / "aws")).plugin.deadline_seconds == 5


def test_providers_section() -> None:
    loaded = config.parse(
        b'[providers.openbao]\nstore = "vault"\n[providers.params]\nstore = "aws-ssm"\n', "f"
    )
    assert loaded.provider("openbao").store == "vault"
    assert loaded.provider("params").store == "aws-ssm"


def test_cache_settings_in_each_store_section_and_provider() -> None:
    """cache_seconds and its companions are keys of [aws] and [vault] alike,
    so a provider of either store sets them, over the top-level section's."""
    loaded = config.parse(
        b"[aws]\ncache_seconds = 30\n[vault]\nstale_if_error_seconds = 60\n"
        b'[providers.openbao]\nstore = "vault"\ncache_seconds = 5\n'
        b'[providers.params]\nstore = "aws-ssm"\ncache_max_bytes = 1024\n',
        "f",
    )
    openbao, params = loaded.provider("openbao"), loaded.provider("params")
    assert (openbao.vault.cache_seconds, openbao.vault.stale_if_error_seconds) == (5, 60)
    assert (params.aws.cache_seconds, params.aws.cache_max_bytes) == (30, 1024)
    assert loaded.provider("aws").aws.cache_max_bytes == config.DEFAULT_CACHE_BYTES


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1\n", "unknown key 'bogus' in f"),
        ("[aws]\nregion = 3\n", "aws.region in f must be a string"),
        ("[aws]\njob_region = 'yes'\n", "aws.job_region in f must be a boolean"),
        ("[plugin]\ndeadline_seconds = true\n", "must be a number"),
        ("[plugin]\ndeadline_seconds = 0\n", "between 0 and 3600"),
        ("[providers.x]\nstore = 'redis'\n", "use one of aws-sm, aws-ssm, vault"),
        ("[providers.x]\nstore = 'vault'\nextra = 1\n", "unknown key 'providers.x.extra'"),
        ("[providers.nomad]\nstore = 'vault'\n", "never runs a plugin named 'nomad'"),
        ("providers = 1\n", "providers in f must be a table"),
        ("[aws]\ncache_seconds = -1\n", "aws.cache_seconds in f must be between 0"),
        ("[vault]\nstale_if_error_seconds = 100000\n", "vault.stale_if_error_seconds in f must be between"),
        ("[providers.x]\nstore = 'vault'\ncache_max_bytes = -5\n", "providers.x.cache_max_bytes in f"),
    ],
)
def test_errors_name_the_key_and_the_file(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config.parse(text.encode(), "f")


def test_unknown_provider_says_how_to_configure_it() -> None:
    with pytest.raises(ConfigError, match=r"add \[providers.db\]"):
        config.Config().provider("db")


@pytest.fixture
def nomad_plugin_dir_with_policy(nomad: NomadClient, moto_endpoint: str) -> tuple[NomadClient, Path]:
    policy = '[[policy]]\nallow = ["aws-sm:nomad/{namespace}/{job}/**"]\n'
    return nomad, write_config(nomad.plugin_dir, aws_config(moto_endpoint, policy))


@pytest.mark.long
def test_an_empty_config_is_an_error_not_no_policy(
    nomad_plugin_dir_with_policy: tuple[NomadClient, Path],
) -> None:
    """An empty file is what a reader sees while cp or an editor rewrites it:
    taken as "no config" it switched the policy off (a reviewer got 16 of 60
    fetches through with no policy while cp rewrote the file)."""
    nomad, config = nomad_plugin_dir_with_policy
    config.write_text("")
    message = nomad.fetch("aws", "prod/db", {"AWS_REGION": "us-east-2"}).plugin_error or ""
    assert f"the config file {config} is empty" in message and "rename it into place" in message


def test_a_config_written_while_a_fetch_reads_it_is_read_whole(
    nomad_plugin_dir_with_policy: tuple[NomadClient, Path],
) -> None:
    """Truncated, then written 0.1 s later (as cp does, slowly): the fetch
    that starts in between gets the policy's answer, not no policy."""
    import threading
    import time

    nomad, config = nomad_plugin_dir_with_policy
    text = config.read_text()
    config.write_text("")

    def finish() -> None:
        time.sleep(0.1)
        config.write_text(text)

    writer = threading.Thread(target=finish)
    writer.start()
    message = nomad.fetch("aws", "prod/db", {"AWS_REGION": "us-east-2"}, job_id="web").plugin_error or ""
    writer.join()
    assert "the operator's policy does not let namespace 'default', job 'web'" in message


# --- a config caught mid-write (issue #15) -----------------------------------------------------------

PROBES = [
    (namespace, job, store, name)
    for namespace in ("default", "payments", "ops")
    for job in ("web", "billing", "backup/periodic-1")
    for store, name in (
        ("aws-sm", "nomad/default/web/db"),
        ("aws-sm", "nomad/payments/billing/key"),
        ("vault", "secret/payments/x"),
        ("aws-ssm", "/shared/x"),
    )
]
WHOLE_FILES = [
    # the reviewers': settings whose loss would grant more, then the rules.
    '[aws]\nregion = "us-east-2"\njob_region = false\n\n[providers.aws]\nstore = "aws-sm"\n'
    'web_identity_role_arn = "arn:aws:iam::1:role/nomad/{namespace}@{job}"\n\n[[policy]]\nallow = ["*:**"]\n',
    # docs/policy.md's shape: a narrow rule first, then a wide one.
    '[plugin]\ndeadline_seconds = 8\n[[policy]]\nnamespace = "payments"\njob = "billing"\n'
    'allow = ["vault:secret/payments/**"]\n\n[[policy]]\nallow = ["aws-sm:nomad/{namespace}/{job}/**"]\n',
    # the reviewer's: one rule at the very end, for one job.
    '[aws]\nregion = "us-east-2"\njob_region = false\n\n'
    '[[policy]]\njob = "billing"\nallow = ["aws-ssm:/shared/**"]\n',
    # every rule spread over lines, a list over lines.
    '[[policy]]\nnamespace = "ops"\njob = "web"\nallow = [\n  "aws-sm:nomad/**",\n  "vault:secret/**",\n]\n',
    # the natural edit of issue 24: sections appended after the rules, then one more rule.
    '[aws]\nregion = "us-east-2"\n[audit]\nsyslog = true\n[[policy]]\nnamespace = "payments"\n'
    'allow = ["vault:secret/payments/**"]\n[agent]\nauto = false\nusers = ["nomad"]\n'
    'nomad_jwks_file = "/etc/nomad-secrets/jwks.json"\nidle_exit_seconds = 600\n'
    "[plugin]\ndeadline_seconds = 30\nmax_output_bytes = 4096\n[metrics]\n"
    'file = "/var/lib/nomad-secrets/metrics/nomad-secrets.prom"\n'
    '[[policy]]\njob = "web"\nallow = ["aws-sm:**"]\n',
]


def _granted(text: str) -> tuple[set[tuple[str, str, str, str]], config.Config] | None:
    """What a config (possibly cut) lets jobs read, and the settings they
    read with; None when it is refused."""
    from nomad_secrets.core import policy

    try:
        loaded = config.parse(text.encode(), "f")
        config.require_policy(replace_path(loaded))
    except ConfigError:
        return None
    granted = set()
    for probe in PROBES:
        namespace, job, store, name = probe
        try:
            policy.check(loaded.policy, policy.nomad_caller(namespace, job), store, name, name)
        except PolicyDenied:
            continue
        granted.add(probe)
    return granted, replace_path(loaded)


def replace_path(loaded: config.Config) -> config.Config:
    from dataclasses import replace

    return replace(loaded, path="f")


@pytest.mark.parametrize("whole", WHOLE_FILES)
def test_no_cut_of_a_config_grants_more_than_the_whole_file(whole: str) -> None:
    """A read at any moment of a rewrite in place sees a prefix of the new
    file: every prefix, byte by byte, is refused or grants no more than the
    whole file (a cut before [[policy]] read as "no policy" granted all)."""
    from dataclasses import replace

    whole_read = _granted(whole)
    assert whole_read and whole_read[0]  # the whole file grants something: the check means something
    full, settings = whole_read
    for end in range(len(whole)):
        cut = _granted(whole[:end])
        if cut is None:
            continue
        assert cut[0] <= full, (whole[:end], cut[0] - full)
        # and whatever it grants is read with the whole file's settings, but
        # for the sections that may follow the rules, which a cut may lose
        trailing = {key: getattr(settings, key) for key in config.AFTER_RULES}
        assert replace(cut[1], policy=None, **trailing) == replace(settings, policy=None), whole[:end]
        for key in config.AFTER_RULES:
            _lost_at_most(getattr(cut[1], key), getattr(settings, key), whole[:end])


def _lost_at_most(cut: Any, whole: Any, text: str) -> None:
    """Each setting of a section that may follow the rules is, in a cut, the
    whole file's, left out (the default), or a number cut short: no other
    value, and no callers that the whole file does not name."""
    from dataclasses import fields

    default = type(whole)()
    for item in fields(whole):
        got, want = getattr(cut, item.name), getattr(whole, item.name)
        if got in (want, getattr(default, item.name)):
            continue
        assert isinstance(got, (int, float)) and not isinstance(got, bool), (item.name, text)
        assert str(want).startswith(str(got).removesuffix(".0")), (item.name, got, want, text)
    # agent.users kept and nomad_jwks_file lost: those callers are refused
    # (tests/test_agent.py, "agent.nomad_jwks_file is not set")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[policy]]\nallow = ["*:**"]\n[aws]\nregion = "us-east-2"\n', "[aws] comes after"),
        ('[[policy]]\nallow = ["*:**"]\n[providers.x]\nstore = "aws-sm"\n', "[providers] comes after"),
        ('[plugin]\n[[policy]]\nallow = ["*:**"]\n[audit]\nsyslog = true\n', "[audit] comes after"),
        ('[[policy]]\nallow = ["*:**"]\n[drone]\nsecret_file = "/x"\n', "[drone] comes after"),
        ('policy = [{ allow = ["*:**"] }]\n[aws]\nregion = "us-east-2"\n', "as [[policy]] tables"),
    ],
)
def test_rules_come_after_every_setting_whose_loss_grants_more(text: str, needle: str) -> None:
    """A setting after the rules would be lost first by a cut, and its loss
    can grant more (a provider's own credentials, web_identity_role_arn) or
    read unrecorded (the audit): the message names the section and the line
    of the first rule."""
    with pytest.raises(ConfigError) as caught:
        config.parse(text.encode(), "f")
    assert needle in caught.value.message
    if "comes after" in needle:
        line = 2 if text.startswith("[plugin]") else 1
        assert (
            f"the [[policy]] rules (the first is on line {line}): move it above them." in caught.value.message
        )
        assert "Only [agent], [plugin] and [metrics] may follow the rules" in caught.value.message


def test_agent_plugin_and_metrics_may_follow_the_rules() -> None:
    """Issue 24: `[agent] auto = false` appended to a file (docs/agent.md's
    step, the natural edit) made every fetch fail. A cut can lose these
    sections and nothing else: losing them grants nothing
    (test_no_cut_of_a_config_grants_more_than_the_whole_file)."""
    loaded = config.parse(
        b'[[policy]]\nallow = ["*:**"]\n[agent]\nauto = false\n[plugin]\ndeadline_seconds = 5\n'
        b'[metrics]\nfile = "/var/lib/m/n.prom"\n',
        "f",
    )
    assert loaded.agent.auto is False and loaded.plugin.deadline_seconds == 5
    assert loaded.metrics.file == "/var/lib/m/n.prom" and loaded.policy and len(loaded.policy) == 1


@pytest.mark.parametrize(
    "text",
    [
        '[aws]\nregion = "us-east-2"\n[policy]\nallow = ["*:**"]\n',
        'policy = { allow = ["*:**"] }\n[aws]\nregion = "us-east-2"\n',
    ],
)
def test_a_policy_table_in_single_brackets_names_the_brackets(text: str) -> None:
    """Last in the file, [policy] was told to go at the end of the file,
    where it was: the brackets are what is wrong."""
    with pytest.raises(ConfigError) as caught:
        config.parse(text.encode(), "f")
    assert caught.value.message == (
        "in f, policy is one table ([policy], single brackets): write each rule under [[policy]],"
        " with double brackets (TOML's array of tables: one table per rule)"
    )


def test_an_agent_section_after_the_rules_works_through_the_executable(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: object
) -> None:
    """docs/agent.md's section, appended below the rules as an operator
    would: the fetch answers, and reads by the rules."""
    put_secret(secretsmanager, "appended/db", "granted")
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    path.write_text(aws_config(moto_endpoint, DENIED_TO_WEB))  # not write_config: it adds [agent]
    with open(path, "a") as f:
        f.write(doc_block(ROOT / "docs" / "agent.md", "auto = false"))
    assert path.read_text().rstrip().endswith("[agent]\nauto = false")
    assert nomad.fetch("aws", "appended/db", job_id="billing").result == {"value": "granted"}
    denied = nomad.fetch("aws", "appended/db", job_id="web").plugin_error or ""
    assert "no rule of the operator's policy matches namespace 'default', job 'web'" in denied


def test_allow_is_written_after_namespace_and_job() -> None:
    """Cut after allow, a rule written allow-first reads as a rule for every
    job: such a rule is refused whole."""
    with pytest.raises(ConfigError, match=r"policy #1 in f: write allow last, after job, so that"):
        config.parse(b'[[policy]]\nallow = ["aws-sm:x/**"]\njob = "web"\n', "f")


def test_a_config_file_without_policy_reads_nothing(nomad: NomadClient, moto_endpoint: str) -> None:
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    path.write_text(aws_config(moto_endpoint))  # written here: write_config would add a rule
    fetched = nomad.fetch("aws", "prod/db")
    assert fetched.plugin_error == (
        f"the config file {path} has no [[policy]], so no job may read anything: add rules for who"
        " reads what (docs/policy.md); to let every job read everything this node's credentials can"
        ' read, say so with a rule: [[policy]] allow = ["*:**"]'
    )


DENIED_TO_WEB = '[[policy]]\njob = "billing"\nallow = ["aws-sm:**"]\n'


def _fetches_while(
    nomad: NomadClient,
    endpoint: str,
    name: str,
    write: Callable[[Path, bytes], None],
    count: int,
    seconds: float | None = None,
) -> tuple[Path, list[Any]]:
    """``count`` fetches by job web of a secret the whole config denies it,
    while ``write`` deploys that same config again and again (for the first
    ``seconds`` of them, if given)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    text = aws_config(endpoint, DENIED_TO_WEB).encode()
    path = write_config(nomad.plugin_dir, text.decode())
    stop = threading.Event()

    def deploy() -> None:
        until = time.monotonic() + (seconds or float("inf"))
        while not stop.is_set() and time.monotonic() < until:
            write(path, text)

    writer = threading.Thread(target=deploy)
    writer.start()
    try:
        with ThreadPoolExecutor(count) as pool:  # all at once: each may wait out a writer
            fetched = list(pool.map(lambda _: nomad.fetch("aws", name, job_id="web"), range(count)))
    finally:
        stop.set()
        writer.join()
    assert [f.result for f in fetched if f.result] == []
    return path, fetched


@pytest.mark.serial
def test_a_config_rewritten_in_place_never_grants_more(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: object
) -> None:
    """The reviewer's race: the file rewritten in place, over and over (as cp
    does: truncate, write part, write the rest), while 20 fetches start at
    once. The whole file denies job web; no fetch may read the secret. On
    today's main 8 of 20 did. The writer stops after 3 s: by then a plugin
    that did not wait for it would have read half files in most fetches,
    and one that does has waited, and told the rest (2 slots: 20 fetches
    each waiting 2 s took 10 s)."""

    def rewrite(path: Path, text: bytes) -> None:
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(text[: len(text) // 2])
            f.flush()
            time.sleep(0.002)
            f.write(text[len(text) // 2 :])

    put_secret(secretsmanager, "midwrite/db", "granted")
    _, fetched = _fetches_while(nomad, moto_endpoint, "midwrite/db", rewrite, 20, seconds=3.0)
    for f in fetched:
        message = f.plugin_error or ""
        assert "policy matches namespace 'default', job 'web'" in message or "open for writing" in message, f


@pytest.mark.serial
def test_a_config_deployed_by_remove_and_create_never_grants_more(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: object
) -> None:
    """`install -m` and `rm; cp` remove the file, then create the new one: a
    fetch in between found no config, which means built-in defaults, every
    job reading everything (a reviewer: 40 of 90 got past the policy)."""

    def redeploy(path: Path, text: bytes) -> None:
        path.unlink()
        time.sleep(0.005)  # the next process (cp) starting
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, text)
        os.close(fd)
        time.sleep(0.03)  # until the next deploy

    put_secret(secretsmanager, "redeploy/db", "granted")
    _, fetched = _fetches_while(nomad, moto_endpoint, "redeploy/db", redeploy, 30)
    for f in fetched:  # every one read the whole file, whatever moment it looked
        assert "policy matches namespace 'default', job 'web'" in str(f.plugin_error), f


def test_a_look_that_does_not_wait_names_a_deploy_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node agent's periodic look (wait=False): a config open for
    writing, or missing while its directory just changed, is BeingDeployed
    at once, not waited for (2 s, 1 s) and not an error of the config."""
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(tmp_path / "none.toml"))
    plugin = tmp_path / "secrets"
    plugin.mkdir(mode=0o755)
    beside = plugin / config.CONFIG_FILE_NAME
    beside.write_text('[[policy]]\nallow = ["*:**"]\n')
    beside.chmod(0o600)
    executable = str(plugin / "aws")
    assert config.load(executable, wait=False).path == str(beside)
    with open(beside, "r+b"), pytest.raises(config.BeingDeployed, match="is open for writing"):
        config.load(executable, wait=False)
    beside.unlink()  # the directory changes now
    with pytest.raises(config.BeingDeployed, match=r"while .* changes"):
        config.load(executable, wait=False)


def test_a_config_being_redeployed_is_waited_for_not_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing beside the plugin while its directory just changed: the
    system config is not read in its place (a reviewer read a leftover
    /etc/nomad-secrets/config.toml that allowed everything, 18 of 30)."""
    import threading

    system = tmp_path / "etc.toml"
    system.write_text('[[policy]]\nallow = ["*:**"]\n')
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(system))
    plugin = tmp_path / "secrets"
    plugin.mkdir()
    beside = plugin / config.CONFIG_FILE_NAME
    (plugin / "x").touch()  # the directory changes now
    later = threading.Timer(0.1, lambda: beside.write_text("x = 1\n"))
    later.start()
    try:
        assert config.find_config(str(plugin / "aws")) == str(beside)
    finally:
        later.join()


def test_a_file_removed_a_moment_ago_is_waited_for_not_read_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy that removes the file and writes the new one a moment later
    (the re-review's `rm; sleep 0.3; cp`, and slower): the gap is waited
    out while the directory is quiet, past the second that a directory
    changing all along gets. With 0.25 s, it read as no config: built-in
    defaults, every job reading everything."""
    etc, plugin = tmp_path / "etc", tmp_path / "secrets"
    for folder in (etc, plugin):
        folder.mkdir()
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(etc / "absent.toml"))
    removed = time.time() - 0.5  # half a second ago
    os.utime(plugin, (removed, removed))
    os.utime(etc, (removed - 60, removed - 60))
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    beside = plugin / config.CONFIG_FILE_NAME

    def sleep(seconds: float) -> None:  # the new file comes 1.6 s on: 2.1 s after the removal
        clock[0] += 0.4
        slept.append(seconds)
        if len(slept) == 4:
            beside.write_text('[[policy]]\nallow = ["*:**"]\n')

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", sleep)
    assert config.find_config(str(plugin / "aws")) == str(beside)
    assert len(slept) == 4


def test_a_quiet_or_future_dated_directory_is_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No config, a directory that changed long ago or whose time is ahead
    of the clock (stepped back, rsync from a machine ahead): built-in
    defaults at once, not a second's wait and a refusal."""
    etc, plugin = tmp_path / "etc", tmp_path / "secrets"
    for folder in (etc, plugin):
        folder.mkdir()
    monkeypatch.setattr(config.reader, "SYSTEM_CONFIG", str(etc / "absent.toml"))
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    for when in (time.time() - 60, time.time() + 3600):
        for folder in (etc, plugin):
            os.utime(folder, (when, when))
        assert config.find_config(str(plugin / "aws")) is None
    assert waits == []


def test_a_fifo_as_the_config_is_refused_at_once(nomad: NomadClient) -> None:
    """A FIFO blocked the read until Nomad's SIGTERM, and the answer blamed the store."""
    path = nomad.plugin_dir / "secrets" / "nomad-secrets.toml"
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)
    fetched = nomad.fetch("aws", "prod/db")
    assert not fetched.run.terminated
    assert fetched.plugin_error == f"the config file {path} is not a regular file; write a file there"


def test_a_config_held_open_for_writing_is_refused(nomad: NomadClient, moto_endpoint: str) -> None:
    path = write_config(nomad.plugin_dir, aws_config(moto_endpoint))
    with open(path, "a"):
        fetched = nomad.fetch("aws", "prod/db")
    assert fetched.plugin_error == (
        f"the config file {path} stayed open for writing for 2 s (`fuser -v {path}` shows the"
        " process): write the new config to a temporary file in the same directory and rename it into place"
    )
