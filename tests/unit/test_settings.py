"""Settings: the contract's variables, and clear errors for bad ones."""

from __future__ import annotations

import pytest

from metering.settings import SettingsError, load_settings


def test_reads_the_contract_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9093")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/metering")
    monkeypatch.setenv("HTTP_PORT", "8002")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("METERING_ADMIN_TOKEN", "s3cret")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9093"
    assert settings.http_port == 8002
    assert settings.log_level == "DEBUG"
    assert settings.metering_admin_token is not None
    assert settings.metering_admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "KAFKA_BOOTSTRAP_SERVERS: Value error, 'local"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL: Value error, must start with postgresql://"),
        ("HTTP_PORT", "seventy", "HTTP_PORT: Input should be a valid integer"),
        ("HTTP_PORT", "70000", "HTTP_PORT: Input should be less than or equal to 65535"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)
def test_bad_values_are_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert message in str(error.value)
