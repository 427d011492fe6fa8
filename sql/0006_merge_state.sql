-- When each image's boxes were last recomputed, and when the set last changed: what backfills and the
-- monitoring views compare with the answers' and the consensus' timestamps.
CREATE TABLE merged_images (
    image_id bigint PRIMARY KEY REFERENCES images ON DELETE CASCADE,
    merged_at timestamptz NOT NULL DEFAULT now(),
    changed_at timestamptz NOT NULL DEFAULT now(),
    boxes integer NOT NULL,
    source_result_ids bigint[] NOT NULL,
    worker_id text
);
COMMENT ON COLUMN merged_images.merged_at IS 'Last recompute, changed or not.';
COMMENT ON COLUMN merged_images.changed_at IS 'Last recompute that inserted, updated or deleted a box.';
