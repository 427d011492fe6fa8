-- `bench export`'s collection (windmill.bench.export_memory): one statement per table, each over every image of
-- the group (set-based: a million images seed in minutes).

-- name: bench_export_answers
-- Three answers per bench image: a detector's person and dog, a caption, the metadata's dimensions.
INSERT INTO results (image_id, service, task_id, data, status, processing_time)
SELECT i.image_id, s.service, gen_random_uuid(), s.data, 'success', 0.05
  FROM images i
 CROSS JOIN (VALUES
   ('yolov8', '{"predictions": [{"label": "person", "emoji": "🧑", "confidence": 0.91,
                "bbox": {"x": 10, "y": 20, "width": 120, "height": 240}},
               {"label": "dog", "emoji": "🐕", "confidence": 0.84,
                "bbox": {"x": 200, "y": 150, "width": 90, "height": 70}}]}'::jsonb),
   ('blip', '{"predictions": [{"text": "a person walking a dog in a park", "emoji": "",
              "emoji_mappings": [{"word": "person", "emoji": "🧑"}, {"word": "dog", "emoji": "🐕"}]}]}'),
   ('metadata', '{"predictions": [{"dimensions": {"width": 640, "height": 480},
                  "file": {"file_size": 98213, "file_type": "jpeg"}}]}')) AS s (service, data)
 WHERE i.image_group = %(group)s

-- name: bench_export_boxes
-- Two merged boxes per bench image, a person and a dog.
INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key)
SELECT i.image_id, ARRAY[1], jsonb_build_object(
         'emoji', b.emoji, 'labels', jsonb_build_array(b.label), 'cluster_id', b.emoji || '_1',
         'merged_bbox', b.bbox, 'avg_confidence', 0.87, 'detection_count', 2,
         'contributing_services', '["rtdetr", "yolov8"]'::jsonb,
         'detections', jsonb_build_array(jsonb_build_object('label', b.label, 'service', 'yolov8',
                                                            'confidence', 0.9, 'bbox', b.bbox))),
       b.emoji || ':' || i.image_id
  FROM images i
 CROSS JOIN (VALUES
   ('🧑', 'person', '{"x": 10, "y": 20, "width": 120, "height": 240}'::jsonb),
   ('🐕', 'dog', '{"x": 200, "y": 150, "width": 90, "height": 70}')) AS b (emoji, label, bbox)
 WHERE i.image_group = %(group)s

-- name: bench_export_box_postprocessing
-- A colour answer per merged box.
INSERT INTO postprocessing (image_id, merged_box_id, service, data, status)
SELECT b.image_id, b.merged_id, 'colors', '{"predictions": [{"primary": {"hex": "#433e3a"},
       "palette": {"colors": [{"hex": "#433e3a"}, {"hex": "#8f8f8f"}]}}]}'::jsonb, 'success'
  FROM merged_boxes b JOIN images i USING (image_id)
 WHERE i.image_group = %(group)s

-- name: bench_export_caption_scores
-- A caption score per bench image.
INSERT INTO postprocessing (image_id, service, data, status)
SELECT i.image_id, 'caption_score_blip', '{"similarity_score": 0.31, "caption_service": "blip"}', 'success'
  FROM images i WHERE i.image_group = %(group)s

-- name: bench_export_consensus
-- A consensus per bench image.
INSERT INTO consensus (image_id, consensus_data)
SELECT i.image_id, '{"votes": {"consensus": [{"emoji": "🧑", "votes": 3, "final_score": 8},
                                             {"emoji": "🐕", "votes": 2, "final_score": 5}]},
                    "services_count": 3}'::jsonb
  FROM images i WHERE i.image_group = %(group)s

-- name: bench_export_forget_jobs
-- The jobs the triggers queued for the group's images (when the login could not load behind their back).
DELETE FROM jobs WHERE image_id IN (SELECT image_id FROM images WHERE image_group = %(group)s)

-- name: bench_export_analyze
ANALYZE images, results, merged_boxes, postprocessing, consensus
