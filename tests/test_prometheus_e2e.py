"""A real Prometheus (Debian's package) scrapes a real stack: the gateway's metrics endpoint and
Envoy's `/stats/prometheus`. After a known burst, PromQL through Prometheus' HTTP API agrees
exactly with the ledger and with what the clients saw; the alert rules load; every panel of the
Grafana dashboard runs and shows the burst; Envoy's access log and the ext_proc's logs share
request ids.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from extproc.local.processes import free_port
from tests.conftest import Gateway, running_stack
from tests.observability import ALERT_RULES, DASHBOARD, tool

PAID = "openai/gpt-4o-mini"
FREE = "minimax/minimax-m2.5:free"
# The window the dashboard's `$__rate_interval` stands for here: the whole burst fits in it.
RATE_WINDOW = "5m"


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def scalar(self, expr: str) -> Decimal:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return Decimal(result[0]["value"][1])

    def by(self, label: str, expr: str) -> dict[str, Decimal]:
        return {series["metric"].get(label, ""): Decimal(series["value"][1]) for series in self.query(expr)}

    def wait_for_scrapes_after(self, moment: float, timeout: float = 30) -> None:
        """Until every target has been scraped, successfully, since `moment` (wall clock)."""
        deadline = time.monotonic() + timeout
        while True:
            targets = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            if targets and all(
                t["health"] == "up" and _rfc3339(t["lastScrape"]) > moment for t in targets  # the scrape's start
            ):
                return
            assert time.monotonic() < deadline, f"no scrape after the burst: {targets}"
            time.sleep(0.2)


def _rfc3339(value: str) -> float:
    # Prometheus gives nanoseconds; Python's fromisoformat takes at most microseconds.
    head, _, rest = value.partition(".")
    fraction = re.match(r"\d*", rest).group(0)[:6] if rest else "0"
    return datetime.fromisoformat(f"{head}.{fraction or '0'}+00:00").timestamp()


def _start_prometheus(directory: Path, gateway: Gateway) -> Prometheus:
    binary = tool("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [
            {"job_name": "llm-gateway", "static_configs": [{"targets": [f"127.0.0.1:{gateway.ports['metrics']}"]}]},
            {
                "job_name": "envoy",
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{gateway.ports['admin']}"]}],
            },
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return Prometheus(url, process)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"prometheus did not start:\n{(directory / 'prometheus.log').read_text()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Burst:
    gateway: Gateway
    prometheus: Prometheus
    statuses: list[int]  # what each client saw


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Burst]:
    tool("prometheus")  # skip before starting a stack when it is missing
    with running_stack(tmp_path_factory.mktemp("stack")) as gateway:
        prometheus = _start_prometheus(tmp_path_factory.mktemp("prometheus"), gateway)
        try:
            yield Burst(gateway, prometheus, _send_burst(gateway, prometheus))
        finally:
            prometheus.process.terminate()
            prometheus.process.wait(30)


# Rounds of the same requests, each scraped before the next: a series is born at its first
# value, and rate() sees only what it gains between scrapes, so the dashboard's rates show the
# burst only once every series has grown after a scrape (the third round: cache hits start in
# the second).
ROUNDS = 3
ROWS_PER_ROUND = 10  # every request of a round but the 402


def _send_burst(gateway: Gateway, prometheus: Prometheus) -> list[int]:
    """Paid and free, streamed and JSON, one 402 (no credits), one upstream error, per round."""
    paid = {"authorization": f"Bearer {gateway.new_user(credits_usd='10')['token']}"}
    broke = {"authorization": f"Bearer {gateway.new_user(credits_usd='0')['token']}"}
    requests: list[tuple[dict[str, str], dict[str, Any]]] = []
    for n in range(6):
        requests.append((paid, {"model": PAID, "stream": n % 2 == 0, "messages": [{"role": "user", "content": "a " * n}]}))
    for n in range(3):  # anonymous callers may use free models
        requests.append(({}, {"model": FREE, "stream": n % 2 == 0, "messages": [{"role": "user", "content": "b " * n}]}))
    requests.append((broke, {"model": PAID, "messages": [{"role": "user", "content": "no credits"}]}))
    requests.append((paid, {"model": PAID, "messages": [{"role": "user", "content": "boom"}], "mock": {"status": 500}}))
    statuses = []
    with httpx.Client(timeout=30) as client:
        for round_ in range(1, ROUNDS + 1):
            statuses += [client.post(gateway.chat_url, json=body, headers=headers).status_code for headers, body in requests]
            _wait_for_ledger(gateway, ROWS_PER_ROUND * round_)
            prometheus.wait_for_scrapes_after(time.time())
    assert sorted(statuses) == sorted([200] * 9 * ROUNDS + [402, 500] * ROUNDS)
    return statuses


def _wait_for_ledger(gateway: Gateway, rows: int) -> None:
    """Until the ledger has `rows` rows and the writer's published outbox gauge is back at 0 (it
    acknowledges only after the ledger commit and the charge counter)."""
    deadline = time.monotonic() + 60
    while gateway.sql("SELECT count(*) AS n FROM microdollar_usage")[0]["n"] < rows:
        assert time.monotonic() < deadline, "ledger rows did not arrive"
        time.sleep(0.2)
    while not re.search(r"^llm_gateway_outbox_depth 0\.0$", gateway.metrics(), re.M):
        assert time.monotonic() < deadline, "the outbox did not drain"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def scraped(burst: Burst) -> Burst:
    burst.prometheus.wait_for_scrapes_after(time.time())
    return burst


def test_charged_microdollars_match_the_ledger_exactly(scraped: Burst) -> None:
    ledger = scraped.gateway.sql("SELECT sum(cost) AS cost FROM microdollar_usage")[0]["cost"]
    assert ledger > 0
    assert scraped.prometheus.scalar("sum(llm_gateway_charged_microdollars_total)") == ledger


def test_tokens_by_type_match_the_ledger_exactly(scraped: Burst) -> None:
    row = scraped.gateway.sql(
        "SELECT sum(input_tokens) AS input, sum(output_tokens) AS output, sum(cache_hit_tokens) AS cached"
        " FROM microdollar_usage"
    )[0]
    tokens = scraped.prometheus.by("gen_ai_token_type", "sum by (gen_ai_token_type) (gen_ai_client_token_usage_sum)")
    assert row["output"] > 0 and row["cached"] > 0
    assert tokens == {"input": row["input"], "output": row["output"], "cached_input": row["cached"]}


def test_requests_by_status_class_match_the_clients_and_the_ledger(scraped: Burst) -> None:
    by_class = scraped.prometheus.by(
        "class",
        'sum by (class) (label_replace(llm_gateway_requests_total, "class", "${1}xx", "status", "([1-5])[0-9][0-9]"))',
    )
    seen = Counter(f"{status // 100}xx" for status in scraped.statuses)
    assert by_class == {name: Decimal(count) for name, count in seen.items()}
    rows = scraped.gateway.sql(
        "SELECT (status_code / 100)::text || 'xx' AS class, count(*) AS n FROM microdollar_usage_metadata GROUP BY 1"
    )
    # The gateway's own 402 never reached a provider: no ledger row (contract 7.5).
    assert {row["class"]: Decimal(row["n"]) for row in rows} == {k: v for k, v in by_class.items() if k != "4xx"}


def test_outbox_is_back_to_zero(scraped: Burst) -> None:
    assert scraped.prometheus.scalar("max(llm_gateway_outbox_depth)") == 0
    assert scraped.prometheus.scalar("max(llm_gateway_outbox_oldest_seconds)") == 0


def test_envoy_ext_proc_stream_counters(scraped: Burst) -> None:
    prometheus = scraped.prometheus
    sent = Decimal(len(scraped.statuses))  # one ext_proc stream per chat request
    assert prometheus.scalar("sum(envoy_http_ext_proc_streams_started)") == sent
    assert prometheus.scalar("sum(envoy_http_ext_proc_streams_closed)") == sent
    assert prometheus.scalar("sum(envoy_http_ext_proc_streams_failed)") == 0
    assert prometheus.scalar("sum(envoy_http_ext_proc_message_timeouts)") == 0
    # The 402s are the ext_proc's only immediate responses of the burst.
    assert prometheus.scalar("sum(envoy_http_ext_proc_immediate_responses_sent)") == scraped.statuses.count(402)


def _metric_names(expr: str) -> set[str]:
    # Without strings, label matchers and `by (...)` lists, what is left with our prefixes are
    # metric names.
    for pattern in (r'"[^"]*"', r"\{[^}]*\}", r"\b(?:by|without)\s*\([^)]*\)"):
        expr = re.sub(pattern, "", expr)
    return set(re.findall(r"\b(?:llm_gateway|gen_ai|envoy)_[a-z0-9_]+", expr))


def _names_in_prometheus(prometheus: Prometheus) -> set[str]:
    return set(httpx.get(f"{prometheus.url}/api/v1/label/__name__/values", timeout=10).json()["data"])


def test_alert_rules_load_in_prometheus_and_name_only_scraped_metrics(scraped: Burst) -> None:
    groups = httpx.get(f"{scraped.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expected = [r["alert"] for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(expected)
    assert all(rule["health"] != "err" for rule in rules), rules
    # None fires on a healthy stack's burst.
    assert [rule["name"] for rule in rules if rule["state"] == "firing"] == []
    known = _names_in_prometheus(scraped.prometheus)
    missing = {rule["name"]: _metric_names(rule["query"]) - known for rule in rules}
    assert {name: names for name, names in missing.items() if names} == {}


def _dashboard_targets() -> list[tuple[str, str]]:
    model = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in model["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


# Panels whose series stay at zero on a healthy burst: they still must return series.
QUIET_PANELS = {
    "Side-service errors",
    "Outbox depth",
    "Oldest record in the outbox",
    "Spend hold refusals, lowered max_tokens, degraded",
}


def test_every_dashboard_panel_runs_and_shows_the_burst(scraped: Burst) -> None:
    targets = _dashboard_targets()
    assert len({title for title, _ in targets}) >= 20
    known = _names_in_prometheus(scraped.prometheus)
    unknown: dict[str, set[str]] = {}
    empty: list[str] = []
    busy: set[str] = set()
    for title, expr in targets:
        if missing := _metric_names(expr) - known:
            unknown[title] = missing
        result = scraped.prometheus.query(expr.replace("$__rate_interval", RATE_WINDOW))
        if not result:
            empty.append(expr)
        if any(float(series["value"][1]) > 0 for series in result):  # NaN counts as nothing
            busy.add(title)
    assert unknown == {}
    assert empty == []
    # A failure series (ledger write failures, timeouts...) may stay at 0 beside a busy one;
    # every panel but the quiet ones shows something of the burst.
    assert {title for title, _ in targets} - QUIET_PANELS - busy == set()


def _log_lines(gateway: Gateway) -> list[dict[str, Any]]:
    log = (gateway.data_dir / "stack.log").read_text()
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_envoy_access_log_and_ext_proc_logs_share_the_request_id(scraped: Burst) -> None:
    # The ext_proc's warning about the upstream's 500 names its request...
    warnings = [line for line in _log_lines(scraped.gateway) if line.get("message") == "openrouter returned error 500"]
    assert len(warnings) == ROUNDS
    ids = {warning["request_id"] for warning in warnings}
    # ...and Envoy's access log line for it carries the same id. Envoy writes its access log
    # in batches (every second), so the last requests' lines may still be on their way.
    deadline = time.monotonic() + 30
    while True:
        access = [line for line in _log_lines(scraped.gateway) if "upstream_cluster" in line and line.get("request_id") in ids]
        if len(access) >= ROUNDS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted((line["request_id"], line["status"]) for line in access) == sorted((i, 500) for i in ids)
