-- Offsets a consumer has applied, stored in the same transaction as its projection,
-- so that after any crash or rebalance it resumes exactly where its data stands.
CREATE TABLE consumer_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL CHECK (partition >= 0),
    next_offset    bigint  NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
