-- Media items, their processed outputs, and the transactional outbox that publishes them.

CREATE TABLE datasets (
    name        TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE media (
    id            UUID PRIMARY KEY,
    dataset       TEXT NOT NULL REFERENCES datasets (name),
    label         TEXT,
    kind          TEXT NOT NULL CHECK (kind IN ('image', 'video')),
    content_type  TEXT NOT NULL,
    bytes         BIGINT NOT NULL CHECK (bytes > 0),
    sha256        TEXT NOT NULL,
    width         INT,
    height        INT,
    raw_key       TEXT NOT NULL UNIQUE,
    source        TEXT,
    metadata      JSONB NOT NULL DEFAULT '{}'::jsonb,
    status        TEXT NOT NULL DEFAULT 'accepted'
                  CHECK (status IN ('accepted', 'processing', 'processed', 'failed')),
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at  TIMESTAMPTZ,
    -- The same bytes in the same dataset are stored once.
    UNIQUE (dataset, sha256)
);
CREATE INDEX media_dataset_status ON media (dataset, status);

-- Written by preprocess: resized images and extracted video frames.
CREATE TABLE media_outputs (
    media_id      UUID NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    width         INT NOT NULL,
    height        INT NOT NULL,
    frame_index   INT,
    timestamp_ms  BIGINT,
    PRIMARY KEY (media_id, key)
);

-- Events committed together with the rows they describe; a relay publishes and marks them.
CREATE TABLE outbox (
    id          UUID PRIMARY KEY,
    topic       TEXT NOT NULL,
    key         TEXT NOT NULL,
    payload     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ
);
CREATE INDEX outbox_unsent ON outbox (created_at) WHERE sent_at IS NULL;
