-- herd registry schema v1 (PostgreSQL). Timestamps are RFC 3339 UTC text; JSON is stored as text.
CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    tenant      TEXT,
    description TEXT NOT NULL DEFAULT '',
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL
);
CREATE INDEX models_tenant ON models (tenant);

CREATE TABLE versions (
    model        TEXT NOT NULL REFERENCES models (name),
    version      BIGINT NOT NULL,
    digest       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    framework    TEXT NOT NULL,
    signature    TEXT NOT NULL,
    metrics      TEXT NOT NULL DEFAULT '{}',
    data_ref     TEXT,
    code_ref     TEXT,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    artifact_deleted_at TEXT,
    PRIMARY KEY (model, version)
);
CREATE INDEX versions_digest ON versions (digest);

-- No foreign key to versions: the registry checks targets itself, and `backup verify` reports
-- aliases whose version is gone (e.g. after a partial manual restore).
CREATE TABLE aliases (
    model      TEXT NOT NULL REFERENCES models (name),
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (model, name)
);

CREATE TABLE alias_history (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model        TEXT NOT NULL,
    name         TEXT NOT NULL,
    from_version BIGINT,
    to_version   BIGINT NOT NULL,
    at           TEXT NOT NULL,
    by_user      TEXT NOT NULL
);
CREATE INDEX alias_history_model ON alias_history (model, name);

CREATE TABLE releases (
    id          TEXT PRIMARY KEY,
    manifest    TEXT NOT NULL,
    model_count BIGINT NOT NULL,
    note        TEXT,
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE release_entries (
    release_id TEXT NOT NULL REFERENCES releases (id),
    model      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    digest     TEXT NOT NULL,
    PRIMARY KEY (release_id, model)
);
CREATE INDEX release_entries_digest ON release_entries (digest);

CREATE TABLE channels (
    name       TEXT PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases (id),
    revision   BIGINT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE channel_history (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      TEXT NOT NULL,
    action       TEXT NOT NULL,
    from_release TEXT,
    to_release   TEXT NOT NULL,
    at           TEXT NOT NULL,
    by_user      TEXT NOT NULL
);
CREATE INDEX channel_history_channel ON channel_history (channel);
