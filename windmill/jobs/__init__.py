"""The PostgreSQL job queue behind merge, consensus and postprocessing work."""

from windmill.jobs.model import Job, JobState, PermanentJobError
from windmill.jobs.queue import NOTIFY_CHANNEL, JobQueue, NewJob, enqueue_many_on, enqueue_on

__all__ = ["NOTIFY_CHANNEL", "Job", "JobQueue", "JobState", "NewJob", "PermanentJobError", "enqueue_many_on",
           "enqueue_on"]
