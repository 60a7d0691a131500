-- The content catalogue. A content item is one immutable file identified by its BLAKE3
-- hash; the piece map (branchline-store format) lets every piece be verified alone.
CREATE TABLE contents (
    id            TEXT PRIMARY KEY NOT NULL,  -- 64 lowercase hex digits (BLAKE3)
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    size          INTEGER NOT NULL,           -- bytes
    origin        TEXT NOT NULL,              -- HTTP(S) URL or file path
    piece_size    INTEGER NOT NULL,           -- bytes, power of two
    piece_map     BLOB NOT NULL,
    published_ms  INTEGER NOT NULL
);
CREATE INDEX contents_by_name ON contents (name, published_ms);
