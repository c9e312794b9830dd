"""What operators load (examples/monitoring/): the alerting rules pass the
real promtool's own test, the dashboard's queries are PromQL that names
only what the plugin writes, and the real node_exporter serves every
sample of the plugin's textfile as written, without a scrape error."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from conftest import ROOT, aws_config, put_secret, write_config
from node_exporter import node_exporter, promtool
from nomad import NomadClient
from test_metrics import samples

from nomad_secrets import metrics
from nomad_secrets.errors import KINDS

MONITORING = ROOT / "examples" / "monitoring"
RULES = MONITORING / "nomad-secrets.rules.yml"
DASHBOARD = MONITORING / "nomad-secrets.dashboard.json"
# The plugin's families, and what node_exporter adds about reading them.
WRITTEN = {
    name
    for family, (kind, _) in metrics.HELP.items()
    for name in ([family] if kind == "counter" else [f"{family}_bucket", f"{family}_sum", f"{family}_count"])
}
NODE_EXPORTER = {"node_textfile_scrape_error"}
OUTCOMES = {"ok", *KINDS}  # no "stale" until issue 22 builds it


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
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "nomad-secrets.rules.test.yml").read_text()))
    assert len(alerts) == 6 and set(alerts) == tested


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
    written = samples(prom.read_text())
    assert {name for name, _ in written} == WRITTEN
    assert written[("nomad_secrets_write_errors_total", (("to", "syslog"),))] == 3
    with node_exporter(textfile) as exporter:
        scraped = exporter.scrape()
    assert scraped[("node_textfile_scrape_error", ())] == 0
    assert {sample: scraped.get(sample) for sample in written} == written
    mtime = [value for (name, labels), value in scraped.items() if name == "node_textfile_mtime_seconds"]
    assert len(mtime) == 1 and mtime[0] == int(prom.stat().st_mtime)
