-- The quota service's projection of metering.events.v1: the same fold as the ledger, kept
-- in memory and snapshotted here. One transaction per consumed batch writes the touched
-- accounts, the seat statuses it publishes and its outbox rows, with the batch's offsets in
-- consumer_offsets (group QUOTA_CONSUMER_GROUP), so a restart loads the snapshots, seeks to
-- those offsets and catches up.

-- Each account's fold state (AccountState.to_dict()), per consumer group so that replicas
-- with groups of their own each keep a complete projection. `partition` is where the
-- account's events are, to reload exactly the accounts of a partition that moved.
CREATE TABLE quota_accounts (
    consumer_group text        NOT NULL,
    account_id     text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    state          jsonb       NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, account_id)
);
CREATE INDEX quota_accounts_partition ON quota_accounts (consumer_group, partition);

-- The status the group last published to metering.seat-status.v1 for each seat: a status is
-- published only when it differs from this row, whether the fold or the timer noticed it.
CREATE TABLE quota_seat_status (
    consumer_group text        NOT NULL,
    seat_id        text        NOT NULL,
    account_id     text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('active', 'suspended')),
    reason         text        NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, seat_id)
);

-- Seat statuses waiting to be published to metering.seat-status.v1, in order; the relay
-- marks each row once the broker has acknowledged it.
CREATE TABLE quota_outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    value        bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX quota_outbox_unpublished ON quota_outbox (id) WHERE published_at IS NULL;
