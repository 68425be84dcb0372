-- keel schema 1 (SQLite): tenants, users, API keys and the usage ledger.
-- Timestamps are unix milliseconds, flags are 0/1 integers. STRICT tables
-- make SQLite refuse values of the wrong type, as PostgreSQL does.

CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE users (
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    id         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) STRICT;

-- Only the SHA-256 of a secret is stored. A key without a user belongs to
-- the whole tenant; the composite foreign key is skipped when user_id is NULL.
CREATE TABLE api_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    user_id    TEXT,
    name       TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    prefix     TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id)
) STRICT;

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_ms);

-- One row per gateway request. No foreign keys on purpose: the ledger must
-- accept every row the gateway produced, even for a tenant deleted since.
CREATE TABLE usage_ledger (
    request_id        TEXT    NOT NULL PRIMARY KEY,
    ts_ms             INTEGER NOT NULL,
    tenant_id         TEXT    NOT NULL,
    user_id           TEXT,
    key_id            TEXT,
    session           TEXT,
    workflow          TEXT,
    model             TEXT    NOT NULL,
    deployment        TEXT,
    provider          TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_micros       INTEGER NOT NULL,
    latency_us        INTEGER NOT NULL,
    overhead_us       INTEGER NOT NULL,
    ttft_us           INTEGER,
    status            INTEGER NOT NULL,
    error_code        TEXT,
    stream            INTEGER NOT NULL CHECK (stream IN (0, 1)),
    attempts          INTEGER NOT NULL,
    cache             TEXT
) STRICT;

CREATE INDEX usage_ledger_by_tenant_ts ON usage_ledger (tenant_id, ts_ms);
CREATE INDEX usage_ledger_by_ts ON usage_ledger (ts_ms);
CREATE INDEX usage_ledger_by_session ON usage_ledger (session);
CREATE INDEX usage_ledger_by_workflow ON usage_ledger (workflow);
