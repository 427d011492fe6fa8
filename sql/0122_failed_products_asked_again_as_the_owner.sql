-- `backfill --failed` as windmill_worker, the login deploy/README gives `backfill`, failed with "permission denied
-- for table postprocessing": retry_failed_products (sql/0120) locks the failed rows it takes (FOR UPDATE, so two
-- runs at once take different ones), which needs UPDATE, and the worker may only read, insert and delete them. It
-- runs as its owner now, as the other repairs that touch rows the worker may not change do (prune_jobs_batch);
-- EXECUTE stays the worker's alone.
ALTER FUNCTION retry_failed_products(integer) SECURITY DEFINER SET search_path = windmill, pg_temp;
