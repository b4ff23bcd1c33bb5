-- Every prediction served (recorded asynchronously, in batches), with what drift detection and
-- live accuracy need; feedback attaches ground truth later.
CREATE TABLE predictions (
    id              UUID PRIMARY KEY,
    model           TEXT NOT NULL,
    version         INT NOT NULL,
    alias           TEXT,
    label           TEXT NOT NULL,
    confidence      DOUBLE PRECISION NOT NULL,
    top             JSONB NOT NULL,
    stats           JSONB NOT NULL,
    -- Scored by a shadow alias: recorded for comparison, never returned.
    shadow          BOOLEAN NOT NULL DEFAULT false,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    feedback_label  TEXT,
    feedback_at     TIMESTAMPTZ
);
CREATE INDEX predictions_feedback ON predictions (model, version, feedback_at DESC) WHERE feedback_at IS NOT NULL;
CREATE INDEX predictions_created ON predictions (created_at);

-- Per-model traffic routing: a canary share for another alias, and a shadow alias.
CREATE TABLE model_routing (
    model           TEXT PRIMARY KEY,
    canary_alias    TEXT,
    canary_percent  DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (canary_percent >= 0 AND canary_percent <= 100),
    shadow_alias    TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by      TEXT NOT NULL
);

-- Batch prediction jobs: items are scored in fixed chunks, each written to its own S3 object,
-- so a crash redoes at most one chunk and never duplicates a line.
CREATE TABLE batch_predictions (
    id             UUID PRIMARY KEY,
    model          TEXT NOT NULL,
    alias          TEXT,
    version        INT NOT NULL,
    source         JSONB NOT NULL,
    status         TEXT NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    total          INT NOT NULL,
    chunks         INT NOT NULL,
    chunks_done    INT NOT NULL DEFAULT 0,
    result_prefix  TEXT NOT NULL,
    error          TEXT,
    requested_by   TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
