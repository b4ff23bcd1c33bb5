-- Console sign-in sessions: the browser holds a random session secret in an HttpOnly cookie;
-- only its SHA-256 is stored. A session grants exactly its token's scopes, ends when it
-- expires, when it signs out (the row is deleted) or when its token is revoked or deleted.
CREATE TABLE console_sessions (
    secret_sha256  BYTEA PRIMARY KEY,
    token_id       UUID NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
