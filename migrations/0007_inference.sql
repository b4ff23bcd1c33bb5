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
    feedback_at     TIMESTAMPTZ,
    -- The batch-prediction job that scored it (NULL for served requests).
    batch_id        UUID
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

-- Batch prediction jobs: the item list is frozen in S3 (`manifest_key`) at submission and the
-- version pinned; items are scored in fixed chunks of `chunk_size`, chunk n written to its own S3
-- object under `result_prefix`, then `chunks_done` advanced past it. A crash redoes at most one
-- chunk, rewriting the same object, so no line is ever duplicated.
CREATE TABLE batch_predictions (
    id             UUID PRIMARY KEY,
    model          TEXT NOT NULL,
    -- The alias the request named (NULL when it named a version); `version` is what it pointed at.
    alias          TEXT,
    version        INT NOT NULL,
    -- {"dataset": name} or {"bucket": name, "prefix": prefix}.
    source         JSONB NOT NULL,
    top_k          INT NOT NULL CHECK (top_k >= 1),
    status         TEXT NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    total          INT NOT NULL CHECK (total >= 1),
    chunk_size     INT NOT NULL CHECK (chunk_size >= 1),
    chunks         INT NOT NULL CHECK (chunks >= 1),
    chunks_done    INT NOT NULL DEFAULT 0 CHECK (chunks_done >= 0 AND chunks_done <= chunks),
    manifest_key   TEXT NOT NULL,
    result_prefix  TEXT NOT NULL,
    error          TEXT,
    requested_by   TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at     TIMESTAMPTZ,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at    TIMESTAMPTZ
);
