"""The plugin's settings, from the LiteLLM proxy's environment."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Every setting is an environment variable of the proxy process (`METERING_` prefix)."""

    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    quota_url: str = Field(description="quota's base URL, e.g. http://quota:8003")
    ingest_url: str = Field(description="ingest's base URL, e.g. http://ingest:8001")
    gateway_token: str = Field(
        description="bearer token for ingest's POST /v1/usage (METERING_GATEWAY_TOKEN, or the "
        "admin token)"
    )
    allow_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        description="how long an allow decision of quota is reused for the same key, model and "
        "endpoint without asking again: the staleness bound (0: ask quota on every call)",
    )
    allow_cache_entries: int = Field(default=100_000, ge=1)
    seat_status_bootstrap_servers: str | None = Field(
        default=None,
        description="Kafka bootstrap servers: follow metering.seat-status.v1 and stop reusing "
        "a seat's cached allow as soon as the seat is suspended",
    )
    seat_status_topic: str = "metering.seat-status.v1"
    count_input_tokens: bool = Field(
        default=True,
        description="estimate the request's input tokens (tiktoken cl100k) and send them to "
        "authorize, so an over-long input is refused before the model is called",
    )
    usage_attempts: int = Field(default=6, ge=1, description="tries per usage report")
    usage_backoff_seconds: float = Field(
        default=0.2, gt=0, description="first wait between tries (doubles, at most 5 s)"
    )
    timeout_seconds: float = Field(default=5.0, gt=0, description="per HTTP call")


@lru_cache(maxsize=1)
def settings() -> GatewaySettings:
    return GatewaySettings()
