-- Webhooks: URLs subscribed (by an admin) to event types, and the deliveries of each event to
-- each webhook, with every attempt. The secret signs deliveries (HMAC-SHA256), so it is kept as
-- given; the API shows it only in the answer that created it.
CREATE TABLE webhooks (
    id           UUID PRIMARY KEY,
    url          TEXT NOT NULL,
    event_types  TEXT[] NOT NULL,
    secret       TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per event per webhook (a redelivered event adds none). `claimed_until` is the lease of
-- the process attempting it: a process that dies mid-attempt leaves a lease that runs out, and
-- the delivery is attempted again. `attempts` counts attempts started.
CREATE TABLE webhook_deliveries (
    id               UUID PRIMARY KEY,
    webhook_id       UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         UUID NOT NULL,
    event_type       TEXT NOT NULL,
    payload          JSONB NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_until    TIMESTAMPTZ,
    last_status_code INT,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_claimed ON webhook_deliveries (webhook_id) WHERE claimed_until IS NOT NULL;
CREATE INDEX webhook_deliveries_history ON webhook_deliveries (webhook_id, created_at DESC);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'pending';

-- Every attempt: when, how long, and the answer (a status code) or why there was none.
CREATE TABLE webhook_attempts (
    delivery_id  UUID NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      INT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  INT NOT NULL,
    status_code  INT,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
