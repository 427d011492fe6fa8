-- A submit killed (SIGKILL, the OOM killer, its machine lost) after it had entered a page of RabbitMQ tasks in the
-- ledger of tasks in flight (sql/0020) and before RabbitMQ confirmed them left entries with no message anywhere.
-- Only the scheduler's resend of what RabbitMQ lost saved them, and only once their queue held no message ready
-- (sql/0101); under a steady stream a queue is never empty, so they waited for ever, and their pairs with them (every
-- later submit skips a pair in flight).
--
-- Now the statement that enters a page of entries also names them in a row of service_tasks_unconfirmed, with the
-- PostgreSQL session that entered them (its backend's pid and start: a pid is reused by a later session, the pair
-- is not); submit deletes the row once RabbitMQ has confirmed every task of the page. A row whose session is gone
-- (killed with its process, or its connection lost) names tasks that may never have been published: the scheduler
-- publishes them again at once, whatever their queue holds (one RabbitMQ did confirm arrives twice and is answered
-- once). A live session's row is left alone, however old. Entries named in no row count as confirmed: those from
-- before this migration, and those a worker enters for a redelivered task (sql/0130).
--
-- A row per page rather than a mark per entry: on a copy of the ledger holding 1.1M entries, updating a page's 22,000
-- entries (2,000 images × 11 services) after the confirms took 266 ms, nearly twice their INSERT (140 ms). The row
-- costs nothing measurable: entering a page (register_tasks_in_flight) and deleting its row took a median 682 ms,
-- entering it without the row 683 ms (6 pages each, interleaved, on 1.1M entries); the delete alone 1–2 ms.

-- The start of the calling session's backend: with pg_backend_pid(), who entered a page. A session sees its own.
CREATE FUNCTION session_started_at() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = windmill, pg_temp
AS $$
    SELECT backend_start FROM pg_catalog.pg_stat_get_activity(pg_backend_pid())
$$;

-- Whether the session that entered a page has ended: no backend has its pid, or the one that has it started at
-- another time (the pid was reused). A backend whose start the caller may not see (another login's session, for a
-- role without pg_read_all_stats) counts as that session, alive: a page is resent only when its session is known to
-- be gone. Submit and the scheduler share a login (deploy/roles.sql: windmill_worker), so they see each other's.
CREATE FUNCTION submitter_gone(p_pid integer, p_started_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE SET search_path = windmill, pg_temp
AS $$
    SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_stat_get_activity(p_pid) AS backend
                        WHERE backend.backend_start = p_started_at OR backend.backend_start IS NULL)
$$;

-- Filled by the column defaults: only register_tasks_in_flight (sql/queries/producer.sql) inserts, and the session
-- it runs in is the submitter.
CREATE TABLE service_tasks_unconfirmed (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_ids uuid[] NOT NULL,
    submitter_pid integer NOT NULL DEFAULT pg_backend_pid(),
    submitter_started_at timestamptz DEFAULT session_started_at(),
    entered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE service_tasks_unconfirmed IS
    'Pages of ledger entries (service_tasks_in_flight) whose RabbitMQ messages were not confirmed yet, with the '
    'session that entered them; deleted once confirmed. A page whose session is gone is published again.';
COMMENT ON COLUMN service_tasks_unconfirmed.task_ids IS
    'The tasks the page entered (or took over from a dead-lettered task); some may have been answered since.';
