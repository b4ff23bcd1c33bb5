-- Preprocessing: per-dataset pipeline specs and the spec each output was made with.
CREATE TABLE pipelines (
    dataset     TEXT PRIMARY KEY REFERENCES datasets (name),
    spec        JSONB NOT NULL,
    spec_hash   TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE media ADD COLUMN spec_hash TEXT;

ALTER TABLE media_outputs ADD COLUMN spec_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE media_outputs ADD COLUMN duration_ms BIGINT;
ALTER TABLE media_outputs ADD COLUMN created_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX media_outputs_spec ON media_outputs (media_id, spec_hash);
CREATE INDEX media_stale ON media (updated_at) WHERE status IN ('accepted', 'processing');
