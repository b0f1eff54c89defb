"""notifications: the Alertmanager webhook receiver (the book's ``alerts``)."""

from __future__ import annotations

from typing import Any

import aiohttp
from simplebank.services import Bank


def webhook(status: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="HighErrorRatio"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "simplebank",
        "groupLabels": {"alertname": "HighErrorRatio"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def alert(status: str, ends_at: str = "0001-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRatio", "service": "orders", "severity": "page"},
        "annotations": {"summary": "orders answers more than 5 % errors"},
        "startsAt": "2025-01-31T12:00:00Z",
        "endsAt": ends_at,
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": "a1b2c3d4e5f60718",
    }


async def test_alertmanager_webhooks_are_stored_and_resolved(
    bank: Bank, session: aiohttp.ClientSession
) -> None:
    url = bank.urls["notifications"]
    async with session.post(url + "/alerts", json=webhook("firing", alert("firing"))) as response:
        assert response.status == 200 and (await response.json()) == {"received": 1}
    async with session.get(url + "/alerts?status=firing") as response:
        [stored] = (await response.json())["alerts"]
    assert (stored["alertname"], stored["severity"], stored["status"]) == (
        "HighErrorRatio",
        "page",
        "firing",
    )
    resolved = webhook("resolved", alert("resolved", "2025-01-31T12:10:00Z"))
    async with session.post(url + "/alerts", json=resolved) as response:
        assert response.status == 200
    async with session.get(url + "/alerts") as response:
        [stored] = (await response.json())["alerts"]
    assert stored["status"] == "resolved" and stored["ends_at"] == "2025-01-31T12:10:00Z"
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    assert 'simplebank_alerts_received_total{status="resolved"} 1.0' in text


async def test_a_malformed_webhook_is_refused_and_stores_nothing(
    bank: Bank, session: aiohttp.ClientSession
) -> None:
    url = bank.urls["notifications"]
    for body in ({"status": "firing"}, {"status": "odd", "alerts": []}, [1, 2]):
        async with session.post(url + "/alerts", json=body) as response:
            assert response.status == 422
    async with session.post(url + "/alerts", data=b"{") as response:
        assert response.status == 400
    async with session.get(url + "/alerts") as response:
        assert (await response.json())["alerts"] == []
