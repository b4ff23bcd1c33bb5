-- Per-model promotion policy, set by an admin: what a training job or a retrain started by a
-- non-admin may do to `production` on its own, and which other aliases only an admin may move.
CREATE TABLE model_policies (
    model              TEXT PRIMARY KEY,
    auto_promote       TEXT NOT NULL DEFAULT 'never' CHECK (auto_promote IN ('never', 'if_better', 'always')),
    protected_aliases  TEXT[] NOT NULL DEFAULT '{}',
    updated_by         TEXT NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
