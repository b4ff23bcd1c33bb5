-- Each trial's own seed: first-rung trials derive theirs from the job seed and their ordinal
-- (unless the job fixes one seed for all), promoted trials inherit their parent's. NULL for
-- trials created before this column, which used the job seed.
ALTER TABLE training_trials ADD COLUMN seed BIGINT;
