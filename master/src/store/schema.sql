-- shelfboot master database, schema version 2. See docs/master.md.
-- Version 2: node state 'ram' (a database of version 1 is migrated at open).
-- Package database: trusted_keys, releases, blobs, artifacts, artifact_blobs,
-- release_artifacts. Node database: nodes, assignments, events.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trusted_keys (
    key_id     TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    comment    TEXT NOT NULL,
    added_at   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL UNIQUE,
    signer          TEXT NOT NULL,
    imported_at     INTEGER NOT NULL,
    seq             INTEGER NOT NULL UNIQUE,
    manifest        TEXT NOT NULL,
    UNIQUE (name, version)
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    id        INTEGER PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('boot', 'package')),
    name      TEXT NOT NULL,
    version   TEXT NOT NULL,
    arch      TEXT NOT NULL,
    card_type TEXT NOT NULL,
    content   TEXT NOT NULL,
    UNIQUE (kind, name, version, arch, card_type)
);
CREATE TABLE IF NOT EXISTS artifact_blobs (
    artifact_id INTEGER NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    sha256      TEXT NOT NULL REFERENCES blobs (sha256),
    PRIMARY KEY (artifact_id, role)
);
CREATE TABLE IF NOT EXISTS release_artifacts (
    release_id  INTEGER NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    artifact_id INTEGER NOT NULL REFERENCES artifacts (id),
    PRIMARY KEY (release_id, artifact_id)
);
CREATE TABLE IF NOT EXISTS nodes (
    mac           TEXT PRIMARY KEY,
    card_type     TEXT NOT NULL,
    arch          TEXT NOT NULL,
    shelf         INTEGER NOT NULL,
    slot          INTEGER NOT NULL,
    hw_rev        TEXT NOT NULL,
    features      TEXT NOT NULL,
    class         TEXT,
    present       INTEGER NOT NULL,
    last_seen     INTEGER,
    state         TEXT NOT NULL CHECK (state IN
                    ('pristine', 'fetching', 'committing', 'ready', 'failed', 'test', 'ram')),
    state_reason  TEXT,
    inventory     TEXT,
    test_mode     TEXT,
    registered_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    target_kind TEXT NOT NULL CHECK (target_kind IN ('default', 'class', 'node')),
    target      TEXT NOT NULL,
    release_id  INTEGER REFERENCES releases (id),
    pins        TEXT NOT NULL,
    set_at      INTEGER NOT NULL,
    PRIMARY KEY (target_kind, target)
);
CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    node   TEXT,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_node ON events (node, id);
-- Cards ordered to prepare (`master prepare`): answered with a BurnNow before their plan
-- until they report Ready. A table of its own, so older databases get it on open.
CREATE TABLE IF NOT EXISTS prepare_pending (
    mac        TEXT PRIMARY KEY REFERENCES nodes (mac) ON DELETE CASCADE,
    ordered_at INTEGER NOT NULL
);
-- What each card's resident agent last reported of the set it runs (Alive): written only
-- when it changes. A table of its own, so older databases get it on open.
CREATE TABLE IF NOT EXISTS node_health (
    mac              TEXT PRIMARY KEY REFERENCES nodes (mac) ON DELETE CASCADE,
    health           TEXT NOT NULL CHECK (health IN
                       ('none', 'checking', 'healthy', 'unhealthy')),
    running          TEXT,
    rolled_back_from TEXT,
    dropped          INTEGER NOT NULL,
    detail           TEXT NOT NULL
);
