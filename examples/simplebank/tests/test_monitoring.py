"""deploy/monitoring against the real tools: promtool, amtool, Prometheus and Alertmanager.

Needs the Debian packages ``prometheus`` (prometheus, promtool) and
``prometheus-alertmanager`` (prometheus-alertmanager, amtool): without them these tests
skip, or fail when the ``CI`` variable is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from simplebank.services import Bank

from conftest import Customer

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "simplebank.rules.yml"
RULE_TESTS = MONITORING / "rules" / "simplebank.rules.test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "simplebank.json"
OPERATIONS = Path(__file__).resolve().parents[3] / "docs" / "simplebank" / "operations.md"

# What Grafana would put in the expressions for a 1 s scrape interval.
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "5s",
    "$__range": "1m",
    "$service": ".+",
}
KEY_PANELS = ("Request rate", "Latency p50 / p99", "Orders by outcome")


def binary(name: str, package: str) -> str:
    """The path of ``name``; skip without it, or fail when running in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package {package!r})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run(*command: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_expressions() -> dict[str, list[str]]:
    """Each panel's title and its PromQL expressions, plus the annotation queries."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        exprs = [target["expr"] for target in panel.get("targets", [])]
        if exprs:
            found[panel["title"]] = exprs
    for annotation in dashboard["annotations"]["list"]:
        found[f"annotation {annotation['name']}"] = [annotation["expr"]]
    return found


def substitute(expr: str) -> str:
    # Longest names first: $__rate_interval before $__range and $__interval.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a Grafana variable left unsubstituted in {expr}"
    return expr


# --- static checks with the real tools ------------------------------------------------


async def test_promtool_accepts_the_file_sd_prometheus_config() -> None:
    promtool = binary("promtool", "prometheus")
    code, out = await run(promtool, "check", "config", str(MONITORING / "prometheus-static.yml"))
    assert code == 0, out
    assert "SUCCESS: 7 rules found" in out


async def test_the_deployment_config_finds_every_service_in_consul(tmp_path: Path) -> None:
    promtool = binary("promtool", "prometheus")
    config = load(MONITORING / "prometheus.yml")
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "simplebank"]
    assert job["consul_sd_configs"] == [{"server": "consul:8500", "refresh_interval": "15s"}]
    job_label = [r for r in job["relabel_configs"] if r.get("target_label") == "job"]
    assert job_label == [{"source_labels": ["__meta_consul_service"], "target_label": "job"}]
    # Debian builds Prometheus without Consul discovery, so promtool here refuses
    # consul_sd_configs as an unknown field: check everything else of the file with
    # file discovery in its place.
    job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    del job["consul_sd_configs"]
    config["rule_files"] = [str(RULES)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    code, out = await run(promtool, "check", "config", str(checked))
    assert code == 0, out


async def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    promtool = binary("promtool", "prometheus")
    code, out = await run(promtool, "check", "rules", str(RULES))
    assert code == 0, out
    code, out = await run(promtool, "test", "rules", str(RULE_TESTS))
    assert code == 0, out
    assert "SUCCESS" in out


def test_every_alert_is_tested_firing_and_quiet_and_has_a_runbook_line() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert len(names) == 7
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == names
    assert quiet == names
    runbook = OPERATIONS.read_text()
    for rule in alert_rules():
        assert f"### {rule['alert']}" in runbook, rule["alert"]
        assert rule["annotations"]["runbook"].endswith("#" + rule["alert"].lower())
        assert rule["labels"]["severity"] in ("critical", "warning")


async def test_amtool_accepts_the_alertmanager_config() -> None:
    amtool = binary("amtool", "prometheus-alertmanager")
    code, out = await run(amtool, "check-config", str(MONITORING / "alertmanager.yml"))
    assert code == 0, out
    config = load(MONITORING / "alertmanager.yml")
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] == "simplebank-notifications"
    [hook] = receivers["simplebank-notifications"]["webhook_configs"]
    assert hook["url"].endswith("/alerts")
    assert hook["send_resolved"] is True


# --- Alertmanager -> notifications -----------------------------------------------------


@contextlib.asynccontextmanager
async def server(tmp_path: Path, name: str, *command: str, ready: str) -> AsyncIterator[None]:
    """Run ``command``; yield once ``ready`` (a URL) answers 200; stop it afterwards."""
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 30
                while True:
                    assert process.returncode is None, log_path.read_text()[-2000:]
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(ready) as response:
                            if response.status == 200:
                                break
                    assert time.monotonic() < deadline, f"{name} was not ready in 30 s"
                    await asyncio.sleep(0.1)
            yield
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 15)
                except (TimeoutError, asyncio.TimeoutError):
                    process.kill()
                    await process.wait()


async def test_alertmanager_delivers_alerts_to_the_notifications_alert_log(
    tmp_path: Path, bank: Bank, session: aiohttp.ClientSession
) -> None:
    executable = binary("prometheus-alertmanager", "prometheus-alertmanager")
    config = load(MONITORING / "alertmanager.yml")
    # The deployment's config, pointed at this bank's notifications, without the waits.
    config["receivers"][0]["webhook_configs"][0]["url"] = bank.urls["notifications"] + "/alerts"
    for route in (config["route"], *config["route"]["routes"]):
        route["group_wait"] = "0s"
    config["route"]["group_interval"] = "1s"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    command = (
        executable,
        f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address={address}",
        "--cluster.listen-address=",
    )
    alert = {
        "labels": {
            "alertname": "SimpleBankSagaFailureRatio",
            "severity": "critical",
            "job": "orders",
        },
        "annotations": {"summary": "20% of orders end FAILED"},
        "generatorURL": "http://127.0.0.1:9090/graph",
    }
    async with server(tmp_path, "alertmanager", *command, ready=f"http://{address}/-/ready"):
        async with session.post(f"http://{address}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200, await response.text()
        stored = await poll_alerts(session, bank.urls["notifications"])
    assert stored["alertname"] == "SimpleBankSagaFailureRatio"
    assert stored["status"] == "firing"
    assert stored["severity"] == "critical"
    assert stored["labels"]["job"] == "orders"
    assert stored["annotations"] == {"summary": "20% of orders end FAILED"}
    assert stored["fingerprint"]


async def poll_alerts(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        async with session.get(url + "/alerts?status=firing") as response:
            alerts = (await response.json())["alerts"]
        if alerts:
            [stored] = alerts
            return stored  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, "notifications stored no alert in 30 s"
        await asyncio.sleep(0.2)


async def test_a_v4_webhook_payload_is_stored_and_resolved(
    bank: Bank, session: aiohttp.ClientSession
) -> None:
    url = bank.urls["notifications"]
    alert = {
        "status": "firing",
        "labels": {
            "alertname": "SimpleBankTargetDown",
            "severity": "critical",
            "job": "fees",
            "instance": "fees:8080",
        },
        "annotations": {"summary": "fees at fees:8080 cannot be scraped"},
        "startsAt": "2026-01-31T12:00:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
        "fingerprint": "c0ffee0123456789",
    }
    payload = {
        "version": "4",
        "groupKey": '{}/{severity="critical"}:{alertname="SimpleBankTargetDown", job="fees"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "simplebank-notifications",
        "groupLabels": {"alertname": "SimpleBankTargetDown", "job": "fees"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert],
    }
    async with session.post(url + "/alerts", json=payload) as response:
        assert response.status == 200
        assert await response.json() == {"received": 1}
    resolved = {
        **payload,
        "status": "resolved",
        "alerts": [{**alert, "status": "resolved", "endsAt": "2026-01-31T12:05:00Z"}],
    }
    async with session.post(url + "/alerts", json=resolved) as response:
        assert response.status == 200
    async with session.get(url + "/alerts") as response:
        [stored] = (await response.json())["alerts"]
    assert (stored["fingerprint"], stored["status"]) == ("c0ffee0123456789", "resolved")
    assert stored["ends_at"] == "2026-01-31T12:05:00Z"


# --- every dashboard and alert expression against a real Prometheus ---------------------


async def query(session: aiohttp.ClientSession, url: str, promql: str) -> list[Any]:
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        body: dict[str, Any] = await response.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


async def test_every_dashboard_and_alert_expression_runs_on_the_scraped_bank(
    tmp_path: Path, bank: Bank, session: aiohttp.ClientSession
) -> None:
    executable = binary("prometheus", "prometheus")
    services = {name: url for name, url in bank.urls.items() if name in bank.services}
    targets = [
        {"targets": [url.removeprefix("http://")], "labels": {"job": name}}
        for name, url in services.items()
    ]
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    config = load(MONITORING / "prometheus-static.yml")
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["scrape_configs"][0]["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    config["rule_files"] = [str(RULES)]
    del config["alerting"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    url = f"http://{address}"
    command = (
        executable,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address={address}",
    )
    async with server(tmp_path, "prometheus", *command, ready=f"{url}/-/ready"):
        anna = await Customer(session, bank, "Anna").sign_up()
        await anna.deposit(1_000_000)
        assert (await anna.order("buy", "VTI", 4))["state"] == "FILLED"
        assert (await anna.order("sell", "VTI", 1))["state"] == "FILLED"

        # Wait (bounded) until every service is up and the key panels have data.
        panels = dashboard_expressions()
        deadline = time.monotonic() + 40
        while True:
            up = await query(session, url, "up == 1")
            empty = [
                title
                for title in KEY_PANELS
                for expr in panels[title]
                if not await query(session, url, substitute(expr))
            ]
            if len(up) == len(services) and not empty:
                break
            assert time.monotonic() < deadline, (f"{len(up)} of {len(services)} up", empty)
            await asyncio.sleep(0.5)

        for exprs in panels.values():
            for expr in exprs:
                await query(session, url, substitute(expr))  # asserts success
        outcomes = await query(session, url, "sum by (outcome) (simplebank_orders_total)")
        assert {r["metric"]["outcome"]: float(r["value"][1]) for r in outcomes} == {"filled": 2}

        for rule in alert_rules():
            await query(session, url, rule["expr"])  # asserts success

        # The dashboard's service variable: label_values(chassis_service_info, job).
        params = {"match[]": "chassis_service_info"}
        async with session.get(f"{url}/api/v1/label/job/values", params=params) as response:
            assert set((await response.json())["data"]) == set(services)
        async with session.get(f"{url}/api/v1/rules") as response:
            groups = (await response.json())["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {
            r["alert"] for r in alert_rules()
        }
        assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups


def test_the_dashboard_queries_one_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = load(MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    [source] = datasources["datasources"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    assert re.fullmatch(r"[a-z0-9-]+", dashboard["uid"])
    provider = load(MONITORING / "grafana" / "provisioning" / "dashboards" / "simplebank.yml")
    assert provider["providers"][0]["type"] == "file"
