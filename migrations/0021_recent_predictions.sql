-- `GET /v1/models/{name}/predictions` (and the console's Serving page) read a model's newest
-- served predictions; without this they would scan every model's predictions by time.
CREATE INDEX predictions_model_recent ON predictions (model, created_at DESC) WHERE batch_id IS NULL AND NOT shadow;
