-- Client identities (issue #10): each client id is bound to the public key of its first
-- certificate request. Timestamps are Unix milliseconds.
CREATE TABLE identities (
    id          TEXT PRIMARY KEY NOT NULL,  -- 32 lowercase hex digits
    public_key  TEXT NOT NULL,              -- raw Ed25519 key, 64 lowercase hex digits
    state       TEXT NOT NULL,              -- pending | active | revoked
    hostname    TEXT NOT NULL,              -- of the registration that bound it
    bound_ms    INTEGER NOT NULL,
    changed_ms  INTEGER NOT NULL
);
