-- Durable workflow runs: definitions as registered, runs, their steps with
-- dependencies and leases, and every attempt of every step (the trace).
-- JSON is stored as TEXT so both dialects hold it the same way.
CREATE TABLE flow_workflows (
    tenant_id  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    definition TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name, version)
);

CREATE TABLE flow_runs (
    id              TEXT   NOT NULL PRIMARY KEY,
    tenant_id       TEXT   NOT NULL,
    workflow        TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    status          TEXT   NOT NULL,
    input           TEXT   NOT NULL,
    output          TEXT,
    error           TEXT,
    idempotency_key TEXT,
    max_steps       BIGINT NOT NULL,
    max_tokens      BIGINT,
    max_cost_micros BIGINT,
    steps_used      BIGINT NOT NULL DEFAULT 0,
    tokens_used     BIGINT NOT NULL DEFAULT 0,
    cost_micros     BIGINT NOT NULL DEFAULT 0,
    -- Held by model calls in flight, like the gateway's budget holds.
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    created_ms      BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL,
    finished_ms     BIGINT,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX flow_runs_by_tenant ON flow_runs (tenant_id, created_ms);
CREATE INDEX flow_runs_finished ON flow_runs (finished_ms);

-- A step of a run. `queue` is empty for steps keel runs itself and names
-- the worker queue for tool steps handed to external workers. A step is
-- claimable when ready and due, when its lease expired (its worker died),
-- or when it waits for a person past its deadline.
CREATE TABLE flow_steps (
    run_id         TEXT     NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    step_key       TEXT     NOT NULL,
    tenant_id      TEXT     NOT NULL,
    queue          TEXT     NOT NULL,
    status         TEXT     NOT NULL,
    wait_any       SMALLINT NOT NULL CHECK (wait_any IN (0, 1)),
    attempts       BIGINT   NOT NULL DEFAULT 0,
    due_ms         BIGINT   NOT NULL,
    lease_token    TEXT,
    lease_owner    TEXT,
    input          TEXT,
    output         TEXT,
    error          TEXT,
    detail         TEXT,
    updated_ms     BIGINT   NOT NULL,
    PRIMARY KEY (run_id, step_key)
);
CREATE INDEX flow_steps_claimable ON flow_steps (queue, status, due_ms);
CREATE INDEX flow_steps_by_tenant ON flow_steps (tenant_id, queue, status, due_ms);

-- `step_key` waits for `dep_key`. An ordering-only edge (a map's window of
-- items in flight) orders the steps without passing data or skips along.
CREATE TABLE flow_deps (
    run_id        TEXT     NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    step_key      TEXT     NOT NULL,
    dep_key       TEXT     NOT NULL,
    ordering_only SMALLINT NOT NULL CHECK (ordering_only IN (0, 1)),
    PRIMARY KEY (run_id, step_key, dep_key)
);
CREATE INDEX flow_deps_by_dep ON flow_deps (run_id, dep_key);

CREATE TABLE flow_attempts (
    run_id            TEXT   NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    step_key          TEXT   NOT NULL,
    attempt           BIGINT NOT NULL,
    token             TEXT   NOT NULL,
    owner             TEXT   NOT NULL,
    status            TEXT   NOT NULL,
    started_ms        BIGINT NOT NULL,
    finished_ms       BIGINT,
    input             TEXT,
    output            TEXT,
    error             TEXT,
    model             TEXT,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    reserved_tokens   BIGINT NOT NULL DEFAULT 0,
    reserved_micros   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step_key, attempt)
);
