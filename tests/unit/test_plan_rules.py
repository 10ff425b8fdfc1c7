"""ingest's plan commands, as a table (services/ingest/api.py `PLAN_RULES`)."""

from __future__ import annotations

from typing import Literal

from ingest.api import PLAN_RULES
from schemas import envelope


def test_every_plan_fact_has_one_rule_named_as_its_event_type() -> None:
    for payload in PLAN_RULES:
        event = getattr(envelope, f"{payload.__name__}Event")
        assert event.model_fields["event_type"].annotation == Literal[payload.__name__]
    assert len(PLAN_RULES) == 8  # every plan fact of schemas/facts.py; usage is apart


def test_each_plan_fact_keys_its_commands_in_a_scope_of_its_own() -> None:
    scopes = [rule.scope for rule in PLAN_RULES.values()]
    assert len(set(scopes)) == len(scopes)
    created = {payload.__name__ for payload, rule in PLAN_RULES.items() if rule.created}
    assert created == {"SubscriptionActivated", "SeatAdded", "ApiKeyIssued", "SharedPackPurchased"}
