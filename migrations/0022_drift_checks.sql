-- Every drift check of a served model version, one row per check next to drift_verdicts' latest,
-- so the verdict, each statistic and expected against live accuracy can be read over time
-- (GET /v1/models/{name}/drift/history, the console's Serving page). Written by the monitor in
-- the transaction that records the verdict; the newest 1,000 checks of each version are kept.
CREATE TABLE drift_checks (
    model             TEXT NOT NULL,
    version           INT NOT NULL,
    -- The version's check count at this check (drift_verdicts.checks), carried across monitors.
    check_no          BIGINT NOT NULL,
    checked_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    state             TEXT NOT NULL,
    kind              TEXT NOT NULL,
    expected_accuracy DOUBLE PRECISION,
    -- Accuracy on the latest answers with feedback when the check ran (NULL before any).
    live_accuracy     DOUBLE PRECISION,
    live_answers      BIGINT NOT NULL DEFAULT 0,
    -- [{name, kind, value, expected, t, p_value, threshold, drifted}]
    statistics        JSONB NOT NULL,
    PRIMARY KEY (model, version, check_no)
);
