-- Workers score a trial's model (and the production version it is compared with) on the job's
-- test split and report it with the result; the coordinator gates from these scores instead of
-- loading the snapshot again. A job keeps the production version its trials were compared with.
ALTER TABLE training_trials ADD COLUMN test_scores JSONB;
ALTER TABLE training_jobs ADD COLUMN baseline_version INT;
