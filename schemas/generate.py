"""Write the JSON Schema of every event and HTTP body, and the AsyncAPI document of the topics.

``python -m schemas.generate`` rewrites ``schemas/generated/``; with ``--check`` it only
compares and exits 1 naming every stale file, so the checked-in docs cannot drift.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.api import API_MODELS
from schemas.base import SCHEMA_VERSION
from schemas.dlq import DeadLetter
from schemas.envelope import (
    DLQ_TOPIC,
    EVENTS_TOPIC,
    LEDGER_TOPIC,
    SEAT_STATUS_TOPIC,
    ApiKeyIssuedEvent,
    ApiKeyRevokedEvent,
    CreditsDeductedEvent,
    FactRejectedEvent,
    PackExpiredEvent,
    SeatAddedEvent,
    SeatRemovedEvent,
    SeatStatusChangedEvent,
    SeatTierChangedEvent,
    SharedPackPurchasedEvent,
    SubscriptionActivatedEvent,
    SubscriptionCancelledEvent,
    UsageRecordedEvent,
)

GENERATED = Path(__file__).parent / "generated"
SCHEMA_ID = f"urn:token-plan-metering:schema:v{SCHEMA_VERSION}:"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Channel:
    name: str
    topic: str
    key: str
    description: str
    messages: tuple[type[BaseModel], ...]
    compacted: bool = False


CHANNELS = (
    Channel(
        "events",
        EVENTS_TOPIC,
        "account id",
        "Every accepted fact (plan facts and usage), one ordered stream per account.",
        (
            SubscriptionActivatedEvent,
            SubscriptionCancelledEvent,
            SeatAddedEvent,
            SeatTierChangedEvent,
            SeatRemovedEvent,
            ApiKeyIssuedEvent,
            ApiKeyRevokedEvent,
            SharedPackPurchasedEvent,
            UsageRecordedEvent,
        ),
    ),
    Channel(
        "ledger",
        LEDGER_TOPIC,
        "account id",
        "Ledger results: deductions with their receipts, pack expiries, rejected facts.",
        (CreditsDeductedEvent, PackExpiredEvent, FactRejectedEvent),
    ),
    Channel(
        "seatStatus",
        SEAT_STATUS_TOPIC,
        "seat id",
        "Latest status of each seat (active / suspended) with its reason; compacted.",
        (SeatStatusChangedEvent,),
        compacted=True,
    ),
    Channel(
        "deadLetters",
        DLQ_TOPIC,
        "the original message key",
        "What could not be parsed or applied, with the reason and the original bytes.",
        (DeadLetter,),
    ),
)


def documents() -> dict[str, Any]:
    """Every generated document by file name."""
    models = [m for c in CHANNELS for m in c.messages] + list(API_MODELS)
    docs: dict[str, Any] = {f"{m.__name__}.json": _json_schema(m) for m in models}
    docs["asyncapi.json"] = _asyncapi()
    return docs


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    name = model.__name__
    return {
        **model.model_json_schema(),
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_ID}{name}",
        "title": f"{name} v{SCHEMA_VERSION}",
    }


def _asyncapi() -> dict[str, Any]:
    components: dict[str, Any] = {"schemas": _component_schemas(), "messages": {}}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        refs = {}
        for model in channel.messages:
            name = model.__name__
            components["messages"][name] = {
                "name": name,
                "title": f"{name} v{SCHEMA_VERSION}",
                "contentType": "application/json",
                "payload": {"$ref": f"#/components/schemas/{name}"},
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": channel.key},
                        "bindingVersion": "0.5.0",
                    }
                },
            }
            refs[name] = {"$ref": f"#/components/messages/{name}"}
        binding: dict[str, Any] = {"topic": channel.topic, "bindingVersion": "0.5.0"}
        if channel.compacted:
            binding["topicConfiguration"] = {"cleanup.policy": ["compact"]}
        channels[channel.name] = {
            "address": channel.topic,
            "description": f"{channel.description} Key: {channel.key}.",
            "messages": refs,
            "bindings": {"kafka": binding},
        }
        operations[f"publish{channel.name[0].upper()}{channel.name[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel.name}"},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Token Plan metering topics",
            "version": str(SCHEMA_VERSION),
            "description": "Kafka topics of the metering system; every value is JSON.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def _component_schemas() -> dict[str, Any]:
    """Schemas of every message and what they use, each named by its class name."""
    messages = [m for c in CHANNELS for m in c.messages]
    prefix = "#/components/schemas/"
    refs, schemas = models_json_schema(
        [(m, "validation") for m in messages], ref_template=prefix + "{model}"
    )
    text = json.dumps(schemas["$defs"])
    for (model, _), ref in refs.items():  # generic envelopes get unreadable default names
        text = text.replace(f'"{ref["$ref"]}"', f'"{prefix}{model.__name__}"')
    renamed = {ref["$ref"].removeprefix(prefix): model.__name__ for (model, _), ref in refs.items()}
    return {renamed.get(name, name): schema for name, schema in json.loads(text).items()}


def render(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_files(directory: Path = GENERATED) -> list[str]:
    """Generated files that are missing, different, or no longer generated."""
    expected = {name: render(doc) for name, doc in documents().items()}
    present = {p.name for p in directory.glob("*.json")}
    different = [
        name
        for name, text in expected.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    return sorted(different + sorted(present - expected.keys()))


def write(directory: Path = GENERATED) -> None:
    expected = {name: render(doc) for name, doc in documents().items()}
    for path in directory.glob("*.json"):
        if path.name not in expected:
            path.unlink()
    for name, text in expected.items():
        (directory / name).write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if any file is stale")
    args = parser.parse_args(argv)
    if not args.check:
        write()
        return 0
    stale = stale_files()
    for name in stale:
        print(f"stale: schemas/generated/{name}", file=sys.stderr)
    if stale:
        print("run `python -m schemas.generate` to update them", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
