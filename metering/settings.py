"""Settings every service reads from the environment (pydantic-settings).

The names are the public contract (contract.md, "Processes and settings"); a bad value fails
at start with the variable named and what would be accepted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering.core.ratecard import RateCard, RateCardError, load_rate_card
from metering.edges import BodyLimits, TrustedProxies
from metering.topics import DLQ, EVENTS, LEDGER, SEAT_STATUS
from schemas.api import MAX_BATCH

DEFAULT_RATE_CARD = Path(__file__).parent / "ratecards" / "default.yaml"
USAGE_REPORT_BUDGET_BYTES = 4096
"""Bytes a usage report may take in a batch: 5 ids of up to 200 characters and the rest."""


class Settings(BaseSettings):
    """What a service needs to run; every field is an environment variable of the same name."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port...]"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client connects (TLS and/or SASL)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle to verify the brokers (default: the system's)"
    )
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="client certificate's key")
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres", description="PostgreSQL URL"
    )
    rate_card_path: Path = Field(DEFAULT_RATE_CARD, description="YAML rate card in force")
    http_port: int = Field(8000, ge=1, le=65535, description="port of the HTTP API")
    http_host: str = Field("127.0.0.1", description="interface the HTTP API listens on")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metering_admin_token: SecretStr | None = Field(
        None, description="bearer token for the write and read APIs"
    )
    metering_read_token: SecretStr | None = Field(
        None, description="bearer token for the read APIs only (usage details, overviews)"
    )
    metering_gateway_token: SecretStr | None = Field(
        None, description="the gateway's own bearer token: may post usage, nothing else"
    )
    api_key_hash_secret: SecretStr | None = Field(
        None, description="secret of the keyed hash of member API keys (ingest and quota)"
    )
    usage_max_future_skew_seconds: int = Field(
        300, ge=0, description="refuse usage whose occurred_at is further in the future"
    )
    usage_max_lateness_seconds: int = Field(
        72 * 3600,
        ge=0,
        le=72 * 3600,
        description="refuse usage whose occurred_at is older than this (at most 72 h: the "
        "ledger makes a pack's forfeiture final 72 h after its expiry)",
    )
    events_partitions: int = Field(6, ge=1, description="partitions of metering.events.v1")
    topic_replication_factor: int = Field(1, ge=1, description="replication of created topics")
    events_topic: str = Field(EVENTS, description="topic of accepted facts")
    ledger_topic: str = Field(LEDGER, description="topic of ledger results")
    seat_status_topic: str = Field(SEAT_STATUS, description="topic of seat statuses")
    dlq_topic: str = Field(DLQ, description="topic of dead letters")
    ledger_consumer_group: str = Field(
        "metering-ledger", description="consumer group of the ledger replicas"
    )
    quota_consumer_group: str = Field(
        "metering-quota",
        description="consumer group of quota; give each quota replica its own, so that each "
        "keeps a complete projection",
    )
    quota_status_interval_seconds: float = Field(
        1.0, gt=0, description="how often quota looks for seat statuses changed by time"
    )
    quota_failed_keys_per_minute: int = Field(
        20, ge=1, description="failed API keys one client address may present per minute"
    )
    projection_stuck_after_failures: int = Field(
        5,
        ge=1,
        description="failed batches in a row after which a consumed partition counts as stuck",
    )
    projection_fetch_max_wait_ms: int = Field(
        500,
        ge=1,
        le=500,
        description="ledger and quota: the longest a fetch waits on the broker for new events "
        "(Kafka answers as soon as events arrive; the embedded broker only when this passes)",
    )
    projection_fetch_min_bytes: int = Field(
        1,
        ge=1,
        le=1_048_576,
        description="ledger and quota: the bytes of new events a fetch waits for on the broker "
        "(up to PROJECTION_FETCH_MAX_WAIT_MS): fewer, fuller fetches under load",
    )
    projection_stuck_after_seconds: float = Field(
        120.0,
        gt=0,
        description="seconds without progress, while messages wait, after which a consumed "
        "partition counts as stuck",
    )

    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="largest request body a route takes (413 beyond), counted while it is read",
    )
    max_batch_body_bytes: int = Field(
        MAX_BATCH * USAGE_REPORT_BUDGET_BYTES,
        ge=1024,
        description="largest body of POST /v1/usage/batch: its item limit times a report's "
        "budget (4 KiB)",
    )
    http_header_timeout_seconds: float = Field(
        10.0, gt=0, description="a connection must send a request's headers within this time"
    )
    http_body_timeout_seconds: float = Field(
        15.0, gt=0, description="longest wait for the next piece of a request body (408)"
    )
    http_keep_alive_seconds: int = Field(
        5, ge=1, description="an idle keep-alive connection is closed after this"
    )
    http_limit_concurrency: int = Field(
        1000, ge=1, description="connections and requests in flight before 503 Service Unavailable"
    )
    database_statement_timeout_seconds: float = Field(
        10.0, gt=0, description="longest a database statement may take (then 503)"
    )
    database_acquire_timeout_seconds: float = Field(
        5.0, gt=0, description="longest wait for a pooled database connection (then 503)"
    )
    trusted_proxy_hops: int = Field(
        0,
        ge=0,
        description="how many reverse proxies in front of the service append to "
        "X-Forwarded-For; 0: the peer address is the client",
    )
    trusted_proxies: str = Field(
        "",
        description="comma-separated addresses or CIDR networks of reverse proxies whose "
        "X-Forwarded-For is believed; empty: none",
    )

    metrics_token: SecretStr | None = Field(
        None,
        description="bearer token Prometheus presents for /metrics; without it (and without "
        "METRICS_PORT) /metrics answers loopback callers only",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve /metrics on this internal port instead of the API's",
    )
    metrics_host: str = Field("0.0.0.0", description="interface of METRICS_PORT")
    metrics_per_subscription: bool = Field(
        False, description="export per-subscription series (customers' ids and spend)"
    )
    metrics_subscription_series_max: int = Field(
        100, ge=1, description="at most this many subscriptions get per-subscription series"
    )

    def tokens(self, *names: str) -> list[str]:
        """The values of the named token settings that are set (for `bearer_guard`)."""
        values = (getattr(self, name) for name in names)
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port (e.g. 127.0.0.1:9092)")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            missing = [
                name.upper()
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    + ", ".join(missing)
                )
        return self

    def kafka_options(self) -> dict[str, object]:
        """TLS/SASL keyword arguments for every aiokafka client (metering.kafka)."""
        from metering.kafka import client_options

        return client_options(self)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
        return value

    def proxies(self) -> TrustedProxies:
        """Whose `X-Forwarded-For` to believe (`TRUSTED_PROXY_HOPS`, `TRUSTED_PROXIES`)."""
        networks = [
            ipaddress.ip_network(e.strip(), strict=False)
            for e in self.trusted_proxies.split(",")
            if e.strip()
        ]
        return TrustedProxies(self.trusted_proxy_hops, networks)

    def body_limits(self, per_route: Mapping[tuple[str, str], int] | None = None) -> BodyLimits:
        """`MAX_BODY_BYTES` for every route but those given, and the body timeout."""
        return BodyLimits(self.max_body_bytes, per_route or {}, self.http_body_timeout_seconds)

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (e.g. postgresql://user@host/db)")
        return value

    def rate_card(self) -> RateCard:
        """The rate card at `rate_card_path`, or a clean stop that says what is wrong with it."""
        try:
            return load_rate_card(self.rate_card_path)
        except RateCardError as error:
            raise SettingsError(f"RATE_CARD_PATH: {error}") from None

    def required_secret(self, name: str, purpose: str) -> str:
        """The value of a secret setting a service cannot run without, or a clear exit."""
        value = getattr(self, name)
        if value is None or not value.get_secret_value():
            raise SettingsError(
                f"{name.upper()} is not set: {purpose}. Set it to a long random string "
                "(for example the output of `openssl rand -hex 32`)."
            )
        secret: str = value.get_secret_value()
        return secret


class SettingsError(SystemExit):
    """Raised (as a clean exit) when the environment holds a bad setting."""


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning validation errors into one readable message per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        ]
        raise SettingsError("bad settings in the environment:\n" + "\n".join(lines)) from None
