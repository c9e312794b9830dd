"""What operators load (examples/monitoring/): the alerting rules pass the
real promtool's own test, whose series are shaped as the plugin writes
them, and fire on series the plugin wrote after real fetches; the
dashboard's queries are PromQL that names only what the plugin writes; and
the real node_exporter serves every sample of the plugin's textfiles as
written, without a scrape error."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, aws_config, doc_block, put_secret, write_config
from support.attacker import ATTACKER, need_root
from support.netutil import HangingServer, dead_port_url
from support.node_exporter import node_exporter, promtool
from support.nomad import NomadClient
from test_metrics import samples
from test_node_files import check_output

from nomad_secrets.process.errors import KINDS
from nomad_secrets.records import metrics

MONITORING = ROOT / "examples" / "monitoring"
RULES = MONITORING / "nomad-secrets.rules.yml"
RULES_TEST = MONITORING / "nomad-secrets.rules.test.yml"
DASHBOARD = MONITORING / "nomad-secrets.dashboard.json"
CONFIGURATION = ROOT / "docs" / "configuration.md"
# The plugin's families, and what node_exporter adds about reading them.
WRITTEN = {
    name
    for family, (kind, _) in metrics.HELP.items()
    for name in ([family] if kind == "counter" else [f"{family}_bucket", f"{family}_sum", f"{family}_count"])
} | {metrics.WRITE_ERRORS}
NODE_EXPORTER = {"node_textfile_scrape_error"}
OUTCOMES = {"ok", *KINDS}  # no "stale" until issue 22 builds it
Sample = tuple[str, tuple[tuple[str, str], ...]]


def shown(prom: Path) -> dict[Sample, float]:
    """What node_exporter serves of the plugin's files now (nothing before the first)."""
    files = [prom, prom.with_suffix(".write-errors.prom")]
    return {sample: v for file in files if file.exists() for sample, v in samples(file.read_text()).items()}


def rule_expressions() -> list[str]:
    """Each alert's ``expr``, inline or folded (``expr: >``) over the lines below it."""
    lines, found = RULES.read_text().splitlines(), []
    for number, line in enumerate(lines):
        match = re.match(r"( *)expr: (.*)$", line)
        if match is None:
            continue
        if match.group(2) != ">":
            found.append(match.group(2))
            continue
        body = []
        for below in lines[number + 1 :]:
            if len(below) - len(below.lstrip()) <= len(match.group(1)):
                break
            body.append(below.strip())
        found.append(" ".join(body))
    return found


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    queries += [
        variable["definition"] for variable in board["templating"]["list"] if "definition" in variable
    ]
    return queries


@pytest.mark.process
def test_the_alert_rules_pass_promtools_test() -> None:
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", RULES.name], cwd=MONITORING, capture_output=True, text=True
    )
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, (
        checked.stdout + checked.stderr
    )
    tested = subprocess.run(
        [tool, "test", "rules", "nomad-secrets.rules.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_tested() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M)
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert len(alerts) == 6 and set(alerts) == tested


@pytest.mark.process
def test_the_dashboards_queries_are_promql(tmp_path: Path) -> None:
    """Grafana's variables filled in as Grafana does, each query checked by
    promtool as a recording rule's expression."""
    fill = {"$__rate_interval": "5m", "$__range": "1h", "$instance": ".*", "$provider": ".*"}
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for number, query in enumerate(dashboard_queries()):
        if query.startswith("label_values("):  # Grafana's own function: its argument is the query
            query = query.removeprefix("label_values(").rsplit(",", 1)[0]
        for variable, value in fill.items():
            query = query.replace(variable, value)
        rules += [f"      - record: dashboard:query{number}", f"        expr: {json.dumps(query)}"]
    (tmp_path / "dashboard.rules.yml").write_text("\n".join(rules) + "\n")
    checked = subprocess.run(
        [promtool(), "check", "rules", "dashboard.rules.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rules_and_dashboard_name_only_what_the_plugin_writes() -> None:
    """Every metric is one the plugin writes (or node_exporter's own about
    reading it), every outcome an error kind, and the alerts tell apart
    every kind an operator acts on."""
    texts = {"rules": "\n".join(rule_expressions()), "dashboard": "\n".join(dashboard_queries())}
    assert len(rule_expressions()) == 6
    alerted: set[str] = set()
    for where, text in texts.items():
        names = set(re.findall(r"\b(?:nomad_secrets|node)_[a-z_]+\b", text))
        assert names <= WRITTEN | NODE_EXPORTER, (where, names - WRITTEN - NODE_EXPORTER)
        for values in re.findall(r'outcome[=!]~?"([^"]*)"', text):
            named = set(values.split("|"))
            assert named <= OUTCOMES, (where, named - OUTCOMES)
            alerted |= named if where == "rules" else set()
    assert set(re.findall(r"\bnomad_secrets_[a-z_]+\b", texts["dashboard"])) >= WRITTEN
    acted_on = {"unreachable", "store-error", "throttled", "timed-out", "terminated", "node-busy", "denied"}
    assert acted_on | {"denied-by-policy"} <= alerted


def test_node_exporter_serves_every_sample_as_written(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Fetches that answer, fail, read two stores, and lose their syslog
    record (no socket): every sample of the file arrives through the real
    node_exporter with the value written, and nothing fails to parse."""
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    sections = (
        f'[audit]\nsyslog = true\nsyslog_socket = "{tmp_path / "no-socket"}"\n[metrics]\nfile = "{prom}"\n'
    )
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + sections)
    put_secret(secretsmanager, "monitoring/db", "v")
    assert nomad.fetch("aws", "monitoring/db").ok
    assert not nomad.fetch("aws", "monitoring/missing").ok
    assert not nomad.fetch("aws", "db = aws-sm:monitoring/db\nflag = aws-ssm:/monitoring/none\n").ok
    written = shown(prom)
    assert {name for name, _ in written} == WRITTEN
    assert written[("nomad_secrets_write_errors_total", (("to", "syslog"),))] == 3
    with node_exporter(textfile) as exporter:
        scraped = exporter.scrape()
    assert scraped[("node_textfile_scrape_error", ())] == 0
    assert {sample: scraped.get(sample) for sample in written} == written
    mtime = {dict(labels)["file"] for (name, labels) in scraped if name == "node_textfile_mtime_seconds"}
    assert mtime == {str(prom), str(prom.with_suffix(".write-errors.prom"))}


def expanded(values: str) -> list[float | None]:
    """promtool's expanding notation: ``_`` a missing sample, ``_xN`` N of
    them, ``AxN`` A N+1 times, ``A+BxN`` A, A+B, ... A+N*B."""
    out: list[float | None] = []
    for token in values.split():
        match = re.fullmatch(r"(_|-?[\d.]+)(?:([-+][\d.]+)?x(\d+))?", token)
        assert match, token
        start, step, times = match.groups()
        if start == "_":
            out += [None] * int(times or 1)
        else:
            out += [float(start) + float(step or 0) * i for i in range(int(times or 0) + 1)]
    return out


def test_the_shipped_rule_tests_series_are_shaped_as_the_plugin_writes_them() -> None:
    """In each test of nomad-secrets.rules.test.yml, a provider and store's
    fetch counters all appear at once, with the pair's first fetch (every
    outcome at 0 but that fetch's), and the write errors at 0 from the
    first: a series that starts at 0 only when its kind first happens is
    one the plugin never writes, and it hides the miss the plugin had."""
    groups = RULES_TEST.read_text().split("\n  - interval: ")[1:]
    checked = set()
    for group in groups:
        firsts: dict[tuple[str, ...], dict[str, tuple[int, float]]] = {}
        for series, values in re.findall(r"- series: '([^']*)'\n\s+values: \"([^\"]*)\"", group):
            name, labels = series.split("{")[0], dict(re.findall(r'(\w+)="([^"]*)"', series))
            points = expanded(values)
            at = next(i for i, v in enumerate(points) if v is not None)
            value = points[at]
            assert value is not None
            if name == metrics.FETCHES:
                pair = (name, labels["instance"], labels["provider"], labels["store"])
                firsts.setdefault(pair, {})[labels["outcome"]] = (at, value)
            elif name == metrics.WRITE_ERRORS:
                firsts.setdefault((name, labels["instance"]), {})[labels["to"]] = (at, value)
            elif name == metrics.DURATION + "_bucket":
                firsts.setdefault((name, labels["instance"], labels["provider"]), {})[labels["le"]] = (
                    at,
                    value,
                )
        for key, series_firsts in firsts.items():
            checked.add(key[0])
            assert len({at for at, _ in series_firsts.values()}) == 1, (key, series_firsts)
            values = [value for _, value in series_firsts.values()]
            if key[0] == metrics.WRITE_ERRORS:
                assert set(series_firsts) == set(metrics.WRITE_TARGETS) and values == [0, 0, 0], key
            elif key[0] == metrics.FETCHES:  # the fetch that made the pair, and the rest at 0
                assert sum(values) >= 1 and sorted(values)[:-1] == [0] * (len(values) - 1), key
            else:  # with the provider's first fetch
                assert series_firsts["+Inf"][1] >= 1, key
    assert len(groups) == 6 and len(checked) == 3


def test_the_alerts_fire_on_series_the_plugin_wrote(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """Real fetches, the plugin's files read after each minute's, and their
    series fed to the real promtool as node_exporter serves them (absent
    until a file has them): the first fetch that found the store
    unreachable, the first that timed out, eleven policy denials in one
    minute and one audit record syslog did not take each fire their alert.
    Series that appeared only with their first fetch fired none of the
    first three: increase() takes a series' first sample as its start."""
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    prom = textfile / "nomad-secrets.prom"
    put_secret(secretsmanager, "monitoring/db", "v")
    observed = f'[metrics]\nfile = "{prom}"\n[[policy]]\nallow = ["aws-sm:monitoring/**"]\n'

    def configure(endpoint: str, sections: str = "") -> None:
        write_config(nomad.plugin_dir, aws_config(endpoint) + sections + observed)

    minutes = [shown(prom)]  # before any fetch
    configure(moto_endpoint)
    assert nomad.fetch("aws", "monitoring/db").ok
    minutes += [shown(prom)] * 2
    configure(dead_port_url())
    assert nomad.fetch("aws", "monitoring/db").error
    minutes.append(shown(prom))
    with HangingServer() as hanging:
        configure(hanging.url, "[plugin]\ndeadline_seconds = 2\n")
        assert nomad.fetch("aws", "monitoring/db").error
    minutes.append(shown(prom))
    configure(moto_endpoint)
    for _ in range(11):
        assert "policy" in nomad.fetch("aws", "elsewhere/db").error
    minutes.append(shown(prom))
    configure(moto_endpoint, f'[audit]\nsyslog = true\nsyslog_socket = "{tmp_path / "no-socket"}"\n')
    assert nomad.fetch("aws", "monitoring/db").ok
    minutes += [shown(prom)] * 2
    assert {name for name, _ in minutes[-1]} == WRITTEN

    def series(sample: Sample) -> dict[str, str]:
        name, labels = sample
        text = ",".join(f'{k}="{v}"' for k, v in (("instance", "n1"), *labels))
        points = [repr(minute[sample]) if sample in minute else "_" for minute in minutes]
        return {"series": f"{name}{{{text}}}", "values": " ".join(points)}

    def firing(alertname: str, severity: str, **labels: str) -> dict[str, Any]:
        text = ",".join(f'{k}="{v}"' for k, v in {"instance": "n1", "severity": severity, **labels}.items())
        return {"labels": f'ALERTS{{alertname="{alertname}",alertstate="firing",{text}}}', "value": 1}

    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [series(sample) for sample in sorted(set().union(*minutes))],
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',  # every alert firing, and no other
                        "eval_time": f"{len(minutes) - 1}m",
                        "exp_samples": [
                            firing(
                                "NomadSecretsStoreFailing",
                                "critical",
                                provider="aws",
                                store="aws-sm",
                                outcome="unreachable",
                            ),
                            firing(
                                "NomadSecretsDeadlineMisses", "warning", provider="aws", outcome="timed-out"
                            ),
                            firing(
                                "NomadSecretsDenialsSpike",
                                "warning",
                                provider="aws",
                                outcome="denied-by-policy",
                            ),
                            firing("NomadSecretsWriteErrors", "warning", to="syslog"),
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "plugin.test.yml").write_text(json.dumps(test, indent=1))  # JSON is YAML
    tested = subprocess.run(
        [promtool(), "test", "rules", "plugin.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_documented_textfile_directory_as_the_docs_make_it(
    nomad: NomadClient, moto_endpoint: str, secretsmanager: Any, tmp_path: Path
) -> None:
    """docs/configuration.md's [metrics] commands, run as written but below
    a directory of the test's: ``install -d`` makes a directory of root's,
    node_exporter runs with the ARGS line, the plugin with the [metrics]
    block, and every count arrives. Debian's layout, /var/lib/prometheus
    given to the package's user (here uid 65534), is refused, and check
    says to do the above, not to chown it back; the links the docs offer
    instead serve the files through the package's own directory."""
    need_root()
    top = tmp_path / "node"
    (top / "var" / "lib").mkdir(parents=True)
    for directory in (top, *top.rglob("*")):
        directory.chmod(0o755)
    rebased = doc_block(CONFIGURATION, "--collector.textfile.directory=", "sh").replace(
        "/var/", f"{top}/var/"
    )
    (install,) = [line for line in rebased.splitlines() if line.startswith("install ")]
    subprocess.run(["sh", "-c", install], check=True)
    (args,) = re.findall(r'^ARGS="(.*)"$', rebased, re.M)
    block = doc_block(CONFIGURATION, "[metrics]\nfile =").replace("/var/", f"{top}/var/")
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + block)
    prom = Path(re.findall(r'file = "(.*)"', block)[0])
    assert prom.parent.stat().st_uid == 0 and prom.parent.stat().st_mode & 0o7777 == 0o755
    put_secret(secretsmanager, "monitoring/db", "v")
    with node_exporter(args=shlex.split(args)) as exporter:
        assert nomad.fetch("aws", "monitoring/db").ok
        scraped = exporter.scrape()
    assert scraped[("node_textfile_scrape_error", ())] == 0
    assert {sample: scraped.get(sample) for sample in shown(prom)} == shown(prom)
    words = check_output(nomad)
    assert f"ok metrics file {prom}" in words and "WARNING the directory" not in words

    package = top / "var" / "lib" / "prometheus"  # as Debian's postinst leaves it
    (package / "node-exporter").mkdir(parents=True, mode=0o755)
    os.chown(package, ATTACKER, ATTACKER)
    debian = package / "node-exporter" / "nomad-secrets.prom"
    write_config(nomad.plugin_dir, aws_config(moto_endpoint) + f'[metrics]\nfile = "{debian}"\n')
    words = check_output(nomad)
    assert f"WARNING the directory {package} is owned by uid {ATTACKER}; do not chown it back" in words
    assert (
        "such as /var/lib/nomad-secrets/metrics, and point node_exporter's --collector.textfile.directory"
        in words
    )
    assert "chown it to root" not in words

    (link,) = re.findall(r"`(ln -s [^`]*)`", CONFIGURATION.read_text())
    subprocess.run(["sh", "-c", " ".join(link.split()).replace("/var/", f"{top}/var/")], check=True)
    with node_exporter(package / "node-exporter") as exporter:
        scraped = exporter.scrape()
    assert scraped[("node_textfile_scrape_error", ())] == 0
    assert {sample: scraped.get(sample) for sample in shown(prom)} == shown(prom)
