-- name: latest_detector_results
-- The latest successful answer of every detector for one image (sql/0108).
SELECT result_id, service, data FROM latest_detector_results(%(image_id)s)

-- name: merge_inputs
-- Take the image's merge lock, then read the detectors' latest answers (rows with a result_id) and the stored boxes
-- (rows with a merged_id), each read after the lock was granted (sql/0108: the snapshot rule).
SELECT result_id, service, merged_id, crop_key, data FROM merge_inputs(%(image_id)s, %(lock_namespace)s)

-- name: store_merge
-- Every write of a merge in one statement (sql/0108): delete the boxes gone, update the boxes seen again, insert the
-- new ones and queue their postprocessing, record the merge. Returns the new boxes' ids in the order given.
SELECT store_merge(%(image_id)s, %(worker_id)s, %(gone)s::bigint[], %(changed)s, %(new)s, %(boxes)s,
                   %(source_result_ids)s::bigint[])

-- name: box_postprocessing
-- The postprocessing services a box gets (sql/0012 box_postprocessing: colors, and face and pose for people).
SELECT box_postprocessing(%(merged_data)s, %(crop_key)s)

-- name: merge_delay_s
-- How long after it is queued a merge job falls due (sql/0113), in seconds: the merger claims that long after a
-- notification of its queue.
SELECT extract(epoch FROM merge_delay())::float8
