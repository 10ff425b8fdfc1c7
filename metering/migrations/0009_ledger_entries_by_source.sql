-- GET /v1/events/{event_id} finds the ledger entries derived from one input event (a
-- deduction, a pack's expiry, a rejection) by the event's id.
CREATE INDEX ledger_entries_source ON ledger_entries (source_event_id);
