-- ingest decides at once whether a fact can take effect (design.md §4a), so its registry
-- keeps the times the fold will judge by: when a subscription ends, when a seat and a key
-- become usable and stop being usable. An account may renew once its plan has ended: the
-- one-active-subscription rule is an overlap check under a per-account lock, not an index.
ALTER TABLE ingest_subscriptions ADD COLUMN expires_at timestamptz;
DROP INDEX ingest_one_active_subscription;
CREATE INDEX ingest_subscriptions_account ON ingest_subscriptions (account_id);

ALTER TABLE ingest_seats
    ADD COLUMN added_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN removed_at timestamptz;
ALTER TABLE ingest_seats ALTER COLUMN added_at DROP DEFAULT;

ALTER TABLE ingest_keys ADD COLUMN issued_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE ingest_keys ALTER COLUMN issued_at DROP DEFAULT;
