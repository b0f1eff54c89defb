"""Typed configuration: precedence, nesting, validation messages, secrets."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, field_validator

from chassis import ChassisSettings, ConfigError, Service, load_settings

from .conftest import REPO, LogCapture


class ShopSettings(ChassisSettings):
    api_key: SecretStr
    exchange_url: str = "http://127.0.0.1:9100"


def test_defaults_apply_without_any_source() -> None:
    settings = load_settings()
    assert settings.http.port == 8080
    assert settings.log.level == "INFO"
    assert settings.environment == "development"


def test_env_vars_use_prefix_and_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_HTTP__PORT", "9001")
    monkeypatch.setenv("CHASSIS_LOG__LEVEL", "DEBUG")
    monkeypatch.setenv("CHASSIS_ENVIRONMENT", "staging")
    settings = load_settings()
    assert (settings.http.port, settings.log.level, settings.environment) == (
        9001,
        "DEBUG",
        "staging",
    )


def test_precedence_kwargs_over_env_over_dotenv_over_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "CHASSIS_HTTP__PORT=7001\nCHASSIS_ENVIRONMENT=from-dotenv\nCHASSIS_LOG__LEVEL=WARNING\n"
    )
    monkeypatch.setenv("CHASSIS_HTTP__PORT", "7002")
    monkeypatch.setenv("CHASSIS_ENVIRONMENT", "from-env")

    settings = load_settings(environment="from-kwargs")
    assert settings.environment == "from-kwargs"  # kwargs beat env
    assert settings.http.port == 7002  # env beats .env
    assert settings.log.level == "WARNING"  # .env beats defaults
    assert settings.health.drain_delay_seconds == 5.0  # defaults last


def test_invalid_config_lists_every_bad_field_with_its_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHASSIS_HTTP__PORT", "70000")
    monkeypatch.setenv("CHASSIS_LOG__LEVEL", "LOUD")
    monkeypatch.setenv("CHASSIS_HEALTH__DRAIN_DELAY_SECONDS", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid configuration (3 errors):")
    for var in ("CHASSIS_HTTP__PORT", "CHASSIS_LOG__LEVEL", "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS"):
        assert var in message
    assert "less than or equal to 65535" in message
    assert "'LOUD'" in message
    assert [name for name, _ in info.value.errors] == [
        "CHASSIS_LOG__LEVEL",
        "CHASSIS_HTTP__PORT",
        "CHASSIS_HEALTH__DRAIN_DELAY_SECONDS",
    ]
    assert isinstance(info.value, ValueError)


def test_missing_required_service_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="CHASSIS_API_KEY: Field required"):
        load_settings(ShopSettings)


def test_service_reads_settings_at_startup_not_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHASSIS_HTTP__PORT", "not-a-port")
    service = Service("lazy", settings=ShopSettings)  # builds fine
    monkeypatch.setenv("CHASSIS_API_KEY", "k")
    with pytest.raises(ConfigError, match="CHASSIS_HTTP__PORT"):
        _ = service.settings
    monkeypatch.setenv("CHASSIS_HTTP__PORT", "9002")
    assert service.settings.http.port == 9002
    assert isinstance(service.settings, ShopSettings)


SECRET = "hunter2-very-secret-token"


def test_secret_never_appears_in_repr_str_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHASSIS_API_KEY", SECRET)
    settings = load_settings(ShopSettings)
    assert settings.api_key.get_secret_value() == SECRET
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.api_key)):
        assert SECRET not in text


def test_secret_never_appears_in_logs(monkeypatch: pytest.MonkeyPatch, logs: LogCapture) -> None:
    monkeypatch.setenv("CHASSIS_API_KEY", SECRET)
    settings = load_settings(ShopSettings)
    logging.getLogger("app").info("settings are %s", settings, extra={"settings": settings})
    logging.getLogger("app").info("key %r", settings.api_key, extra={"key": settings.api_key})
    assert logs.lines
    assert all(SECRET not in line for line in logs.lines)


def test_secret_never_appears_in_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    class Strict(ChassisSettings):
        token: SecretStr
        count: int

    monkeypatch.setenv("CHASSIS_COUNT", SECRET)  # a plain field: its bad value is shown
    with pytest.raises(ConfigError) as info:
        load_settings(Strict)
    assert "CHASSIS_TOKEN" in str(info.value)

    class Short(ChassisSettings):
        token: SecretStr = SecretStr("x")
        nested: dict[str, int] = {}

    monkeypatch.setenv("CHASSIS_TOKEN", SECRET)
    monkeypatch.setenv("CHASSIS_NESTED", '{"a": "' + SECRET + '"}')
    with pytest.raises(ConfigError) as info2:
        load_settings(Short)
    assert "CHASSIS_NESTED" in str(info2.value)
    # The chained pydantic error (which shows inputs) is suppressed.
    assert info2.value.__suppress_context__
    assert info2.value.__cause__ is None


def test_secret_field_input_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Checked(ChassisSettings):
        token: SecretStr

        @field_validator("token")
        @classmethod
        def long_enough(cls, value: SecretStr) -> SecretStr:
            if len(value.get_secret_value()) > 8:
                raise ValueError("token too long")
            return value

    monkeypatch.setenv("CHASSIS_TOKEN", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings(Checked)
    assert "CHASSIS_TOKEN" in str(info.value)
    assert "token too long" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_chassis_run_prints_config_errors_and_exits_2_without_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "CHASSIS_HTTP__PORT": "-1",
        "CHASSIS_LOG__FORMAT": "xml",
        "PYTHONPATH": "",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "chassis", "run", str(REPO / "examples/hello/app.py") + ":service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "CHASSIS_HTTP__PORT" in proc.stderr
    assert "CHASSIS_LOG__FORMAT" in proc.stderr
    assert proc.stderr.startswith("chassis: invalid configuration (2 errors):")
    assert proc.stdout == ""


def test_tracing_settings_fall_back_to_otel_variables() -> None:
    settings = load_settings()
    resolved = settings.tracing.resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4319/v1/traces",
            "OTEL_TRACES_SAMPLER": "ALWAYS_ON",
        }
    )
    assert resolved.endpoint == "http://127.0.0.1:4319/v1/traces"
    assert resolved.sampler == "always_on"
    assert resolved.protocol == "http/protobuf"
    assert resolved.sampler_arg == 1.0

    generic = settings.tracing.resolve(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/otel/"}
    )
    assert generic.endpoint == "http://127.0.0.1:4318/otel/v1/traces"  # the signal path is added
    grpc = settings.tracing.resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }
    )
    assert grpc.endpoint == "http://127.0.0.1:4317"

    explicit = load_settings(tracing={"sampler": "always_off"}).tracing.resolve(
        {"OTEL_TRACES_SAMPLER": "always_on"}
    )
    assert explicit.sampler == "always_off"  # chassis settings win

    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        settings.tracing.resolve({"OTEL_TRACES_SAMPLER_ARG": "3"})
