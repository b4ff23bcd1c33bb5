-- Which run of a batch prediction holds it: every delivery that starts a job names itself here,
-- so a run whose partition was given to another process (a replica joined the group) finds out
-- at its next chunk and stops, instead of scoring every remaining chunk a second time.
ALTER TABLE batch_predictions ADD COLUMN run_id UUID;
