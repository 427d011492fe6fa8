-- The vote gate's check reads the image's job-table tasks in flight by an index of their own (issue 13 item 6:
-- PostgreSQL's CPU per answer on the job-table path).
--
-- Why. voter_tasks_outstanding() (sql/0105) runs at every voter answer, and `python -m windmill.bench.answer_cost`
-- measured its check at 72 µs per answer one by one and 331 µs with group commit on the job-table path (15-23 µs on
-- the RabbitMQ path). Two causes:
--   - The look-up of each task's results row was planned as a scan of all of results. PL/pgSQL keeps a statement's
--     plan for the session, and a plan made while results is small (a fresh database: the benchmark's start, a new
--     installation's first minutes until autovacuum's ANALYZE) stays while the table grows: every check read every
--     answer stored since. The function now plans with enable_seqscan off (its own setting, as sql/0098's look-up
--     has enable_sort off): each of its reads is an index probe whatever the statistics say when it is planned.
--     Every table it reads has an index for its condition, so no plan needs a scan the setting disables (one would
--     be costed at 10^10, over the JIT's threshold: a compilation per call); the plan test below keeps it so.
--   - Its job-table half asks for the image's service tasks queued, running or waiting for a retry. No index
--     answered that by the image alone: jobs_image_idx holds every version of every job of the image (done jobs are
--     kept an hour, and a job's state changes are not HOT updates, so each leaves a new entry), each entry a visit
--     to the table to find it done or dead; the partial unique index of sql/0020 holds only the tasks in flight, but
--     led by the queue, so for the image alone the planner could only read all of it (every task in flight of every
--     image: a submit's whole backlog).
--
-- Now a partial index of the tasks in flight by image (its predicate is the unique index's of sql/0020) answers the
-- check: it reads only that image's tasks in flight. It costs one index entry more when a service task is queued,
-- claimed or put back after a failed attempt (a job marked done leaves the predicate: no entry): in answer_cost's
-- job-table path, the same CPU per answer and 1-7% more WAL than without it (most sittings 1-2%). The other ways:
-- leading the unique index with the image costs no entry more (the same CPU, no more WAL), but replacing an index drops
-- one, which a migration never does (tests/test_migrations.py); probing the unique index once per voter queue would be
-- thirteen probes per check, and the queue names (service_config.json's queue_prefix) are not known to SQL. While the
-- table holds nothing but tasks in flight (a submit's backlog, nothing done yet), jobs_image_idx holds the same entries
-- and the planner may take it: the same reads. tests/test_vote_gate.py reads the check's plans (the plan test).
CREATE INDEX jobs_service_task_in_flight_image_idx ON jobs (image_id)
    WHERE state IN ('queued', 'running', 'failed') AND payload ? 'task_id';

-- sql/0105's function, its definition unchanged (0104's "outstanding", one home): the job-table half's WHERE is the
-- index's predicate and its image, so the plan reads jobs_service_task_in_flight_image_idx.
CREATE OR REPLACE FUNCTION voter_tasks_outstanding(p_image_id bigint, p_except_task uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SET enable_seqscan = off AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM service_tasks_in_flight t
                     JOIN services s ON s.name = t.service AND s.consensus_enabled
                    WHERE t.image_id = p_image_id AND t.task_id IS DISTINCT FROM p_except_task)
        OR EXISTS (SELECT 1 FROM jobs j
                     JOIN services s ON s.name = j.payload ->> 'service_name' AND s.consensus_enabled
                    WHERE j.image_id = p_image_id AND j.state IN ('queued', 'running', 'failed')
                      AND j.payload ? 'task_id'
                      AND NOT EXISTS (SELECT 1 FROM results r WHERE r.task_id = (j.payload ->> 'task_id')::uuid));
END $$;
