-- Clients, connectors and server facts. Timestamps are Unix milliseconds.
CREATE TABLE clients (
    id                    TEXT PRIMARY KEY NOT NULL,  -- 32 lowercase hex digits
    hostname              TEXT NOT NULL,
    addresses             TEXT NOT NULL,              -- comma-separated, most preferred first
    source_address        TEXT,                       -- ip:port the registration came from
    subnet                TEXT NOT NULL,              -- CIDR
    cache_size_bytes      INTEGER NOT NULL,
    cache_free_bytes      INTEGER NOT NULL,
    version               TEXT NOT NULL,
    heartbeat_interval_ms INTEGER NOT NULL,
    ports                 TEXT,                       -- 10 comma-separated ports, NULL = defaults
    first_seen_ms         INTEGER NOT NULL,
    last_seen_ms          INTEGER NOT NULL
);

CREATE TABLE connectors (
    hostname          TEXT PRIMARY KEY NOT NULL,
    address           TEXT NOT NULL,
    version           TEXT NOT NULL,
    first_seen_ms     INTEGER NOT NULL,
    last_seen_ms      INTEGER NOT NULL
);
