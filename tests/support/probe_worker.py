"""A worker process with the `probe` role, for tests that need real processes: each job records its run in
public.probe_runs, then sleeps or fails as its payload says ({"sleep": s, "fail": "why", "permanent": true})."""

from __future__ import annotations

import sys
import time

from windmill.jobs import Job, PermanentJobError
from windmill.roles.registry import Role, RoleContext, register_role

PROBE_QUEUE = "probe"
PROBE_TABLE = """CREATE TABLE IF NOT EXISTS public.probe_runs (
    job_id bigint NOT NULL, worker_id text NOT NULL, attempt integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz)"""


@register_role("probe")
def probe_role(context: RoleContext) -> Role:
    def handle(job: Job) -> None:
        with context.pool.connection() as conn:
            conn.execute("INSERT INTO public.probe_runs (job_id, worker_id, attempt) VALUES (%s, %s, %s)",
                         (job.id, context.worker_id, job.attempts))
        time.sleep(float(job.payload.get("sleep", 0)))
        if job.payload.get("fail"):
            if job.payload.get("permanent"):
                raise PermanentJobError(job.payload["fail"])
            raise RuntimeError(job.payload["fail"])
        with context.pool.connection() as conn:
            conn.execute("UPDATE public.probe_runs SET finished_at = clock_timestamp() "
                         "WHERE job_id = %s AND worker_id = %s AND attempt = %s",
                         (job.id, context.worker_id, job.attempts))

    return Role(name="probe", queues=(PROBE_QUEUE,), handle=handle)


if __name__ == "__main__":
    from windmill.commands import main

    sys.exit(main(["worker", "--role", "probe", *sys.argv[1:]]))
