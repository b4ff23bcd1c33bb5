-- The model registry: models, immutable numbered versions, movable aliases and their audit trail.

CREATE TABLE models (
    name            TEXT PRIMARY KEY,
    -- The highest version number given out; the next registration takes latest_version + 1 under
    -- this row's lock, so numbers are dense.
    latest_version  INT NOT NULL DEFAULT 0 CHECK (latest_version >= 0),
    -- Bumped by every change announced on models.events; consumers ignore older revisions.
    revision        BIGINT NOT NULL DEFAULT 0,
    -- The training-job request the model was last trained with (reused by retraining).
    template        JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    model            TEXT NOT NULL REFERENCES models (name),
    version          INT NOT NULL CHECK (version > 0),
    artifact_key     TEXT NOT NULL,
    sha256           TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes       BIGINT NOT NULL CHECK (size_bytes >= 0),
    architecture     TEXT NOT NULL,
    input_spec       JSONB NOT NULL,
    labels           TEXT[] NOT NULL,
    hyperparameters  JSONB NOT NULL,
    metrics          JSONB NOT NULL,
    reference        JSONB NOT NULL,
    -- Lineage.
    job_id           UUID NOT NULL,
    trial_id         UUID NOT NULL,
    snapshot_id      TEXT NOT NULL,
    dataset          TEXT NOT NULL,
    spec_hash        TEXT NOT NULL,
    sluice_version   TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version),
    -- A trial is registered at most once per model: registering it again returns its version.
    UNIQUE (model, trial_id)
);
CREATE INDEX model_versions_job ON model_versions (job_id);

CREATE TABLE model_aliases (
    model       TEXT NOT NULL,
    alias       TEXT NOT NULL,
    version     INT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by  TEXT NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

-- Every alias move (to_version NULL: the alias was deleted), oldest first by id.
CREATE TABLE alias_history (
    id            BIGSERIAL PRIMARY KEY,
    model         TEXT NOT NULL REFERENCES models (name),
    alias         TEXT NOT NULL,
    from_version  INT,
    to_version    INT,
    actor         TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alias_history_alias ON alias_history (model, alias, id);
