-- The event log. `position` is assigned from log_head under its row lock, which is held until
-- commit: positions are gap-free and become visible in position order (docs/event-log.md).
CREATE TABLE events (
    position        BIGINT  PRIMARY KEY,
    stream_id       TEXT    NOT NULL,
    stream_version  BIGINT  NOT NULL,
    event_id        UUID    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    data            TEXT    NOT NULL, -- exact JSON text: the hash covers these bytes
    metadata        TEXT    NOT NULL,
    recorded_at     BIGINT  NOT NULL, -- microseconds since the Unix epoch, UTC
    prev_hash       BYTEA   NOT NULL,
    hash            BYTEA   NOT NULL,
    UNIQUE (stream_id, stream_version)
);

CREATE TABLE log_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    position  BIGINT  NOT NULL,
    hash      BYTEA   NOT NULL
);
INSERT INTO log_head (id, position, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE rm_live_docs (
    projection  TEXT NOT NULL,
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (projection, collection, key)
);
CREATE TABLE rm_live_checkpoints (
    projection  TEXT PRIMARY KEY,
    position    BIGINT NOT NULL
);
CREATE TABLE rm_rebuild_docs (
    projection  TEXT NOT NULL,
    collection  TEXT NOT NULL,
    key         TEXT NOT NULL,
    doc         TEXT NOT NULL,
    PRIMARY KEY (projection, collection, key)
);
CREATE TABLE rm_rebuild_checkpoints (
    projection  TEXT PRIMARY KEY,
    position    BIGINT NOT NULL
);
