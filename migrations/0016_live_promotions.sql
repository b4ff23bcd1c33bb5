-- promote: if_better_live. A job's candidate is registered under the `candidate` alias and
-- shadows production; once feedback on the answers shows it significantly better on live
-- traffic, inference moves production to it (one pending promotion per model).
CREATE TABLE live_promotions (
    model               TEXT PRIMARY KEY,
    candidate_version   INT NOT NULL,
    production_version  INT NOT NULL,
    job_id              UUID,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at          TIMESTAMPTZ,
    outcome             TEXT,
    reason              TEXT
);
