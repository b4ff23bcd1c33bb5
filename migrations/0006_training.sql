-- Training jobs and their trials. A job's request is kept whole: it is the template a
-- retraining request reuses on the current data.

CREATE TABLE training_jobs (
    id                  UUID PRIMARY KEY,
    model               TEXT NOT NULL,
    dataset             TEXT NOT NULL REFERENCES datasets (name),
    architecture        TEXT NOT NULL,
    request             JSONB NOT NULL,
    status              TEXT NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    snapshot_id         TEXT NOT NULL,
    snapshot_key        TEXT NOT NULL,
    labels              JSONB NOT NULL,
    items               INT NOT NULL,
    -- Why the job exists: 'api' or 'retrain', with the evidence of a retrain request.
    origin              TEXT NOT NULL DEFAULT 'api',
    evidence            JSONB,
    requested_by        TEXT NOT NULL,
    best_trial          UUID,
    registered_version  INT,
    promotion           JSONB,
    error               TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ
);
CREATE INDEX training_jobs_model ON training_jobs (model, created_at DESC);

CREATE TABLE training_trials (
    id            UUID PRIMARY KEY,
    job_id        UUID NOT NULL REFERENCES training_jobs (id) ON DELETE CASCADE,
    ordinal       INT NOT NULL,
    rung          INT NOT NULL DEFAULT 0,
    parent        UUID REFERENCES training_trials (id),
    params        JSONB NOT NULL,
    status        TEXT NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    worker        TEXT,
    epoch         INT NOT NULL DEFAULT 0,
    epochs        INT NOT NULL,
    -- The latest epoch's metrics while running; the best epoch's when finished.
    metrics       JSONB,
    history       JSONB NOT NULL DEFAULT '[]'::jsonb,
    artifact_key  TEXT,
    sha256        TEXT,
    size_bytes    BIGINT,
    reference     JSONB,
    error         TEXT,
    duration_ms   BIGINT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    heartbeat_at  TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    UNIQUE (job_id, ordinal)
);
CREATE INDEX training_trials_job ON training_trials (job_id, rung);

-- Retrain requests seen, by event id (a redelivered request is recognised) and what came of them.
CREATE TABLE retrain_requests (
    event_id     UUID PRIMARY KEY,
    model        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    evidence     JSONB NOT NULL,
    outcome      TEXT NOT NULL,
    job_id       UUID REFERENCES training_jobs (id),
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX retrain_requests_model ON retrain_requests (model, received_at DESC);

-- Trials are spread over partitions explicitly (not by key hash) so every trainer worker of the
-- group gets its share; the relay sends a row to its partition when one is set.
ALTER TABLE outbox ADD COLUMN partition INT;
