-- Which run of a trial holds it: every delivery that starts a trial names itself here, so a run
-- whose partition was given to another worker finds out at its next epoch and stops, instead of
-- training on beside the run that took the trial over.
ALTER TABLE training_trials ADD COLUMN run_id UUID;
