"""The gateway never exposes the chassis' live state (``/_chassis``), whatever the settings."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from simplebank.services import run_services

from chassis.config import IntrospectionSettings
from conftest import bank_settings

TOKEN = "ops-token-SECRET-9"


async def test_the_gateway_answers_404_for_chassis_paths_in_production(tmp_path: Path) -> None:
    settings = bank_settings(introspection={"token": TOKEN}).model_copy(
        update={"environment": "production"}
    )
    assert isinstance(settings.introspection, IntrospectionSettings)
    async with (
        run_services(tmp_path, names=["accounts", "gateway"], settings=settings) as bank,
        aiohttp.ClientSession() as session,
    ):
        # An internal service serves it to a holder of the token...
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(bank.urls["accounts"] + "/_chassis", headers=auth) as response:
            assert response.status == 200
            assert (await response.json())["service"]["name"] == "accounts"
        # ...the public edge to nobody, token or not.
        for path in ("/_chassis", "/_chassis/ui", "/_chassis/", "/_CHASSIS"):
            for headers in ({}, auth):
                async with session.get(bank.urls["gateway"] + path, headers=headers) as response:
                    assert response.status == 404, path
                    body = await response.text()
                assert TOKEN not in body
                for leak in ('"service"', "instance_id", "settings", "accounts"):
                    assert leak not in body
