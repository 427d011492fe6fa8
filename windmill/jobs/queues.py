"""The job-table queues the roles consume, one constant each.

What goes into these queues (payloads, dedupe keys, delays, which boxes get which postprocessing) is defined once,
in SQL (sql/0012_job_contract.sql: merge_job, consensus_job, ..., enqueue_postprocessing); Python only names the
queues a worker listens to. tests/test_job_contract.py checks every name here against what SQL queues.
"""

from __future__ import annotations

MERGE_QUEUE = "merge"
CONSENSUS_QUEUE = "consensus"
CAPTION_SCORE_QUEUE = "caption_score"
SCHEDULER_QUEUE = "scheduler"
POSTPROCESS_COLORS_QUEUE = "postprocess_colors"
POSTPROCESS_FACE_QUEUE = "postprocess_face"
POSTPROCESS_POSE_QUEUE = "postprocess_pose"

# The postprocessing services a box can get, and the queue of each.
POSTPROCESS_QUEUES = {"colors": POSTPROCESS_COLORS_QUEUE, "face": POSTPROCESS_FACE_QUEUE,
                      "pose": POSTPROCESS_POSE_QUEUE}

# Every queue a role of the pipeline consumes; with the services' task queues (the catalog's), the job table's queues.
ROLE_QUEUES = (MERGE_QUEUE, CONSENSUS_QUEUE, CAPTION_SCORE_QUEUE, SCHEDULER_QUEUE, *POSTPROCESS_QUEUES.values())
