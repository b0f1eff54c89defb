"""The deployment artefacts of examples/simplebank/deploy: Dockerfile, compose.yaml,
the Kubernetes manifests, the Jenkinsfile, the Fluentd config and the smoke test.

No Docker engine or cluster runs here, so each file is checked for what can be
checked without one: the manifests against the Kubernetes API schemas
(``kubernetes-validate``, offline), every ``CHASSIS_*`` variable against the real
settings classes, every ``chassis run`` target by importing it, and every probe path
and the smoke test against the real services.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from simplebank.common import BankSettings
from simplebank.services import Bank

from chassis.config import ChassisSettings, load_settings
from chassis.logging import ChassisJsonFormatter

EXAMPLE = Path(__file__).resolve().parents[1]
DEPLOY = EXAMPLE / "deploy"
K8S = DEPLOY / "k8s"
RUNNING_MD = EXAMPLE.parents[1] / "docs" / "simplebank" / "running.md"
KUBERNETES_VERSION = "1.30"
CHASSIS_PROBES = {
    "livenessProbe": "/health/live",
    "readinessProbe": "/health/ready",
    "startupProbe": "/health/startup",
}


def documented_services() -> dict[str, str]:
    """Service name -> ``chassis run`` target, from the table of running.md."""
    rows = re.findall(
        r"^\| ([a-z-]+) \| `(simplebank\.\w+:create)` \|", RUNNING_MD.read_text(), re.M
    )
    assert len(rows) == 10, rows
    return dict(rows)


SERVICES = documented_services()


def import_target(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def env_names(model: type[BaseModel], prefix: str = "CHASSIS_") -> set[str]:
    """Every environment variable that sets a field of ``model`` (nested with ``__``)."""
    names = set()
    for field, info in model.model_fields.items():
        name = prefix + field.upper()
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= env_names(annotation, name + "__")
        else:
            names.add(name)
    return names


KNOWN_ENV = env_names(BankSettings)


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> BankSettings:
    """The settings a service would read from ``env`` (unknown names are refused first)."""
    unknown = sorted(set(env) - KNOWN_ENV)
    assert not unknown, f"not CHASSIS_* settings: {unknown}"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return load_settings(BankSettings)
    finally:
        for name in env:
            monkeypatch.delenv(name)


def drain_budget(settings: ChassisSettings) -> float:
    """How long a drain may take: drain delay, in-flight requests, then event handlers."""
    return (
        settings.health.drain_delay_seconds
        + settings.health.shutdown_timeout_seconds
        + settings.events.stop_timeout_seconds
    )


# --- Kubernetes ----------------------------------------------------------------------


def load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("simplebank_k8s_generate", K8S / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return objects


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def chassis_containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The containers of ``deployment`` that run a chassis service."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if container.get("args", [""])[0] in SERVICES.values():
            yield container


def container_env(
    container: dict[str, Any], config_maps: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """The container's environment; secrets get placeholder values of the right shape."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    placeholders = {
        "CHASSIS_EVENTS__URL": "amqp://user:password@rabbitmq:5672/",
        "CHASSIS_AUTH__TOKEN_SECRET": "x" * 43,
    }
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            assert "secretKeyRef" in variable["valueFrom"], variable
            env[variable["name"]] = placeholders[variable["name"]]
    return env


def test_the_committed_manifests_are_what_the_generator_writes() -> None:
    generated = load_generator().files()
    committed = {p.name: p.read_text() for p in K8S.glob("*.yaml")}
    assert committed == generated, "run examples/simplebank/deploy/k8s/generate.py"


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    objects = k8s_objects()
    assert len(objects) > 30
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.caught.message}")


def test_every_service_has_a_deployment_a_service_and_a_config_map() -> None:
    deployments, services, config_maps = (
        of_kind("Deployment"),
        of_kind("Service"),
        of_kind("ConfigMap"),
    )
    for name, target in SERVICES.items():
        assert [c["args"] for c in chassis_containers(deployments[name])] == [[target]]
        assert name in services and name in config_maps
        assert callable(import_target(target))
    assert set(services) == set(SERVICES)


def test_probes_use_the_chassis_endpoints_on_the_served_port() -> None:
    for deployment in of_kind("Deployment").values():
        for container in chassis_containers(deployment):
            port_names = {p["name"] for p in container["ports"]}
            for probe, path in CHASSIS_PROBES.items():
                assert container[probe]["httpGet"]["path"] == path, (container["name"], probe)
                assert container[probe]["httpGet"]["port"] in port_names


async def test_the_probe_paths_answer_200_on_every_running_service(bank: Bank) -> None:
    deployments = of_kind("Deployment")
    async with aiohttp.ClientSession() as session:
        for name in SERVICES:
            for container in chassis_containers(deployments[name]):
                for probe in CHASSIS_PROBES:
                    url = bank.urls[name] + container[probe]["httpGet"]["path"]
                    async with session.get(url) as answer:
                        assert answer.status == 200, (name, probe, await answer.text())


def test_config_maps_hold_valid_settings_and_the_grace_period_covers_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_maps = of_kind("ConfigMap")
    for deployment in of_kind("Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        for container in chassis_containers(deployment):
            settings = settings_from(container_env(container, config_maps), monkeypatch)
            assert settings.http.host == "0.0.0.0"
            assert settings.http.port == container["ports"][0]["containerPort"]
            assert settings.log.format == "json"
            assert settings.events.backend == "rabbitmq"
            assert settings.tracing.endpoint is not None
            assert pod["terminationGracePeriodSeconds"] >= drain_budget(settings)
            # Readiness fails within the drain delay, so the pod leaves the Service
            # before its listener closes.
            ready = container["readinessProbe"]
            assert (
                ready["periodSeconds"] * ready["failureThreshold"]
                <= settings.health.drain_delay_seconds
            )
            name = deployment["metadata"]["labels"]["app.kubernetes.io/name"]
            # Every other service is reachable by its Service name (market: also the exchange).
            assert set(settings.discovery.static) - {"exchange"} == set(SERVICES) - {name}
            if name in ("gateway", "customers"):
                assert settings.auth.token_secret is not None


def test_every_pod_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    for deployment in of_kind("Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_canary_shares_the_gateway_service_but_not_its_deployment_selector() -> None:
    deployments = of_kind("Deployment")
    stable, canary = deployments["gateway"], deployments["gateway-canary"]
    selector = of_kind("Service")["gateway"]["spec"]["selector"]
    for deployment in (stable, canary):
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    stable_pods = stable["spec"]["selector"]["matchLabels"]
    canary_pods = canary["spec"]["selector"]["matchLabels"]
    assert not stable_pods.items() <= canary["spec"]["template"]["metadata"]["labels"].items()
    assert not canary_pods.items() <= stable["spec"]["template"]["metadata"]["labels"].items()
    assert chassis_containers(canary).__next__()["args"] == ["simplebank.gateway:create"]


def test_the_gateway_scales_and_keeps_an_instance_through_disruptions() -> None:
    pdb = of_kind("PodDisruptionBudget")["gateway"]
    hpa = of_kind("HorizontalPodAutoscaler")["gateway"]
    service_selector = of_kind("Service")["gateway"]["spec"]["selector"]
    assert pdb["spec"]["selector"]["matchLabels"] == service_selector
    assert pdb["spec"]["minAvailable"] >= 1
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_services_that_own_data_keep_it_on_their_own_volume_with_one_writer() -> None:
    claims = of_kind("PersistentVolumeClaim")
    for name in set(SERVICES) - {"gateway"}:
        deployment = of_kind("Deployment")[name]
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] in claims


# --- compose.yaml ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value: str) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` with test values."""
    return re.sub(r"\$\{[A-Z_]+(:[-?][^}]*)?\}", "t" * 43, value)


def test_compose_runs_every_service_and_the_whole_stack() -> None:
    services = compose()["services"]
    expected = {
        "consul",
        "rabbitmq",
        "prometheus",
        "alertmanager",
        "grafana",
        "otel-collector",
        "jaeger",
        "fluentd",
        "elasticsearch",
        "kibana",
        "exchange",
    }
    assert set(services) == expected | set(SERVICES)
    for name, target in SERVICES.items():
        assert services[name]["command"] == [target]
        assert callable(import_target(target))
        assert services[name]["logging"]["driver"] == "fluentd"


def test_compose_references_only_what_exists() -> None:
    document = compose()
    services = document["services"]
    volumes = set(document["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in volumes, (name, source)
        build = service.get("build")
        if isinstance(build, str):
            assert (DEPLOY / build / "Dockerfile").is_file()
        elif build is not None:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_configures_every_service_with_valid_chassis_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = compose()["services"]
    for name in SERVICES:
        environment = {k: interpolate(str(v)) for k, v in services[name]["environment"].items()}
        settings = settings_from(environment, monkeypatch)
        assert settings.discovery.backend == "consul"
        assert settings.discovery.consul_addr == "http://consul:8500"
        assert settings.discovery.advertise_address == name
        assert settings.events.backend == "rabbitmq"
        assert "@rabbitmq:5672" in settings.events.url.get_secret_value()
        assert settings.tracing.endpoint == "http://otel-collector:4318/v1/traces"
        assert settings.http.host == "0.0.0.0"
        if name != "gateway":
            assert settings.database.path == f"/data/{name}.db"
        grace = services[name]["stop_grace_period"]
        assert float(grace.removesuffix("s")) >= drain_budget(settings)


def test_the_exchange_stand_in_runs_beside_market() -> None:
    exchange = compose()["services"]["exchange"]
    assert exchange["network_mode"] == "service:market"
    assert exchange["entrypoint"][:2] == ["simplebank", "exchange"]


# --- Dockerfile -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_the_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    instructions = dockerfile()
    stages = [args for word, args in instructions if word == "FROM"]
    assert len(stages) >= 2
    last_stage = len(instructions) - [w for w, _ in instructions][::-1].index("FROM")
    users = [args for word, args in instructions[last_stage:] if word == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric user lets Kubernetes check runAsNonRoot"
    pod_user = of_kind("Deployment")["gateway"]["spec"]["template"]["spec"]["securityContext"]
    assert int(user) == pod_user["runAsUser"]


def test_the_dockerfile_checks_liveness_and_runs_a_chassis_target() -> None:
    instructions = dict(dockerfile())  # the last of each instruction
    assert "/health/live" in instructions["HEALTHCHECK"]
    assert json.loads(instructions["ENTRYPOINT"]) == ["chassis", "run"]
    (target,) = json.loads(instructions["CMD"])
    assert target in SERVICES.values()
    assert callable(import_target(target))


# --- Jenkinsfile -------------------------------------------------------------------------


def test_the_pipeline_has_the_stages_in_order_and_rolls_back() -> None:
    text = (DEPLOY / "Jenkinsfile").read_text()
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages == [
        "Build",
        "Unit test",
        "Package",
        "Deploy staging",
        "Test staging",
        "Canary",
        "Deploy production",
    ]
    failure = text[text.index("failure {") :]
    assert "rollout undo" in failure and "gateway-canary.yaml" in failure
    assert "deploy/smoke.py" in text
    assert "generate.py --check" in text


# --- Fluentd -----------------------------------------------------------------------------


def test_fluentd_parses_the_json_logs_and_ships_them_to_elasticsearch() -> None:
    conf = (DEPLOY / "fluentd" / "fluent.conf").read_text()
    assert re.search(r"<match simplebank\.\*\*>\s+@type elasticsearch", conf)
    assert re.search(r"<filter simplebank\.\*\*>\s+@type parser\s+key_name log", conf)
    assert re.search(r"<parse>\s+@type json", conf)
    assert "reserve_data true" in conf
    assert "remove_keys" not in conf  # nothing drops trace_id and friends
    # The docker logging driver tags records simplebank.<container>: the filter matches.
    assert compose()["services"]["gateway"]["logging"]["options"]["tag"].startswith("simplebank.")
    assert "fluent-plugin-elasticsearch" in (DEPLOY / "fluentd" / "Dockerfile").read_text()


def test_a_chassis_log_line_has_the_fields_and_time_format_fluentd_expects() -> None:
    conf = (DEPLOY / "fluentd" / "fluent.conf").read_text()
    ruby_format = re.search(r"time_format (\S+)", conf)
    assert ruby_format is not None
    record = logging.LogRecord("orders", logging.INFO, __file__, 1, "order filled", None, None)
    line = json.loads(ChassisJsonFormatter(service="orders").format(record))
    assert "trace_id" in line and "span_id" in line
    assert re.search(r"time_key timestamp\b", conf)
    python_format = ruby_format.group(1).replace("%L", "%f")
    datetime.strptime(line["timestamp"], python_format)


# --- the staging smoke test ----------------------------------------------------------------


async def test_the_smoke_test_passes_against_a_running_bank(bank: Bank) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEPLOY / "smoke.py"),
        bank.urls["gateway"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert "FILLED" in out.decode()
