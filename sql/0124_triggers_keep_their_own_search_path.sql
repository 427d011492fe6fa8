-- A row written by hand in psql, or by another program, failed in Windmill's triggers: `INSERT INTO windmill.results
-- ...` as a login without Windmill's search path (the postgres superuser; windmill_owner, to which deploy/roles.sql
-- gives none) ended in `relation "services" does not exist`, and so did deleting an image, a postprocessing row or
-- inserting a job. The trigger functions name Windmill's tables and functions unqualified, as every function here
-- does, and PL/pgSQL resolves those names with the caller's search path. Each trigger function now carries its own,
-- which the functions it calls inherit; Windmill's own connections set the same path, so nothing changes for them
-- (about 2 µs per call for the setting).
ALTER FUNCTION answer_stored() SET search_path = windmill, pg_temp;
ALTER FUNCTION note_answer_change() SET search_path = windmill, pg_temp;
ALTER FUNCTION enqueue_consensus_for_image() SET search_path = windmill, pg_temp;
ALTER FUNCTION note_postprocessing_change() SET search_path = windmill, pg_temp;
ALTER FUNCTION notify_job_queued() SET search_path = windmill, pg_temp;
ALTER FUNCTION notify_images_registered() SET search_path = windmill, pg_temp;
ALTER FUNCTION forget_tasks_of_deleted_image() SET search_path = windmill, pg_temp;
