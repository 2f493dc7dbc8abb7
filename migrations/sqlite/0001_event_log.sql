-- The event log. `position` is the rowid: gap-free, assigned under the write lock.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_id        BLOB    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- One row: the newest position and hash. Every append updates it inside its transaction.
CREATE TABLE log_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    position  INTEGER NOT NULL,
    hash      BLOB    NOT NULL
);
INSERT INTO log_head (id, position, hash) VALUES (1, 0, zeroblob(32));

-- Read models: live tables the API reads, rebuild tables a replay fills from position 0.
CREATE TABLE rm_live_docs (
    projection  TEXT NOT NULL,
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (projection, collection, key)
) WITHOUT ROWID;
CREATE TABLE rm_live_checkpoints (
    projection  TEXT PRIMARY KEY,
    position    INTEGER NOT NULL
);
CREATE TABLE rm_rebuild_docs (
    projection  TEXT NOT NULL,
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (projection, collection, key)
) WITHOUT ROWID;
CREATE TABLE rm_rebuild_checkpoints (
    projection  TEXT PRIMARY KEY,
    position    INTEGER NOT NULL
);
