-- A shadow prediction names the prediction it shadowed, so feedback on the answer scores both
-- versions and the two can be compared live on the same inputs.
ALTER TABLE predictions ADD COLUMN shadow_of UUID;
CREATE INDEX predictions_shadow_of ON predictions (shadow_of) WHERE shadow_of IS NOT NULL;
