-- Request ids are remembered for duplicates only as long as a duplicate can still arrive
-- (design.md §4a): each row says until when. Rows past their account's clock are pruned.
ALTER TABLE quota_request_ids
    ADD COLUMN remember_until timestamptz NOT NULL DEFAULT (now() + interval '73 hours');
ALTER TABLE quota_request_ids ALTER COLUMN remember_until DROP DEFAULT;
CREATE INDEX quota_request_ids_forgotten ON quota_request_ids (consumer_group, remember_until);

-- ingest forgets the usage reports it accepted once no duplicate of them can be accepted.
CREATE INDEX ingest_accepted_stored ON ingest_accepted USING brin (stored_at);
