"""A job's completion handed to the write that stores its outcome (issue 19 item 5, issue 13 item 6).

Without it, a job of a service's lane (a service task, a caption score, an image's postprocessing for one service)
costs two transactions: its handler stores the outcome (one commit), then the claim loop completes the job and claims
the lane's next one (another commit and round trip). Such a lane takes no more jobs than it has threads, so nearly
every job finished meant a claim of its own. Handed off, the write that stores the outcome also completes the job
and claims its lane's next one, in one transaction (Claimer.write_and_hand_off), and the handler's thread goes
straight on with it: the claim loop claims only for lanes whose threads went idle.

The runtime offers a Handoff with each job of a lane that may take one (windmill.worker.runtime); the role passes it
to the write that stores the job's outcome. A job whose outcome is not stored that way (an answer stored before, a
group of answers written row by row after one failed, a handler that raised) leaves its Handoff untaken, and the
claim loop completes the job as before. Pure: a record the runtime and the writer share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from windmill.jobs.model import Job


@dataclass(eq=False)
class Handoff:
    job_id: int
    worker_id: str
    # The worker's lanes that may hand off (one queue each) and this job's among them: every hand-off of one worker
    # runs one statement text (windmill.jobs.queue.round_trip_query), whichever lanes ask.
    lanes: tuple[tuple[str, ...], ...]
    lane: int
    wants: int  # how many of its lane's next tasks to claim: 1, or 0 once the worker stops
    # Set by the write, once committed: the job is done, and these were claimed for its thread.
    taken: bool = False
    next_jobs: list[Job] = field(default_factory=list)


def deal_claims(handoffs: Sequence[Handoff], claimed: Sequence[Sequence[Job]]) -> None:
    """Mark the handoffs taken and give each its share of the jobs claimed for its lane (by lane, in the order of
    `lanes`): the first to ask get them, up to what each wanted. A claim may bring more than was asked (a lane's
    expired leases are taken beside its waiting jobs, each up to the limit): the rest go to the lane's first
    handoff that asked, which has them run beside its own (every job claimed is leased to this worker and must run)."""
    waiting = [list(jobs) for jobs in claimed]
    for handoff in handoffs:
        handoff.taken = True
        handoff.next_jobs = waiting[handoff.lane][:handoff.wants]
        del waiting[handoff.lane][:handoff.wants]
    for handoff in handoffs:
        if handoff.wants:
            handoff.next_jobs += waiting[handoff.lane]
            waiting[handoff.lane] = []
