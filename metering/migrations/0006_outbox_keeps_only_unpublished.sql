-- The outbox relays delete each row once the broker has acknowledged it, instead of marking
-- it published: the tables hold only what is still to publish, and a row is written once
-- rather than written and then rewritten. Rows already marked published go now.
DELETE FROM ledger_outbox WHERE published_at IS NOT NULL;
DROP INDEX ledger_outbox_unpublished;
ALTER TABLE ledger_outbox DROP COLUMN published_at;

DELETE FROM quota_outbox WHERE published_at IS NOT NULL;
DROP INDEX quota_outbox_unpublished;
ALTER TABLE quota_outbox DROP COLUMN published_at;
