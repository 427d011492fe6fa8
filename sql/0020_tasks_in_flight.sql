-- Idempotent submit: while an image × service pair has a task queued, running or waiting for a retry, `submit`
-- adds nothing for it, whichever broker carries the task.
--
-- Job table: the jobs rows are their own ledger. A unique index over the in-flight states of service tasks (jobs
-- whose payload is a task message, i.e. carries a task_id) refuses a second one per queue and image; submit's
-- insert skips the conflict. Merge, consensus and postprocessing jobs carry no task_id and keep their own rule
-- (one *queued* job per dedupe key, a running one may have a queued successor).
--
-- RabbitMQ: the broker cannot be asked "is there a message for this pair?", so PostgreSQL keeps a ledger of the
-- tasks in flight, one row per pair holding the task id. Submit inserts its tasks with ON CONFLICT DO NOTHING
-- (committed before it publishes, so a fast worker's answer always finds the entry) and publishes only those it
-- inserted; the task's final results row removes the entry in the same transaction (trigger below), so a pair is
-- free again exactly when its answer is stored. An entry whose message was lost (a purged or deleted queue, a
-- submit killed between its insert and its publish) stays until an operator removes it: `windmill-cli tasks
-- list` shows entries and how old they are, `windmill-cli status` compares them with RabbitMQ's queues, and
-- `windmill-cli tasks forget` removes them.

-- Service tasks in flight twice before this migration: keep one per queue and image (a running one first, else the
-- oldest); the others would answer the same pair again. They end 'done' with the reason, not deleted.
WITH ranked AS (
    SELECT id, first_value(id) OVER pair AS kept,
           row_number() OVER pair AS rank
      FROM jobs
     WHERE state IN ('queued', 'running', 'failed') AND payload ? 'task_id'
    WINDOW pair AS (PARTITION BY queue, image_id ORDER BY (state = 'running') DESC, id)
)
UPDATE jobs
   SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
       last_error = 'superseded by job ' || ranked.kept || ' for the same image and service (migration 0020)'
  FROM ranked
 WHERE jobs.id = ranked.id AND ranked.rank > 1;

CREATE UNIQUE INDEX jobs_service_task_in_flight_key ON jobs (queue, image_id)
    WHERE state IN ('queued', 'running', 'failed') AND payload ? 'task_id';

-- No foreign key to images: its check locks the image row for every entry, which cost submit a third of its time
-- (22,000 entries per batch); submit enters only images it has just read, and a trigger below removes the entries
-- of a deleted image instead of ON DELETE CASCADE. The table holds only what is in flight, so the operators'
-- queries (status, tasks list, tasks forget) read it whole and it needs no other index.
CREATE TABLE service_tasks_in_flight (
    image_id bigint NOT NULL,
    service text NOT NULL,
    queue text NOT NULL,
    task_id uuid NOT NULL UNIQUE,
    submitted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, service)
);
COMMENT ON TABLE service_tasks_in_flight IS
    'RabbitMQ tasks published and not yet answered, one per image and service: submit skips these pairs.';

CREATE FUNCTION forget_tasks_of_deleted_image() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM service_tasks_in_flight WHERE image_id = OLD.image_id;
    RETURN NULL;
END $$;

CREATE TRIGGER images_forget_tasks_in_flight AFTER DELETE ON images
    FOR EACH ROW EXECUTE FUNCTION forget_tasks_of_deleted_image();

-- The final row of a task (success, or error/timeout after its last attempt) frees its pair. Only the entry of
-- that very task: an answer of another task (an older duplicate) leaves the pair to the task that holds it.
CREATE FUNCTION release_task_in_flight() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM service_tasks_in_flight
     WHERE image_id = NEW.image_id AND service = NEW.service AND task_id = NEW.task_id;
    RETURN NULL;
END $$;

CREATE TRIGGER results_release_task_in_flight AFTER INSERT ON results
    FOR EACH ROW EXECUTE FUNCTION release_task_in_flight();
