-- Access by scope (issue #18). A team token reads and exports one account's data only; it
-- is issued by ingest (POST /v1/accounts/{account_id}/tokens) and verified by ledger and
-- quota, which share this database (metering/scopes.py). Only its keyed hash is kept.
CREATE TABLE team_tokens (
    token_id    text PRIMARY KEY,
    account_id  text        NOT NULL,
    token_hash  text        NOT NULL UNIQUE,
    issued_at   timestamptz NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX team_tokens_account ON team_tokens (account_id);

-- A member's own API key reads its own seat (quota GET /v1/me, ledger GET /v1/me/usage):
-- ledger and quota find the key by its keyed hash here. Keys issued before this migration
-- have none (their hash is only in the event log) and are not accepted for those reads.
ALTER TABLE ingest_keys ADD COLUMN key_hash text;
CREATE UNIQUE INDEX ingest_keys_hash ON ingest_keys (key_hash) WHERE key_hash IS NOT NULL;
