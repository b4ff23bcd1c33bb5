-- Poison isolation beyond preprocess: every unit of work counts its attempts and, once they run
-- out, is parked as failed with its reason (and a `work.parked` event on `work.dlq`), so the rest
-- of the work flows. Attempts are counted before the work runs, so work that kills its worker is
-- counted too.

-- Outbox rows Kafka keeps refusing (an event over the broker's size limit) are parked after
-- outbox.max_attempts: `failed_at` set, the relay skips them.
ALTER TABLE outbox ADD COLUMN attempts INT NOT NULL DEFAULT 0,
                   ADD COLUMN failed_at TIMESTAMPTZ,
                   ADD COLUMN error TEXT;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (created_at) WHERE sent_at IS NULL AND failed_at IS NULL;

-- Deliveries that started a trial (trainer.max_trial_attempts).
ALTER TABLE training_trials ADD COLUMN attempts INT NOT NULL DEFAULT 0;

-- The coordinator's step after a rung ends (the next rung's plan, or registration): attempts and
-- the last failure, reset when a step commits (trainer.max_step_attempts).
ALTER TABLE training_jobs ADD COLUMN step_attempts INT NOT NULL DEFAULT 0,
                          ADD COLUMN step_error TEXT;

-- Attempts at the chunk `chunks_done` points at and its last failure, reset when the job moves
-- past it; chunks parked after inference.batch_max_attempts, as [{"chunk", "attempts", "reason"}].
ALTER TABLE batch_predictions ADD COLUMN chunk_attempts INT NOT NULL DEFAULT 0,
                              ADD COLUMN chunk_error TEXT,
                              ADD COLUMN failed_chunks JSONB NOT NULL DEFAULT '[]'::jsonb;

-- Attempts at each source object of an import not yet recorded in import_items; an object out of
-- attempts (ingest.import_max_attempts) is recorded there as rejected with code `gave_up`.
CREATE TABLE import_attempts (
    import_id   UUID NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
    source_key  TEXT NOT NULL,
    attempts    INT NOT NULL DEFAULT 0,
    last_error  TEXT,
    PRIMARY KEY (import_id, source_key)
);
