"""Write SimpleBank's Kubernetes manifests (one YAML file per service) next to this script.

    python examples/simplebank/deploy/k8s/generate.py           # rewrite the files
    python examples/simplebank/deploy/k8s/generate.py --check   # exit 1 if they are stale

The ten services share one image (``deploy/Dockerfile``) and differ only in the
``chassis run`` target, their ConfigMap and whether they own data:

* the gateway owns nothing: two replicas or more (HPA), a PodDisruptionBudget and a
  canary Deployment whose pods the same Service selects;
* every other service keeps its SQLite file on its own PersistentVolumeClaim, so it
  runs one replica with the ``Recreate`` strategy (two pods never open the file).

Every pod drains as ``docs/lifecycle.md`` describes; its grace period covers the
drain delay, the shutdown timeout and the event handlers' stop timeout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
IMAGE = "simplebank:0.1.0"
PORT = 8080
EXCHANGE_PORT = 9100
SECRET = "simplebank-secrets"
TRACES_ENDPOINT = "http://otel-collector.observability:4318/v1/traces"
UID = 10001

# name -> module of its ``create()`` factory (docs/simplebank/running.md)
SERVICES = {
    "gateway": "gateway",
    "customers": "customers",
    "accounts": "accounts",
    "orders": "orders",
    "market": "market",
    "fees": "fees",
    "market-data": "market_data",
    "holdings": "holdings",
    "strategies": "strategies",
    "notifications": "notifications",
}
STATELESS = {"gateway"}
NEEDS_TOKEN_SECRET = {"gateway", "customers"}

DRAIN_DELAY_SECONDS = 5.0
SHUTDOWN_TIMEOUT_SECONDS = 20.0
EVENTS_STOP_TIMEOUT_SECONDS = 10.0
GRACE_MARGIN_SECONDS = 5.0
GRACE_PERIOD_SECONDS = math.ceil(
    DRAIN_DELAY_SECONDS
    + SHUTDOWN_TIMEOUT_SECONDS
    + EVENTS_STOP_TIMEOUT_SECONDS
    + GRACE_MARGIN_SECONDS
)


def target(name: str) -> str:
    """The ``chassis run`` target of service ``name``."""
    return f"simplebank.{SERVICES[name]}:create"


def labels(name: str, track: str | None = None) -> dict[str, str]:
    found = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "simplebank"}
    if track is not None:
        found["track"] = track
    return found


def config_data(name: str) -> dict[str, str]:
    """The ``CHASSIS_*`` variables of ``name`` (secrets come from the Secret instead)."""
    static = {other: [f"http://{other}"] for other in SERVICES if other != name}
    if name == "market":
        # The exchange stand-in runs beside market in its pod (see the sidecar).
        static["exchange"] = [f"http://127.0.0.1:{EXCHANGE_PORT}"]
    data = {
        "CHASSIS_ENVIRONMENT": "production",
        "CHASSIS_LOG__FORMAT": "json",
        "CHASSIS_HTTP__HOST": "0.0.0.0",
        "CHASSIS_HTTP__PORT": str(PORT),
        "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS": str(DRAIN_DELAY_SECONDS),
        "CHASSIS_HEALTH__SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_SECONDS),
        "CHASSIS_EVENTS__BACKEND": "rabbitmq",
        "CHASSIS_EVENTS__STOP_TIMEOUT_SECONDS": str(EVENTS_STOP_TIMEOUT_SECONDS),
        # Kubernetes Services are the discovery: one stable name, kube-proxy balances.
        "CHASSIS_DISCOVERY__BACKEND": "static",
        "CHASSIS_DISCOVERY__STATIC": json.dumps(static, separators=(",", ":")),
        "CHASSIS_TRACING__ENDPOINT": TRACES_ENDPOINT,
    }
    if name not in STATELESS:
        data["CHASSIS_DATABASE__PATH"] = f"/data/{name}.db"
    return data


def secret_env(name: str) -> list[dict[str, Any]]:
    keys = {"CHASSIS_EVENTS__URL": "events-url"}
    if name in NEEDS_TOKEN_SECRET:
        keys["CHASSIS_AUTH__TOKEN_SECRET"] = "token-secret"
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
        for var, key in keys.items()
    ]


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def service_container(name: str) -> dict[str, Any]:
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if name not in STATELESS:
        mounts.append({"name": "data", "mountPath": "/data"})
    return {
        "name": name,
        "image": IMAGE,
        "args": [target(name)],
        "ports": [{"name": "http", "containerPort": PORT}],
        "envFrom": [{"configMapRef": {"name": name}}],
        "env": secret_env(name),
        # Startup first (up to 60 s), then liveness restarts a stuck process and
        # readiness (failing within 4 s, under the drain delay) takes it out of the Service.
        "startupProbe": probe("/health/startup", 2, 30),
        "livenessProbe": probe("/health/live", 10, 3),
        "readinessProbe": probe("/health/ready", 2, 2),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        },
        "securityContext": container_security(),
        "volumeMounts": mounts,
    }


def exchange_sidecar() -> dict[str, Any]:
    """The exchange stand-in beside market (a real bank points market at its broker)."""
    return {
        "name": "exchange",
        "image": IMAGE,
        "command": ["simplebank", "exchange", "--port", str(EXCHANGE_PORT)],
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "200m", "memory": "128Mi"},
        },
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def deployment(name: str, *, track: str, replicas: int) -> dict[str, Any]:
    containers = [service_container(name)]
    if name == "market":
        containers.append(exchange_sidecar())
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"medium": "Memory"}}]
    if name not in STATELESS:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-db"}})
    strategy: dict[str, Any] = (
        {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        if name in STATELESS
        else {"type": "Recreate"}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name if track == "stable" else f"{name}-{track}",
            "labels": labels(name, track),
        },
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": labels(name, track)},
            "template": {
                "metadata": {"labels": labels(name, track)},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_PERIOD_SECONDS,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": containers,
                    "volumes": volumes,
                },
            },
        },
    }


def manifests(name: str) -> list[dict[str, Any]]:
    """Every object of service ``name``, in apply order."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels(name)},
            "data": config_data(name),
        }
    ]
    if name not in STATELESS:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"{name}-db", "labels": labels(name)},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    docs.append(deployment(name, track="stable", replicas=2 if name in STATELESS else 1))
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels(name)},
            "spec": {
                # No track: stable and canary pods both receive traffic.
                "selector": labels(name),
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        }
    )
    if name in STATELESS:
        docs.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "labels": labels(name)},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": labels(name)}},
            }
        )
        docs.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "labels": labels(name)},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": 2,
                    "maxReplicas": 10,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": 70},
                            },
                        }
                    ],
                },
            }
        )
    return docs


def render(docs: list[dict[str, Any]]) -> str:
    head = "# Generated by generate.py from this folder: edit that script, not this file.\n"
    return head + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)


def files() -> dict[str, str]:
    """File name -> content of every generated manifest."""
    out = {f"{name}.yaml": render(manifests(name)) for name in SERVICES}
    # Applied by the pipeline's canary stage only; deleted again on promotion or rollback.
    out["gateway-canary.yaml"] = render([deployment("gateway", track="canary", replicas=1)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for filename, text in files().items():
        path = HERE / filename
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(filename)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale (run generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
