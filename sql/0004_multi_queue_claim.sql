-- Workers that serve several queues at once (a service worker for all primary services) claim in id
-- order across their queues: tasks were queued image by image, so this keeps one image's tasks together
-- and its prepared bytes in the worker's cache.
CREATE INDEX jobs_claimable_order_idx ON jobs (id) WHERE state IN ('queued', 'failed');
