-- The office tree as the admin last applied it (TOML, `connector topology apply`), and
-- deployments (`connector deploy`). Automatic offices are not stored: they are made
-- again as clients register.
CREATE TABLE topology (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    toml        TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE deployments (
    id          INTEGER PRIMARY KEY NOT NULL,
    content_id  TEXT NOT NULL,                -- 64 lowercase hex digits
    target      TEXT NOT NULL,                -- all | office:NAME | client:ID
    prestage    INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
);
