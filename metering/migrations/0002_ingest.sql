-- ingest's memory of what it accepted, shared by every replica and kept across restarts.
-- One row per idempotency key: a usage report's (account, request id), a plan command's
-- natural id, or an Idempotency-Key header. The envelope is kept until the broker has
-- acknowledged it, so a crash between "stored" and "acknowledged" is repaired by the relay.
CREATE TABLE ingest_accepted (
    scope         text        NOT NULL,
    key           text        NOT NULL,
    body_hash     bytea       NOT NULL,
    event_id      uuid        NOT NULL UNIQUE,
    account_id    text        NOT NULL,
    envelope      bytea,
    response      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    PRIMARY KEY (scope, key)
);
CREATE INDEX ingest_accepted_unpublished ON ingest_accepted (stored_at) WHERE published_at IS NULL;

-- The plan directory ingest needs to answer commands (409 on a second active subscription,
-- 404 on an unknown subscription, seat or key). The event log stays the source of truth.
CREATE TABLE ingest_subscriptions (
    subscription_id text PRIMARY KEY,
    account_id      text        NOT NULL,
    started_at      timestamptz NOT NULL,
    cancelled_at    timestamptz
);
CREATE UNIQUE INDEX ingest_one_active_subscription
    ON ingest_subscriptions (account_id) WHERE cancelled_at IS NULL;

-- Seat ids are global: the seat-status topic and GET /v1/seats/{seat_id} name a seat alone.
CREATE TABLE ingest_seats (
    seat_id         text PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES ingest_subscriptions,
    tier            text NOT NULL
);

CREATE TABLE ingest_keys (
    key_id          text PRIMARY KEY,
    account_id      text NOT NULL,
    subscription_id text NOT NULL,
    seat_id         text NOT NULL,
    revoked_at      timestamptz
);
