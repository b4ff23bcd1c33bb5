-- Bulk imports of objects already in S3, laid out as <prefix>/<label>/<file>.
CREATE TABLE imports (
    id           UUID PRIMARY KEY,
    dataset      TEXT NOT NULL,
    bucket       TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    -- Every source key up to and including this one has been handled (ListObjectsV2 StartAfter).
    cursor       TEXT,
    error        TEXT,
    -- A worker holds the import until then; an expired lease means the worker died.
    lease_until  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
CREATE INDEX imports_pending ON imports (created_at) WHERE status IN ('queued', 'running');

-- One row per source object, written in the same transaction as its media row, so a resumed
-- import skips exactly what was done and its counts stay exact.
CREATE TABLE import_items (
    import_id      UUID NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
    source_key     TEXT NOT NULL,
    outcome        TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'rejected')),
    media_id       UUID,
    error_code     TEXT,
    error_message  TEXT,
    PRIMARY KEY (import_id, source_key)
);
