-- An account's state is written whole by every batch that touches the account and read back
-- only when the account is loaded, so it is kept as the text `snapshot_json` gives rather than
-- as jsonb: parsing it into jsonb was about half the cost of each write (issue 17). A query
-- that needs a field of it casts it (`state::json ->> 'clock'`).
ALTER TABLE ledger_accounts ALTER COLUMN state TYPE text USING state::text;
ALTER TABLE quota_accounts ALTER COLUMN state TYPE text USING state::text;
