-- Where Kafka stored each published event. The preprocess reconciler compares it with the
-- consumer group's committed offset and the partition's watermarks, so an item still queued
-- behind a backlog is told apart from one whose event the broker lost.
ALTER TABLE outbox ADD COLUMN sent_partition INT, ADD COLUMN sent_offset BIGINT;
CREATE INDEX outbox_by_key ON outbox (key, topic, created_at DESC);
