-- A ledger entry's body (the result as published) is written once, by COPY, and read back
-- whole (usage rows, "where did my fact go", the audit replay), so from here on it is kept as
-- the text the ledger published rather than as jsonb: parsing each body into jsonb was about
-- 40 % of writing the row, the ledger's largest write per usage event (issue 17). No table
-- is rewritten: the jsonb column keeps the rows written before under a new name, new rows
-- fill the text column, and every read takes whichever the row has
-- (`coalesce(body, body_jsonb::text)`).
ALTER TABLE ledger_entries RENAME COLUMN body TO body_jsonb;
ALTER TABLE ledger_entries ALTER COLUMN body_jsonb DROP NOT NULL;
ALTER TABLE ledger_entries ADD COLUMN body text;
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_one_body CHECK ((body IS NULL) <> (body_jsonb IS NULL)) NOT VALID;

-- The usage totals sum a deduction's counts: as columns, so the sums never parse a body
-- (NULL in rows written before; the totals read those rows' counts from `body_jsonb`).
ALTER TABLE ledger_entries
    ADD COLUMN input_tokens bigint,
    ADD COLUMN cached_tokens bigint,
    ADD COLUMN output_tokens bigint,
    ADD COLUMN images bigint;

-- Never used: the pruning of quota's request ids joins each row to its account's clock (a
-- hash join over the whole table), so this index only cost an insertion per usage event.
DROP INDEX quota_request_ids_forgotten;
