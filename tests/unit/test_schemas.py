import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import get_type_hints

import pytest
from pydantic import TypeAdapter, ValidationError

from metering.core.fold import RESULT_NAMESPACE, derived_event_id
from metering.core.pricing import PricedUsage
from schemas import generate
from schemas.api import QuoteRequest, Remaining, SubscriptionCancel, UsageBatchRequest, UsageReport
from schemas.base import Identifier, UsageCounts, UsageCountsFields
from schemas.envelope import parse_event, parse_ledger_event
from schemas.facts import UsageRecorded, UsageRecordedFields

USAGE = {
    "event_id": "0b0d8e0e-1c1a-4b7a-9c55-4f4c7e7e1a11",
    "event_type": "UsageRecorded",
    "schema_version": 1,
    "occurred_at": "2026-02-01T10:00:00+08:00",
    "recorded_at": "2026-02-01T02:00:01Z",
    "account_id": "acct-1",
    "payload": {
        "request_id": "r1",
        "subscription_id": "sub-1",
        "seat_id": "seat-1",
        "key_id": "key-1",
        "model": "qwen3.6-plus",
        "input_tokens": 8349,
        "cached_tokens": 40794,
        "output_tokens": 573,
        "thinking": False,
        "tool_calls": {},
        "images": 0,
        "client": "claude-code",
    },
}


def raw(message: dict[str, object]) -> bytes:
    return json.dumps(message).encode()


def with_payload(**changes: object) -> dict[str, object]:
    payload = dict(USAGE["payload"], **changes)  # type: ignore[call-overload]
    return {**USAGE, "payload": payload}


def problem_fields(message: dict[str, object]) -> set[str]:
    with pytest.raises(ValidationError) as raised:
        parse_event(raw(message))
    return {".".join(str(part) for part in error["loc"]) for error in raised.value.errors()}


def test_parses_into_the_typed_event() -> None:
    event = parse_event(raw(USAGE))
    assert event.event_type == "UsageRecorded"
    assert type(event).__name__ == "UsageRecordedEvent"
    assert event.payload.input_tokens == 8349


def test_unknown_field_is_named() -> None:
    assert problem_fields(with_payload(prompt="secret")) == {"UsageRecorded.payload.prompt"}
    assert problem_fields({**USAGE, "extra": 1}) == {"UsageRecorded.extra"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", "8349"),
        ("input_tokens", -1),
        ("input_tokens", 1.5),
        ("thinking", "yes"),
        ("tool_calls", {"web_search": -1}),
        ("request_id", ""),
    ],
)
def test_wrong_types_are_named(field: str, value: object) -> None:
    fields = problem_fields(with_payload(**{field: value}))
    assert {f.split(".")[2] for f in fields} == {field}


def test_naive_timestamps_are_rejected() -> None:
    assert problem_fields({**USAGE, "occurred_at": "2026-02-01T10:00:00"}) == {
        "UsageRecorded.occurred_at"
    }
    with pytest.raises(ValidationError, match="at\n  Input should have timezone info"):
        SubscriptionCancel(at=datetime(2026, 2, 1))


def test_unknown_event_type_is_refused() -> None:
    assert problem_fields({**USAGE, "event_type": "UsageDeleted"}) == {""}


def test_ledger_topic_does_not_accept_facts() -> None:
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_ledger_event(raw(USAGE))


def test_batch_holds_at_most_1000_reports() -> None:
    report = dict(USAGE["payload"], account_id="a", occurred_at="2026-02-01T00:00:00Z")  # type: ignore[call-overload]
    UsageBatchRequest.model_validate_json(json.dumps({"reports": [report] * 1000}))
    with pytest.raises(ValidationError, match="reports"):
        UsageBatchRequest.model_validate_json(json.dumps({"reports": [report] * 1001}))


def test_the_field_dicts_the_core_reads_match_their_models() -> None:
    """The fold reads a usage's fields from its ``__dict__`` by these names (issue 17)."""
    assert set(get_type_hints(UsageRecordedFields)) == set(UsageRecorded.model_fields)
    assert set(get_type_hints(UsageCountsFields)) == set(UsageCounts.model_fields)
    for name, info in UsageRecorded.model_fields.items():
        assert info.is_required() or info.default is None, name  # every key is in __dict__
    for model in (UsageCounts, QuoteRequest, UsageReport):  # what pricing is given
        assert set(get_type_hints(PricedUsage)) <= set(model.model_fields)


def test_trusted_instances_share_their_field_names_safely() -> None:
    fields = {"seat": "1.000000", "shared": "0.000000", "total": "1.000000"}
    first, second = Remaining.trusted(dict(fields)), Remaining.trusted(dict(fields))
    assert first == Remaining.model_validate(fields)
    assert first.model_fields_set == second.model_fields_set == set(fields)
    copied = first.model_copy(update={"seat": "2.000000"})
    assert copied.seat == "2.000000"
    assert first.seat == second.seat == "1.000000"
    assert copied.model_fields_set is not first.model_fields_set
    partial = Remaining.trusted({"seat": "1.000000"})
    assert partial.model_fields_set == {"seat"}
    assert first.model_fields_set == {"seat", "shared", "total"}


def test_derived_event_ids_are_uuid5() -> None:
    assert derived_event_id("abc", 3) == str(uuid.uuid5(RESULT_NAMESPACE, "abc/3"))


def test_generated_docs_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    status = generate.main(["--check"])
    assert status == 0, capsys.readouterr().err


def test_check_names_stale_files(tmp_path: Path) -> None:
    generate.write(tmp_path)
    assert generate.stale_files(tmp_path) == []
    (tmp_path / "UsageReport.json").write_text("{}")
    (tmp_path / "Retired.json").write_text("{}")
    assert generate.stale_files(tmp_path) == ["Retired.json", "UsageReport.json"]


def test_asyncapi_describes_the_four_topics() -> None:
    document = generate.documents()["asyncapi.json"]
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses == {
        "metering.events.v1",
        "metering.ledger.v1",
        "metering.seat-status.v1",
        "metering.dlq.v1",
    }
    assert document["asyncapi"] == "3.0.0"


@pytest.mark.parametrize(
    "identifier",
    [
        "seat\u202eana",  # right-to-left override
        "seat\u2066ana",  # left-to-right isolate
        "seat\u200fana",  # right-to-left mark
        "seat\u200bana",  # zero-width space
        "seat\u200dana",  # zero-width joiner
        "seat\ufeffana",  # zero-width no-break space
        "seat\u0085ana",  # C1 next line
        "seat\u009bana",  # C1 control sequence introducer
        "seat\x1bana",  # C0 escape
        "seat\u2028ana",  # line separator
        "",
        "x" * 201,
    ],
)
def test_identifiers_refuse_invisible_and_reordering_characters(identifier: str) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(Identifier).validate_python(identifier)


@pytest.mark.parametrize("identifier", ["seat-1", "Ana Müller", "团队-7", "a@b.c", "x" * 200])
def test_identifiers_take_printable_text(identifier: str) -> None:
    assert TypeAdapter(Identifier).validate_python(identifier) == identifier
