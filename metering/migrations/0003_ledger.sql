-- The ledger's projection of metering.events.v1. One PostgreSQL transaction per consumed
-- batch writes all of these together with the batch's offsets in consumer_offsets, so the
-- tables always say exactly which events they contain.

-- Each account's fold state (AccountState.to_dict()). `version` grows by one per write; a
-- writer holding an older version is refused (optimistic lock), so two processes can never
-- both build on the same state.
CREATE TABLE ledger_accounts (
    account_id text        PRIMARY KEY,
    state      jsonb       NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Which account holds a subscription (the read API is addressed by subscription).
CREATE TABLE ledger_subscriptions (
    subscription_id text PRIMARY KEY,
    account_id      text NOT NULL
);

-- Every consumed input event, verbatim, so audits do not depend on Kafka retention.
-- Partitioned by month of recorded_at (old months can be detached and archived whole).
-- A partitioned table's unique keys must include the partition column: ingest fixes an
-- event's recorded_at once, so (event_id, recorded_at) is unique exactly when event_id is,
-- and the ledger looks event ids up before inserting (a redelivered event is skipped).
CREATE TABLE ledger_events_archive (
    event_id    uuid        NOT NULL,
    recorded_at timestamptz NOT NULL,
    account_id  text        NOT NULL,
    event_type  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    key         bytea,
    value       bytea       NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

-- Creates the archive's partition for the UTC month containing `at`, if missing. Serialised
-- by an advisory lock so replicas starting a new month together do not collide.
CREATE FUNCTION ledger_archive_ensure_month(at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    first_day timestamp := date_trunc('month', at AT TIME ZONE 'UTC');
    name      text := 'ledger_events_archive_' || to_char(first_day, '"y"YYYY"m"MM');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ledger_events_archive'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF ledger_events_archive FOR VALUES FROM (%L) TO (%L)',
            name,
            first_day AT TIME ZONE 'UTC',
            (first_day + interval '1 month') AT TIME ZONE 'UTC'
        );
    END IF;
END
$$;

-- One row per ledger result (CreditsDeducted, PackExpired, FactRejected): its fields as
-- columns for the read API and statements, and the whole event as published.
CREATE TABLE ledger_entries (
    event_id               uuid        PRIMARY KEY,
    event_type             text        NOT NULL
        CHECK (event_type IN ('CreditsDeducted', 'PackExpired', 'FactRejected')),
    source_event_id        uuid        NOT NULL,
    account_id             text        NOT NULL,
    occurred_at            timestamptz NOT NULL,
    subscription_id        text,
    seat_id                text,
    key_id                 text,
    request_id             text,
    model                  text,
    tier                   text,
    price_micro            bigint,
    seat_paid_micro        bigint,
    packs_paid_micro       bigint,
    shortfall_micro        bigint,
    seat_remaining_micro   bigint,
    shared_remaining_micro bigint,
    rate_card_version      text,
    coefficient            text,
    pack_id                text,
    unused_micro           bigint,
    reason                 text,
    body                   jsonb       NOT NULL
);
CREATE INDEX ledger_entries_deductions
    ON ledger_entries (subscription_id, occurred_at DESC, event_id DESC)
    WHERE event_type = 'CreditsDeducted';
CREATE INDEX ledger_entries_expiries
    ON ledger_entries (subscription_id, occurred_at)
    WHERE event_type = 'PackExpired';
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, occurred_at);

-- Results waiting to be published (ledger results, seat statuses, dead letters), in the
-- order they were produced; the relay marks each row once the broker has acknowledged it.
CREATE TABLE ledger_outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    value        bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX ledger_outbox_unpublished ON ledger_outbox (id) WHERE published_at IS NULL;
