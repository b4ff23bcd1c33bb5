-- The console and `GET /v1/datasets/{name}/media` page through a dataset's items newest first
-- (keyset on created_at, id), filtered by status or label; with 10,000+ items a page must not
-- sort the whole dataset.
CREATE INDEX media_dataset_created ON media (dataset, created_at DESC, id DESC);
