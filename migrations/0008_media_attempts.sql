-- Deliveries that started processing an item and never finished it (its worker died): after
-- preprocess.max_attempts the item is failed and dead-lettered instead of crashing workers forever.
ALTER TABLE media ADD COLUMN attempts INT NOT NULL DEFAULT 0;
