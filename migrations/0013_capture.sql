-- Production data back into training. A model's capture policy says which served inputs are
-- stored into a dataset as unlabelled media (through ingest, like any upload); a captured item
-- remembers its prediction, so feedback on the prediction labels it.
CREATE TABLE capture_policies (
    model             TEXT PRIMARY KEY,
    dataset           TEXT NOT NULL,
    random_rate       DOUBLE PRECISION NOT NULL DEFAULT 0,
    below_confidence  DOUBLE PRECISION NOT NULL DEFAULT 0,
    during_drift_rate DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_by        TEXT,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE media ADD COLUMN captured_from UUID;
CREATE UNIQUE INDEX media_captured_from ON media (captured_from) WHERE captured_from IS NOT NULL;
CREATE INDEX media_unlabelled ON media (dataset, created_at DESC) WHERE label IS NULL;
