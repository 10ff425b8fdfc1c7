-- From here on the account states in ledger_accounts and quota_accounts leave out the
-- request ids already deducted (AccountState.to_dict(with_request_ids=False)). Those ids only
-- grow, and rewriting them with every batch came to cost more than the rest of the state;
-- states written before still load, with the ids they hold.
--
-- The ledger rebuilds an account's ids from its CreditsDeducted rows in ledger_entries
-- (through ledger_entries_account: only when an account is loaded).
-- quota keeps its own here, one row per deducted usage, added in the batch's transaction.
CREATE TABLE quota_request_ids (
    consumer_group text NOT NULL,
    account_id     text NOT NULL,
    request_id     text NOT NULL,
    PRIMARY KEY (consumer_group, account_id, request_id)
);
