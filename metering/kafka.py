"""How every Kafka client of a service connects: TLS and SASL from the settings.

`client_options` are keyword arguments for every aiokafka producer, consumer and admin client
(projections, the replay's log reader, `metering topics`); `broker_security` is the same for
faststream's `KafkaBroker` (ingest's producer and Kafka entry, the outbox relays).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from aiokafka.helpers import create_ssl_context
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

if TYPE_CHECKING:
    from metering.settings import Settings


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
    )
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """`security_protocol`, the SSL context and the SASL credentials for aiokafka clients."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = _ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        password = settings.kafka_sasl_password
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return options


def broker_security(settings: Settings) -> BaseSecurity | None:
    """The same connection settings as faststream's `security` (None: plain text)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings)
    use_ssl = protocol.endswith("SSL")
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    kind = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return kind[settings.kafka_sasl_mechanism or "PLAIN"](
        username, password, ssl_context=context, use_ssl=use_ssl
    )
