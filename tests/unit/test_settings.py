"""Settings: the contract's variables, and clear errors for bad ones."""

from __future__ import annotations

import re
from pathlib import Path

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
    assert (settings.projection_fetch_min_bytes, settings.projection_fetch_max_wait_ms) == (1, 500)
    monkeypatch.setenv("PROJECTION_FETCH_MIN_BYTES", "65536")
    assert load_settings().projection_fetch_min_bytes == 65536


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "KAFKA_BOOTSTRAP_SERVERS: Value error, 'local"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL: Value error, must start with postgresql://"),
        ("HTTP_PORT", "seventy", "HTTP_PORT: Input should be a valid integer"),
        ("HTTP_PORT", "70000", "HTTP_PORT: Input should be less than or equal to 65535"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("PROJECTION_FETCH_MIN_BYTES", "0", "PROJECTION_FETCH_MIN_BYTES: Input should be greater"),
        ("PROJECTION_FETCH_MIN_BYTES", "2000000", "PROJECTION_FETCH_MIN_BYTES: Input should be "),
    ],
)
def test_bad_values_are_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert message in str(error.value)


def test_kafka_tls_and_sasl_reach_every_client() -> None:
    import ssl

    from faststream.security import SASLScram512

    from metering.kafka import broker_security, client_options

    plain = load_settings()
    assert client_options(plain) == {"security_protocol": "PLAINTEXT"}
    assert broker_security(plain) is None
    secure = load_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="metering",
        kafka_sasl_password="pw",
    )
    options = client_options(secure)
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "metering",
    )
    assert options["sasl_plain_password"] == "pw"
    security = broker_security(secure)
    assert isinstance(security, SASLScram512)
    assert security.use_ssl
    tls_only = load_settings(kafka_security_protocol="SSL")
    assert "sasl_mechanism" not in client_options(tls_only)
    assert broker_security(tls_only) is not None


def test_sasl_without_credentials_stops_with_what_is_missing() -> None:
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD"):
        load_settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")


_KAFKA_CLIENT = re.compile(
    r"\b(AIOKafkaConsumer|AIOKafkaProducer|AIOKafkaAdminClient|KafkaBroker)\("
)


def test_every_kafka_client_of_the_services_gets_the_tls_and_sasl_options() -> None:
    """Each client built outside the dev-only stack and bench is given the settings' options."""
    root = Path(__file__).resolve().parents[2]
    sources = [*(root / "metering").rglob("*.py"), *(root / "services").rglob("*.py")]
    for source in sources:
        if source.name == "stack.py" or "bench" in source.parts:
            continue
        text = source.read_text()
        for match in _KAFKA_CLIENT.finditer(text):
            call = text[match.end() : match.end() + 600].split("\n    )", 1)[0]
            assert "kafka_options" in call or "security=" in call, (
                f"{source.relative_to(root)}: {match.group(1)} without the TLS/SASL options"
            )
