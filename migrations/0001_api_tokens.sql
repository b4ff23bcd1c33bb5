-- API tokens: only a SHA-256 of each token is stored; the token itself is shown once.
CREATE TABLE api_tokens (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    token_sha256  BYTEA NOT NULL UNIQUE,
    scopes        TEXT[] NOT NULL CHECK (scopes <@ ARRAY['ingest', 'predict', 'train', 'admin']),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at    TIMESTAMPTZ
);
