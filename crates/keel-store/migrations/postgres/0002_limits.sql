-- Limit rules created through the admin API (config rules live in the
-- config file), and the kill switch. Both are small tables every replica
-- rereads every second.
CREATE TABLE limit_rules (
    id         TEXT   NOT NULL PRIMARY KEY,
    spec       TEXT   NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE blocks (
    scope      TEXT   NOT NULL PRIMARY KEY,
    reason     TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
