-- Which claim holds an import's lease. Every renewal, cursor advance and ending names it, so a
-- worker whose lease expired and was taken over finds out at its next step and stops, instead of
-- working on beside the new holder (each object would be transferred twice).
ALTER TABLE imports ADD COLUMN lease_owner UUID;
