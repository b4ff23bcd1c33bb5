-- The cluster-wide drift verdict of each served model version, written by the drift monitor that
-- holds the model (consumer group inference.monitor_group_id) after every check, read by any
-- inference replica for GET /v1/models/{name}/drift. consecutive and checks carry over when the
-- model moves to another monitor.
CREATE TABLE drift_verdicts (
    model        TEXT NOT NULL,
    version      INT NOT NULL,
    state        TEXT NOT NULL,
    kind         TEXT NOT NULL,
    consecutive  INT NOT NULL,
    checks       BIGINT NOT NULL,
    verdict      JSONB NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);
