"""StaticRegistry, the Discovery capability over it, and discovery settings errors."""

from __future__ import annotations

import asyncio

import pytest

from chassis import ConfigError, LifecycleError, Service
from chassis.config import ChassisSettings, load_settings
from chassis.discovery import (
    ConsulRegistry,
    Discovery,
    Instance,
    Registration,
    Registry,
    StaticRegistry,
)

from .conftest import discovery_of


async def test_static_registry_resolves_configured_urls_to_instances() -> None:
    registry = StaticRegistry(
        {
            "market-data": ["http://127.0.0.1:8001", "https://md.internal", "http://[::1]:9"],
            "empty": [],
        }
    )
    found = await registry.resolve("market-data")
    assert [(i.scheme, i.address, i.port) for i in found] == [
        ("http", "127.0.0.1", 8001),
        ("https", "md.internal", 443),
        ("http", "::1", 9),
    ]
    assert [i.url for i in found] == [
        "http://127.0.0.1:8001",
        "https://md.internal:443",
        "http://[::1]:9",
    ]
    assert len({i.id for i in found}) == 3
    assert all(i.service == "market-data" for i in found)
    assert await registry.resolve("empty") == []
    assert await registry.resolve("unknown") == []
    # Callers get a copy: mutating it does not change the registry.
    found.clear()
    assert len(await registry.resolve("market-data")) == 3
    await registry.aclose()


async def test_static_registration_is_a_no_op() -> None:
    registry = StaticRegistry({"orders": ["http://127.0.0.1:8000"]})
    me = Registration(service="orders", id="orders-1", address="10.0.0.9", port=1, version="1")
    await registry.register(me)
    await registry.deregister(me)
    assert [i.address for i in await registry.resolve("orders")] == ["127.0.0.1"]


async def test_static_watch_yields_once_then_waits_until_closed() -> None:
    registry = StaticRegistry({"orders": ["http://127.0.0.1:8000"]})
    watch = registry.watch("orders")
    first = await asyncio.wait_for(anext(watch), 5)
    assert [i.port for i in first] == [8000]
    second = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)
    assert not second.done()  # no second answer: nothing ever changes
    await registry.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(second, 5)


def test_back_ends_implement_the_registry_protocol() -> None:
    assert isinstance(StaticRegistry(), Registry)
    assert all(
        callable(getattr(ConsulRegistry, name))
        for name in ("register", "deregister", "resolve", "watch", "aclose")
    )


def test_instance_url_brackets_ipv6() -> None:
    assert Instance("a", "1", "10.0.0.5", 8080).url == "http://10.0.0.5:8080"
    assert Instance("a", "1", "fe80::1", 80, scheme="https").url == "https://[fe80::1]:80"


def test_static_map_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_DISCOVERY__STATIC", '{"market-data": ["http://127.0.0.1:8001"]}')
    assert load_settings().discovery.static == {"market-data": ["http://127.0.0.1:8001"]}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("{market-data: http://x}", "not a JSON object of service name to URLs"),
        ('["http://127.0.0.1:8001"]', "must be a JSON object"),
        ('{"md": "http://127.0.0.1:8001"}', "'md' must map to a list of URL strings"),
        ('{"md": ["127.0.0.1:8001"]}', "is not an http:// or https:// URL with a host"),
        ('{"md": ["http://127.0.0.1:8001/api"]}', "must be a base URL"),
    ],
)
def test_a_bad_static_map_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, reason: str
) -> None:
    monkeypatch.setenv("CHASSIS_DISCOVERY__STATIC", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    [(name, message)] = caught.value.errors
    assert name == "CHASSIS_DISCOVERY__STATIC"
    assert reason in message
    assert "CHASSIS_DISCOVERY__STATIC" in str(caught.value)


def test_a_bad_consul_address_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_DISCOVERY__CONSUL_ADDR", "127.0.0.1:8500")
    with pytest.raises(ConfigError, match="CHASSIS_DISCOVERY__CONSUL_ADDR"):
        load_settings()


def test_the_consul_token_stays_out_of_errors_and_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_DISCOVERY__CONSUL_TOKEN", "s3cr3t-token")
    monkeypatch.setenv("CHASSIS_DISCOVERY__CHECK_INTERVAL_SECONDS", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "s3cr3t-token" not in str(caught.value)
    monkeypatch.delenv("CHASSIS_DISCOVERY__CHECK_INTERVAL_SECONDS")
    settings = load_settings()
    assert settings.discovery.consul_token is not None
    assert settings.discovery.consul_token.get_secret_value() == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(settings)


async def test_service_resolves_through_static_discovery() -> None:
    settings = ChassisSettings(
        health={"drain_delay_seconds": 0},
        discovery={"static": {"market-data": ["http://127.0.0.1:8001"]}},
    )
    service = Service("orders", version="1.0.0", settings=settings)
    discovery = discovery_of(service)
    with pytest.raises(LifecycleError, match="not running"):
        _ = discovery.registry
    async with service.running("127.0.0.1", 0) as running:
        assert isinstance(discovery.registry, StaticRegistry)
        [instance] = await discovery.resolve("market-data")
        assert instance.url == "http://127.0.0.1:8001"
        # Registration is a no-op for static discovery, but records what it would say.
        assert discovery.registration is not None
        assert discovery.registration.port == running.port
        assert discovery.registration.service == "orders"
        # No agent to check: static discovery adds no readiness check.
        assert "consul" not in service.health.checks
    with pytest.raises(LifecycleError):
        await discovery.resolve("market-data")


async def test_explicit_registry_is_used_and_left_open() -> None:
    registry = StaticRegistry({"a": ["http://127.0.0.1:1"]})
    service = Service("orders", settings=ChassisSettings(health={"drain_delay_seconds": 0}))
    discovery = Discovery(service_name="orders", registry=registry)
    service.install(discovery)
    async with service.running("127.0.0.1", 0):
        assert discovery.registry is registry
    # Still usable: the caller owns it.
    assert [i.port for i in await registry.resolve("a")] == [1]
    await registry.aclose()
