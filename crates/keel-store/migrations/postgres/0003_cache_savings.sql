-- What a cache hit avoided: the tokens and cost of the stored answer it
-- served instead of calling an upstream (zero on every other row).
ALTER TABLE usage_ledger ADD COLUMN saved_prompt_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_ledger ADD COLUMN saved_completion_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_ledger ADD COLUMN saved_cost_micros BIGINT NOT NULL DEFAULT 0;
