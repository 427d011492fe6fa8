-- name: count_images
SELECT count(*) FROM (
    SELECT 1 FROM images
     WHERE image_id > %(after_id)s AND (%(group)s::text IS NULL OR image_group = %(group)s)
     LIMIT %(limit)s) AS selected

-- name: submit_page
-- One page of the images to submit: those after an id, ascending (keyset paging on the primary key, or on
-- images_group_idx for a group: each page costs the same however far the walk got).
SELECT image_id, image_filename, image_path, image_url
  FROM images
 WHERE image_id > %(after_id)s AND (%(group)s::text IS NULL OR image_group = %(group)s)
 ORDER BY image_id
 LIMIT %(limit)s

-- name: images_by_path
-- The registered images of these files (what `images watch --submit` queues), ascending id.
SELECT image_id, image_filename, image_path, image_url
  FROM images
 WHERE image_path = ANY(%(paths)s::text[])
 ORDER BY image_id

-- name: images_writers
-- The transactions writing to `images` now (they hold its ROW EXCLUSIVE lock until they end): an image id they
-- drew may still appear below ids already visible. `submit --follow` moves its position past such ids only once
-- these transactions have ended.
SELECT coalesce(array_agg(virtualtransaction), '{}')
  FROM pg_locks
 WHERE locktype = 'relation' AND relation = 'images'::regclass AND mode = 'RowExclusiveLock' AND granted
   AND pid <> pg_backend_pid()

-- name: listen_images
-- `submit --follow`'s wake-up line: the channel the registration trigger of sql/0050 notifies.
LISTEN windmill_images

-- name: follow_position
SELECT after_image_id FROM follow_positions WHERE stream = %(stream)s

-- name: save_follow_position
INSERT INTO follow_positions (stream, after_image_id) VALUES (%(stream)s, %(after_id)s)
ON CONFLICT (stream) DO UPDATE SET after_image_id = excluded.after_image_id, updated_at = now()

-- name: answered_pairs
-- Which of these image × service pairs already have a successful answer.
SELECT DISTINCT image_id, service
  FROM results
 WHERE status = 'success' AND image_id = ANY(%(image_ids)s) AND service = ANY(%(services)s)

-- name: enqueue_service_tasks
-- Queue submit's tasks in the job table, in the order given (an image's tasks together), skipping every pair that
-- has a task in flight: a service-task job queued, running or failed (the unique index of sql/0020 refuses it) or
-- a RabbitMQ task in the ledger. Returns the job id and task id of each task queued.
INSERT INTO jobs (queue, image_id, payload, dedupe_key, max_attempts)
SELECT batch.queue, batch.image_id, batch.payload, batch.dedupe_key, batch.max_attempts
  FROM unnest(%(queues)s::text[], %(image_ids)s::bigint[], %(services)s::text[], %(payloads)s::jsonb[],
              %(dedupe_keys)s::text[], %(max_attempts)s::integer[]) WITH ORDINALITY
       AS batch (queue, image_id, service, payload, dedupe_key, max_attempts, position)
 WHERE NOT EXISTS (SELECT 1 FROM service_tasks_in_flight ledger
                    WHERE ledger.image_id = batch.image_id AND ledger.service = batch.service)
 ORDER BY batch.position
ON CONFLICT DO NOTHING
RETURNING id, payload ->> 'task_id'

-- name: register_tasks_in_flight
-- Enter RabbitMQ tasks in the ledger before they are published; returns the ids of those entered (only these are
-- published), each with the id of the page that names them as unconfirmed. A pair already in flight (in the ledger,
-- or as a job-table task queued, running or failed) is skipped, unless the entry belongs to the task named in
-- `replaces` (a dead-lettered task being replayed under a new id takes over its entry, its count of deaths started
-- afresh: sql/0130); so is a task whose image is gone (a replay of an old task). The page (sql/0133) is written in
-- the same statement, so no entry is ever committed without it: until confirm_tasks_in_flight deletes it, a
-- scheduler that finds this session gone publishes its tasks again.
WITH batch AS (
    SELECT * FROM unnest(%(image_ids)s::bigint[], %(services)s::text[], %(queues)s::text[], %(task_ids)s::uuid[],
                         %(replaces)s::uuid[])
                  AS batch (image_id, service, queue, task_id, replaces)
), taken_over AS (
    UPDATE service_tasks_in_flight ledger
       SET task_id = batch.task_id, queue = batch.queue, submitted_at = now(), deaths = 0, running_since = NULL
      FROM batch
     WHERE ledger.image_id = batch.image_id AND ledger.service = batch.service AND ledger.task_id = batch.replaces
    RETURNING ledger.task_id
), entered AS (
    INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id)
    SELECT batch.image_id, batch.service, batch.queue, batch.task_id
      FROM batch
     WHERE NOT EXISTS (SELECT 1 FROM taken_over WHERE taken_over.task_id = batch.task_id)
       AND EXISTS (SELECT 1 FROM images WHERE images.image_id = batch.image_id)
       AND NOT EXISTS (SELECT 1 FROM jobs
                        WHERE jobs.queue = batch.queue AND jobs.image_id = batch.image_id
                          AND jobs.state IN ('queued', 'running', 'failed') AND jobs.payload ? 'task_id')
    ON CONFLICT DO NOTHING
    RETURNING task_id
), unconfirmed AS (
    INSERT INTO service_tasks_unconfirmed (task_ids)
    SELECT array_agg(made.task_id)
      FROM (SELECT task_id FROM taken_over UNION ALL SELECT task_id FROM entered) AS made
    HAVING count(*) > 0
    RETURNING id
)
SELECT task_id, (SELECT id FROM unconfirmed) AS unconfirmed FROM taken_over
UNION ALL
SELECT task_id, (SELECT id FROM unconfirmed) FROM entered

-- name: drop_answered_tasks_in_flight
-- Of the ledger entries just made, remove those whose pair has a successful answer by now, and return their task
-- ids (they are not published). Run after the entries are committed, with a snapshot of its own: a task in flight
-- whose entry was gone when this submit entered its own had written its row first (the trigger removes the entry in
-- the row's transaction), so this statement sees that row.
DELETE FROM service_tasks_in_flight ledger
 WHERE ledger.task_id = ANY(%(task_ids)s::uuid[])
   AND EXISTS (SELECT 1 FROM results
                WHERE results.image_id = ledger.image_id AND results.service = ledger.service
                  AND results.status = 'success')
RETURNING ledger.task_id

-- name: drop_answered_service_tasks
-- The job table's twin of drop_answered_tasks_in_flight, in the inserting transaction (before any worker can see
-- the jobs): a task in flight whose job was no longer queued, running or failed when the insert checked had
-- committed its row first (the row is written before the job is marked done). Its new job is marked done at once
-- (no worker ever sees it queued; the retention prunes it), so the worker role needs no DELETE on jobs.
UPDATE jobs
   SET state = 'done', last_error = 'answered while submit ran', updated_at = now()
 WHERE jobs.id = ANY(%(ids)s::bigint[])
   AND EXISTS (SELECT 1 FROM results
                WHERE results.image_id = jobs.image_id AND results.service = jobs.payload ->> 'service_name'
                  AND results.status = 'success')
RETURNING jobs.payload ->> 'task_id'

-- name: release_tasks_in_flight
-- Remove ledger entries of tasks that were never published (submit failed or was interrupted before RabbitMQ
-- confirmed them), so the next submit sends them.
DELETE FROM service_tasks_in_flight WHERE task_id = ANY(%(task_ids)s::uuid[])

-- name: confirm_tasks_in_flight
-- Every task of a page that register_tasks_in_flight entered is confirmed by RabbitMQ, or released: its entries
-- stand for messages that exist, and the page no longer names them as unconfirmed (sql/0133).
DELETE FROM service_tasks_unconfirmed WHERE id = %(page)s

-- name: list_tasks_in_flight
-- Ledger entries, oldest first: what `tasks list` shows and `tasks forget` would remove. Each queue's oldest from
-- the queue-and-age index, the queues found by a loose index scan (one probe per queue), then the oldest of those:
-- sorting every entry instead took 0.7 s at 3.3M entries in flight, so tens of seconds at ten million images.
WITH RECURSIVE queues AS (
    (SELECT queue FROM service_tasks_in_flight ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT t.queue FROM service_tasks_in_flight t WHERE t.queue > q.queue ORDER BY t.queue LIMIT 1)
      FROM queues q
     WHERE q.queue IS NOT NULL
)
SELECT oldest.service, oldest.queue, oldest.image_id, oldest.task_id, oldest.submitted_at,
       round(extract(epoch FROM now() - oldest.submitted_at)::numeric, 1) AS age_s
  FROM queues q
 CROSS JOIN LATERAL (
       SELECT t.service, t.queue, t.image_id, t.task_id, t.submitted_at
         FROM service_tasks_in_flight t
        WHERE t.queue = q.queue
          AND (%(service)s::text IS NULL OR t.service = %(service)s)
          AND t.submitted_at <= now() - %(older_than)s::interval
        ORDER BY t.submitted_at, t.image_id, t.service
        LIMIT %(limit)s) oldest
 WHERE q.queue IS NOT NULL
 ORDER BY oldest.submitted_at, oldest.image_id, oldest.service
 LIMIT %(limit)s

-- name: forget_tasks_in_flight
-- Remove ledger entries (their messages were lost): the next submit sends their pairs again.
DELETE FROM service_tasks_in_flight
 WHERE (%(service)s::text IS NULL OR service = %(service)s)
   AND submitted_at <= now() - %(older_than)s::interval

-- name: tasks_in_flight_to_resend
-- A queue's ledger entries submitted at least `older_than` ago, as the task messages they stand for (their own ids, so a
-- task that was not lost after all is answered once: its second delivery finds the row); by the queue-and-age
-- index (sql/0101), so a large ledger costs nothing here. Entries of a page not yet confirmed are left out
-- (sql/0133): a live submit is still publishing them, a dead one's are resent by unconfirmed_tasks_to_resend.
-- Those pages hold a page of ids per submit publishing now, hashed once.
SELECT ledger.task_id::text AS task_id, ledger.image_id, i.image_filename, i.image_path, i.image_url,
       to_json(ledger.submitted_at) #>> '{}' AS submitted_at, ledger.service AS service_name,
       ledger.queue AS queue_name
  FROM service_tasks_in_flight ledger
  JOIN images i ON i.image_id = ledger.image_id
 WHERE ledger.queue = %(queue)s AND ledger.submitted_at <= now() - %(older_than)s::interval
   AND ledger.task_id NOT IN (SELECT unnest(page.task_ids) FROM service_tasks_unconfirmed page)
 ORDER BY ledger.submitted_at, ledger.image_id
 LIMIT %(limit)s

-- name: orphaned_unconfirmed_pages
-- Pages of ledger entries that RabbitMQ had not confirmed when the session that entered them ended (sql/0133):
-- their tasks may never have been published. Oldest first.
SELECT id FROM service_tasks_unconfirmed
 WHERE submitter_gone(submitter_pid, submitter_started_at)
 ORDER BY id
 LIMIT %(limit)s

-- name: unconfirmed_tasks_to_resend
-- The tasks of a page (orphaned_unconfirmed_pages) still in the ledger, as the messages they stand for, under their
-- own ids: one that RabbitMQ did confirm arrives twice and is answered once. By the ledger's task id index.
SELECT ledger.task_id::text AS task_id, ledger.image_id, i.image_filename, i.image_path, i.image_url,
       to_json(ledger.submitted_at) #>> '{}' AS submitted_at, ledger.service AS service_name,
       ledger.queue AS queue_name
  FROM service_tasks_unconfirmed page
 CROSS JOIN LATERAL unnest(page.task_ids) AS named (task_id)
  JOIN service_tasks_in_flight ledger ON ledger.task_id = named.task_id
  JOIN images i ON i.image_id = ledger.image_id
 WHERE page.id = %(page)s
 ORDER BY ledger.image_id, ledger.service

-- name: delivery_starts
-- A redelivered RabbitMQ task is about to run (windmill/broker/poison.py, sql/0130): returns how many of its
-- deliveries died while they ran, counting the one before if it started and never finished, and marks this one as
-- running. A task with no entry (from a producer other than submit, or forgotten) is entered, unless its row is
-- written already (the row removed its entry), its image is gone, or another task holds its pair: then no row, and
-- the delivery is not counted.
INSERT INTO service_tasks_in_flight AS entry (image_id, service, queue, task_id, running_since)
SELECT %(image_id)s, %(service)s, %(queue)s, %(task_id)s::uuid, now()
 WHERE NOT EXISTS (SELECT 1 FROM results WHERE task_id = %(task_id)s::uuid)
   AND EXISTS (SELECT 1 FROM images WHERE image_id = %(image_id)s)
ON CONFLICT (image_id, service) DO UPDATE
   SET deaths = entry.deaths + CASE WHEN entry.running_since IS NULL THEN 0 ELSE 1 END, running_since = now()
 WHERE entry.task_id = excluded.task_id
RETURNING deaths

-- name: clean_delivery_starts
-- A redelivered RabbitMQ task about to run whose entry shows no death (none counted, and no delivery of it marked
-- running: windmill/broker/poison.py): marks it running and returns its deaths, 0; it runs beside the others. A crash
-- of the RabbitMQ node flags every message it recovers as redelivered, so after one nearly every task of a backlog
-- comes here. A task with no entry is entered, as delivery_starts does. No row: a death on record, a mark left by a
-- delivery that never finished, or a task delivery_starts would not count; it runs alone, through delivery_starts.
INSERT INTO service_tasks_in_flight AS entry (image_id, service, queue, task_id, running_since)
SELECT %(image_id)s, %(service)s, %(queue)s, %(task_id)s::uuid, now()
 WHERE NOT EXISTS (SELECT 1 FROM results WHERE task_id = %(task_id)s::uuid)
   AND EXISTS (SELECT 1 FROM images WHERE image_id = %(image_id)s)
ON CONFLICT (image_id, service) DO UPDATE SET running_since = now()
 WHERE entry.task_id = excluded.task_id AND entry.running_since IS NULL AND entry.deaths = 0
RETURNING deaths

-- name: delivery_hands_on
-- A redelivered RabbitMQ task's handler handed it on without its final row (a retry, a task given back): it did not
-- die running (sql/0130).
UPDATE service_tasks_in_flight SET running_since = NULL WHERE task_id = %(task_id)s::uuid
