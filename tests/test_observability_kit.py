"""The observability kit: deploy/prometheus/fairgate-alerts.yml passes `promtool check
rules` and its own `promtool test rules` (each alert fires on the series it is written
for, and not on a healthy gate), deploy/grafana/fairgate-dashboard.json is a dashboard
Grafana provisions, and every metric name in an alert or a panel is one that a real
`gate serve` exports on /metrics once a campaign has had joins, polls, claims and
callbacks. The compose file mounts both."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gate.redis_server import free_port
from tests.helpers import (
    ADMIN_TOKEN,
    CORE_TOKEN,
    GateProcess,
    amount_spec,
    as_customer,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "fairgate-alerts.yml"
RULES_TESTS = DEPLOY / "prometheus" / "fairgate-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "fairgate-dashboard.json"
RUNBOOK = DEPLOY / "RUNBOOK.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)

# Series Prometheus makes itself for every scrape target, not the gate.
SYNTHETIC = {"up"}

# -- metric names in a PromQL expression ----------------------------------------------

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan",
}  # fmt: skip
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)")


def metric_names(expression: str) -> set[str]:
    """The metric names an expression selects: identifiers used as selectors (before
    `{`, `[` or alone), not functions and aggregations (before `(`), not label names in
    `{...}` or in by/without/on/ignoring/group_left/group_right lists, not keywords,
    durations or numbers. Grafana's `$variables` are taken out first; `{__name__="x"}`
    gives x."""
    text = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", "", expression)
    text = re.sub(r"#[^\n]*", "", text)  # PromQL comments
    names = set(_NAME_MATCHER.findall(text))
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^{}]*\}", " {} ", text)  # label matchers: their names are labels
    text = re.sub(r"\[[^\[\]]*\]", " [] ", text)  # ranges and subqueries: durations
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+-?\d[0-9a-z]*", " ", text, flags=re.I)  # its duration
    text = _NUMBER.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        after = text[match.end() :].lstrip()
        if after.startswith("("):
            continue  # a function or an aggregation
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}


def label_names(expression: str) -> set[str]:
    """The label names an expression relies on: in selectors' matchers and in
    by/without/on/ignoring/group_left/group_right lists (`__name__` aside)."""
    text = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", "", expression)
    text = _STRING.sub('""', text)
    found: set[str] = set()
    for matchers in re.findall(r"\{([^{}]*)\}", text):
        found.update(_MATCHER_LABEL.findall(matchers))
    for listed in _GROUPING.findall(text):
        found.update(word.strip() for word in listed.split(",") if word.strip())
    return found - {"__name__"}


def test_label_names_are_read_from_promql() -> None:
    expression = (
        'sum by (campaign, le) (rate(x_bucket{route!~"/q/{campaign}/.*", status=~"5.."}[1m]))'
        ' / on (campaign) group_left(state) y{__name__="y"}'
    )
    assert label_names(expression) == {"campaign", "le", "route", "status", "state"}


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("up", {"up"}),
        ("fairgate_a", {"fairgate_a"}),
        ('fairgate_a{campaign="x", status=~"5.."}', {"fairgate_a"}),
        ("rate(fairgate_b_total[5m])", {"fairgate_b_total"}),
        (
            'sum by (campaign, le) (rate(fairgate_c_bucket{campaign=~"$campaign"}'
            "[$__rate_interval]))",
            {"fairgate_c_bucket"},
        ),
        (
            "histogram_quantile(0.99, sum without(instance) (rate(x_bucket[1m])))"
            " > on(campaign) group_left(state) y * 1e3",
            {"x_bucket", "y"},
        ),
        ("max_over_time(fairgate_d[10m:30s] offset 5m) > bool 2", {"fairgate_d"}),
        ('count({__name__="fairgate_e", job="x"}) or vector(0)', {"fairgate_e"}),
        ("a unless b and c or d", {"a", "b", "c", "d"}),
        ("time() - fairgate_f_seconds", {"fairgate_f_seconds"}),
        ("label_values(fairgate_g, campaign)", {"fairgate_g", "campaign"}),
    ],
)
def test_metric_names_are_read_from_promql(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def _template_query(query: Any) -> str:
    text = query.get("query", "") if isinstance(query, dict) else str(query)
    return str(text)


def _variable_metric_names(query: str) -> set[str]:
    """A Grafana variable's query: `label_values(metric, label)` names a metric and a
    label; `query_result(EXPR)` is an expression."""
    match = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    if match:
        return metric_names(match.group(1))
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    if match:
        return metric_names(match.group(1))
    return set()


def _panels(dashboard: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_expressions() -> dict[str, str]:
    return {rule.get("alert") or rule["record"]: rule["expr"] for rule in _alert_rules()}


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[str, str] = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found[f"variable {variable['name']}"] = _template_query(variable["query"])
    return found


def panel_expressions(campaign: str, rate_interval: str) -> dict[str, str]:
    """The panels' expressions as Grafana sends them, its variables filled in."""
    filled: dict[str, str] = {}
    for where, expression in dashboard_expressions().items():
        if where.startswith("variable "):
            continue
        text = expression.replace("$__rate_interval", rate_interval)
        text = text.replace("$__interval", "15s").replace("$__range", "1h")
        text = text.replace("${campaign}", campaign).replace("$campaign", campaign)
        assert "$" not in text, expression
        filled[where] = text
    return filled


# -- promtool ------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout, result.stdout


@needs_promtool
def test_each_alert_fires_in_promtool_unit_tests() -> None:
    """fairgate-alerts.test.yml feeds series to every alert: each one fires where it
    should (with its labels and for: delay) and stays quiet on the healthy series."""
    result = _promtool("test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = yaml.safe_load(RULES_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in _alert_rules() if "alert" in rule}
    assert alerts - tested == set(), "alerts that no promtool test shows firing"


@needs_promtool
def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every panel's expression, with Grafana's variables filled in, is PromQL that
    promtool accepts (as a recording rule)."""
    rules = []
    for index, expression in enumerate(panel_expressions("c1", "1m").values()):
        rules.append({"record": f"dashboard:expr_{index}", "expr": expression})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_have_what_an_operator_needs() -> None:
    runbook = RUNBOOK.read_text()
    for rule in _alert_rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"].startswith("deploy/RUNBOOK.md#"), name
        assert f"`{name}`" in runbook, f"{name} is not explained in deploy/RUNBOOK.md"
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in _anchors(runbook), (name, anchor)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


# -- the dashboard -------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["campaign"]["type"] == "query"
    assert variables["campaign"]["multi"] is True
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = " | ".join(panel["title"].lower() for panel in _panels(dashboard))
    for wanted in (
        "queue",
        "admitted",
        "active",
        "quota",
        "core",
        "errors",
        "sealing lag",
        "checkpoint age",
    ):
        assert wanted in titles, f"no panel about {wanted}: {titles}"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # A per-campaign figure follows the campaign variable.
            if "by (campaign" in target["expr"]:
                assert 'campaign=~"$campaign"' in target["expr"], target["expr"]


# -- the names against a real gate's /metrics ------------------------------------------


def exported_names(exposition: str) -> set[str]:
    """Every name in a Prometheus text exposition: the families its # TYPE lines
    declare and every sample's name (histogram _bucket/_sum/_count, counter _total,
    _created)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def exported_labels(exposition: str) -> dict[str, set[str]]:
    """sample name -> the label names its samples carry."""
    labels: dict[str, set[str]] = {}
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        if not rest:
            name = line.split()[0]
        found = labels.setdefault(name, set())
        if rest:
            body = rest.rsplit("}", 1)[0]
            found.update(re.findall(r'(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"', body))
    return labels


CAMPAIGN = "obs"


def _adaptive_spec(health_url: str) -> dict[str, Any]:
    """amount_spec with a controller fed by the core's callbacks and by a health endpoint
    (polled every window, so the core-health series always have a figure), so that the
    controller and the core's health export their per-campaign series."""
    spec = amount_spec(CAMPAIGN)
    spec["admission"]["adaptive"] = {
        "rate_min": 10,
        "rate_max": 2000,
        "interval_s": 0.2,
        "targets": {"latency_ms": 30000, "error_ratio": 0.5},
        "sources": [
            {"kind": "callbacks", "error_reasons": ["core_error"]},
            {"kind": "http", "url": health_url, "timeout_ms": 1000},
        ],
    }
    return spec


async def _busy_gate_metrics(served: GateProcess) -> str:
    """Create an adaptive amount campaign, have three customers join, poll until
    admitted and claim; the core confirms one and releases one; a bad request and a
    poll of an unknown ticket; then /metrics (after the sealer has sealed something)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    core = {"Authorization": f"Bearer {CORE_TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{served.admin_url}/admin/campaigns",
            json=_adaptive_spec(served.core_url + "/healthz"),
            headers=admin,
        ) as r:
            assert r.status == 201, await r.text()
        reservations = []
        for customer in ("alice", "bob", "carol"):
            me = as_customer(customer)
            async with http.post(f"{served.url}/q/{CAMPAIGN}/join", headers=me) as r:
                assert r.status == 201, await r.text()
                ticket = (await r.json())["ticket"]
            state: dict[str, Any] = {}

            async def admitted(
                ticket: str = ticket, me: dict[str, str] = me, state: dict[str, Any] = state
            ) -> bool:
                url = f"{served.url}/q/{CAMPAIGN}/status"
                async with http.get(url, params={"ticket": ticket}, headers=me) as r:
                    state.update(await r.json())
                return state.get("state") == "admitted"

            await wait_for(admitted, 10, f"{customer} admitted", interval_s=0.05)
            async with http.post(
                f"{served.url}/q/{CAMPAIGN}/claim",
                json={"amount": "5000000"},
                headers={**me, "X-Gate-Pass": state["pass"]},
            ) as r:
                assert r.status == 201, await r.text()
                reservations.append(str((await r.json())["reservation"]))
        for reservation, action, body in (
            (reservations[0], "confirm", {}),
            (reservations[1], "release", {"reason": "core_error"}),
        ):
            url = f"{served.core_url}/q/{CAMPAIGN}/reservations/{reservation}/{action}"
            async with http.post(url, headers=core, json=body) as r:
                assert r.status == 200, await r.text()
        async with http.post(f"{served.url}/q/{CAMPAIGN}/join") as r:
            assert 400 <= r.status < 500  # no customer: a 4xx in the error series

        async def scraped_after_sealing() -> bool:
            async with http.get(f"{served.url}/metrics") as r:
                assert r.status == 200
                text = await r.text()
            scraped.append(text)
            # A checkpoint series of the campaign: the sealer has sealed its entries.
            return any(
                "checkpoint" in line.partition("{")[0] and f'campaign="{CAMPAIGN}"' in line
                for line in text.splitlines()
                if not line.startswith("#")
            )

        scraped: list[str] = []
        await wait_for(scraped_after_sealing, 15, "per-campaign series on /metrics")
        return scraped[-1]


async def test_every_alert_and_panel_names_a_metric_the_gate_exports(
    redis_url: str, keys_file: Path, tmp_path: Path
) -> None:
    async with GateProcess(redis_url, tmp_path / "gate", keys_file, workers=2) as served:
        exposition = await _busy_gate_metrics(served)
        if PROMETHEUS is not None:
            await _prometheus_reads(served, tmp_path)
    exported = exported_names(exposition) | SYNTHETIC
    used: dict[str, set[str]] = {}
    for where, expression in {**alert_expressions(), **dashboard_expressions()}.items():
        names = (
            _variable_metric_names(expression)
            if where.startswith("variable ")
            else metric_names(expression)
        )
        assert names, f"{where}: no metric in {expression!r}"
        for name in names:
            used.setdefault(name, set()).add(where)
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert missing == {}, f"names the gate does not export: {missing}"
    assert len(used) >= 10
    # The labels an expression filters or groups by are on its metrics' samples (where
    # the scrape has samples of them: a family with none, such as Redis refusals on a
    # healthy Redis, only declares its name).
    carried = exported_labels(exposition)
    unknown: dict[str, set[str]] = {}
    for where, expression in {**alert_expressions(), **dashboard_expressions()}.items():
        if where.startswith("variable "):
            continue
        present = [name for name in metric_names(expression) if name in carried]
        if not present:
            continue
        available = TARGET_LABELS.union(*(carried[name] for name in present))
        if label_names(expression) - available:
            unknown[where] = label_names(expression) - available
    assert unknown == {}, f"labels the gate's samples do not carry: {unknown}"
    # The runbook's metric names too (`fairgate_campaign_*` names a prefix; nginx's
    # `$fairgate_…` variables are not metrics).
    named = re.findall(r"(?<![$\w])(fairgate_[a-z_]*[a-z])(_\*)?", RUNBOOK.read_text())
    absent = sorted(
        name + star
        for name, star in set(named)
        if not (any(e.startswith(name + "_") for e in exported) if star else name in exported)
    )
    assert absent == [], f"deploy/RUNBOOK.md names metrics the gate does not export: {absent}"


PROMETHEUS = shutil.which("prometheus")


def _start_prometheus(
    config: dict[str, Any], workdir: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    assert PROMETHEUS is not None
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _prometheus_reads(served: GateProcess, tmp_path: Path) -> None:
    """A real Prometheus scrapes the gate every second with the shipped rules: every rule
    evaluates without error and none is pending or firing on this healthy gate, and
    every panel shows data (at least one of its expressions returns series)."""
    assert PROMETHEUS is not None
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "fairgate",
                "static_configs": [{"targets": [served.url.removeprefix("http://")]}],
            }
        ],
    }
    log = tmp_path / "prometheus.log"
    process = _start_prometheus(config, tmp_path, port, log)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:

            async def query(expression: str) -> list[Any]:
                async with http.get(api + "/query", params={"query": expression}) as r:
                    body = await r.json()
                assert body["status"] == "success", (expression, body)
                result: list[Any] = body["data"]["result"]
                return result

            async def scraped_enough() -> bool:
                assert process.poll() is None, log.read_text()[-2000:]
                try:
                    # rate() over 5 s needs a few samples; the rules ran more than once.
                    found = await query("count_over_time(fairgate_redis_fresh[1m]) >= 6")
                except aiohttp.ClientError:
                    return False
                return bool(found)

            await wait_for(scraped_enough, 30, "Prometheus scraping the gate", interval_s=0.2)
            async with http.get(api + "/rules") as r:
                groups = (await r.json())["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) == len(_alert_rules())
            for rule in rules:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
                assert rule["state"] == "inactive", (rule["name"], rule["alerts"])
            by_panel: dict[str, int] = {}
            for where, expression in panel_expressions(CAMPAIGN, "5s").items():
                panel = where.rsplit(" ", 1)[0]
                by_panel[panel] = by_panel.get(panel, 0) + len(await query(expression))
            empty = [panel for panel, series in by_panel.items() if series == 0]
            assert empty == [], f"panels without data on a busy gate: {empty}"
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- compose -------------------------------------------------------------------------


def test_compose_mounts_the_rules_and_the_dashboard() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    prometheus = services["prometheus"]["volumes"]
    grafana = services["grafana"]["volumes"]
    assert (
        "./prometheus/fairgate-alerts.yml:/etc/prometheus/rules/fairgate-alerts.yml:ro"
        in prometheus
    )
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert (
        "./compose/grafana-dashboards.yml:/etc/grafana/provisioning/dashboards/fairgate.yml:ro"
        in grafana
    )
    assert "./grafana:/var/lib/grafana-dashboards/fairgate:ro" in grafana
    provider = yaml.safe_load((DEPLOY / "compose" / "grafana-dashboards.yml").read_text())
    (entry,) = provider["providers"]
    assert entry["options"]["path"] == "/var/lib/grafana-dashboards/fairgate"
    # The dashboard's data source variable picks the provisioned Prometheus.
    source = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yml").read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == source["datasources"][0]["type"]


@needs_promtool
def test_compose_prometheus_loads_the_rules(tmp_path: Path) -> None:
    """The compose Prometheus config with its rule_files pointed where compose mounts
    the rules from: `promtool check config` loads them with it."""
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout, result.stdout
