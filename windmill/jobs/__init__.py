"""The PostgreSQL job queue behind merge, consensus and postprocessing work."""

from windmill.jobs.model import Job, JobState, PermanentJobError
from windmill.jobs.queue import NOTIFY_CHANNEL, JobQueue, NewJob

__all__ = ["NOTIFY_CHANNEL", "Job", "JobQueue", "JobState", "NewJob", "PermanentJobError"]
