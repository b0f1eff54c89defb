"""Building and running the services together: one SQLite file each, static discovery, probes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from simplebank.services import SERVICES, build, run_services

from chassis.events import InMemoryBroker
from conftest import bank_settings


def test_build_gives_each_service_its_own_database_and_the_discovery_map(tmp_path: Path) -> None:
    urls = {name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(SERVICES)}
    services = build(tmp_path, urls, settings=bank_settings())
    assert [s.name for s in services] == list(SERVICES)
    for service in services:
        assert service.settings.database.path == str(tmp_path / f"{service.name}.db")
        assert service.settings.discovery.static["orders"] == [urls["orders"]]


async def test_every_service_serves_its_probes_and_metrics(tmp_path: Path) -> None:
    async with (
        run_services(tmp_path, settings=bank_settings(), broker=InMemoryBroker()) as bank,
        aiohttp.ClientSession() as http,
    ):
        for name in SERVICES:
            async with http.get(bank.urls[name] + "/health/ready") as response:
                assert response.status == 200, name
            async with http.get(bank.urls[name] + "/metrics") as response:
                assert "http_server_request_duration_seconds" in await response.text()
        owners = [name for name in SERVICES if name != "gateway"]  # the gateway owns no data
        assert sorted(p.name for p in tmp_path.glob("*.db")) == sorted(f"{n}.db" for n in owners)
