"""The runtime every role shares: claim → handle → complete or fail, leases renewed, drain on stop.

The handler threads are shared out in lanes (windmill.worker.lanes): each service queue has its own threads and
claims no more of its jobs than it has threads free, so a slow service never holds the threads of the others. One
round trip records what finished and claims for every lane with threads free; a lane whose last claim came back
short waits for a notification or the next poll before it claims again (or, after draining a backlog, for a recheck
shortly after: sql/0098).

A service lane's handler hands its job off when its role can (windmill.jobs.handoff): the write that stores the
outcome also completes the job and claims the lane's next one, which the same thread then runs; the claim loop claims
only for lanes with threads idle, and records only the jobs that were not handed off.

A handler that fails because the database is unavailable (`is_database_unavailable`) has not used an attempt: its
job goes back to the queue uncounted once the database answers again; so does one whose handler gave its attempt
back (AttemptGivenBack: the worker stopped while its call waited for a service that is down). A job whose workers
died on it (Job.poison, sql/0131) is not run: its role records its failure (Role.record_poison); a job one expiry away
from that runs only while no other such job runs in the process (windmill.worker.suspects). A stop drains: no
new claims, running handlers get `drain_timeout_s`; then, or at once on a second stop, the worker leaves without
waiting for them (their jobs keep their lease until it expires, then another worker runs them)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from windmill.backoff import backoff_delay
from windmill.db.connect import is_database_unavailable
from windmill.db.schema import SchemaOvertaken
from windmill.errors import AttemptGivenBack, PoisonInput, first_line
from windmill.jobs import Job, JobQueue, JobState, PermanentJobError
from windmill.jobs.handoff import Handoff
from windmill.roles.registry import Role
from windmill.worker.claim_state import ClaimWake, LaneState, apply_wake
from windmill.worker.lanes import describe_lanes, plan_lanes
from windmill.worker.listener import RECONNECT_CAP_S, RECONNECT_FIRST_S, JobListener
from windmill.worker.presence import WorkerPresence
from windmill.worker.suspects import SuspectPlace, died_before

log = logging.getLogger(__name__)
FLUSH_AFTER_S = 0.05  # longest a finished job waits to be recorded with others
POISON_HOW = "its lease expired on its last attempt each time"


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4  # handler threads
    batch_size: int = 32  # most jobs a lane of non-service queues holds (claimed, not yet recorded) at once
    poll_interval_s: float = 1.0  # NOTIFY is a hint; this is the guarantee
    # A lane that took a job of a backed-up queue claims once more this long after it next finds its queues drained:
    # an enqueue that stayed silent counting on that job (sql/0098) has committed by then.
    recheck_after_s: float = 0.05
    drain_timeout_s: float = 30.0
    heartbeat_interval_s: float = 5.0


@dataclass(frozen=True)
class WorkerHooks:
    """Test and metrics seams: called from the worker's threads, must be quick."""

    on_claimed: Callable[[Job], None] | None = None
    on_done: Callable[[Job, BaseException | None], None] | None = None
    # Right after the handler returns or raises, with its wall-clock seconds (before the outcome is stored).
    on_handled: Callable[[Job, BaseException | None, float], None] | None = None


class Worker:
    def __init__(
        self,
        jobs: JobQueue,
        role: Role,
        *,
        worker_id: str,
        listen_conninfo: str,
        options: WorkerOptions | None = None,
        hooks: WorkerHooks | None = None,
    ) -> None:
        self.jobs = jobs
        self._claimer = jobs.claimer()  # the claim loop's own connection
        self.role = role
        self.worker_id = worker_id
        self.options = options or WorkerOptions()
        self.hooks = hooks or WorkerHooks()
        self._wake = ClaimWake()
        self._stopping = threading.Event()  # stop claiming, drain
        self._abandon = threading.Event()  # second signal: leave now
        self._side_tasks_done = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, Job] = {}
        self._finished: deque[tuple[Job, BaseException | None, float]] = deque()  # job, error, when
        # Claims that handoffs made for a lane, for the claim loop to note: the lane, the jobs, how many were asked.
        self._handed_claims: deque[tuple[LaneState, list[Job], int]] = deque()
        self._fatal: BaseException | None = None
        self._overtaken: SchemaOvertaken | None = None  # a newer Windmill migrated the database meanwhile
        self._suspects = SuspectPlace(self._give_back_unstarted)  # jobs near a poison's verdict run one at a time
        self.jobs_done = 0
        self.jobs_failed = 0
        self._listener = JobListener(listen_conninfo, self._wake, self._side_tasks_done, queues=role.queues,
                                     on_queue=self._wake.hint_queue)
        self.presence = WorkerPresence(jobs.pool, worker_id, role.name, role.service, services_down=role.services_down)
        self.lanes = plan_lanes(role.queues, role.service_queues, self.options.concurrency)
        # The lanes whose jobs are handed off: one service queue each, of a role that can (Role.hand_off).
        self._handoff_lanes = tuple(lane.queues for lane in self.lanes if lane.per_service and len(lane.queues) == 1
                                    ) if role.hand_off is not None else ()

    # -- control -------------------------------------------------------------------------------
    def request_stop(self, *, immediately: bool = False) -> None:
        """First call: stop claiming and drain. With immediately=True: leave without waiting; the
        jobs still running keep their lease until it expires, then another worker runs them."""
        if immediately:
            self._abandon.set()
        self._stopping.set()
        self._wake.set()

    @property
    def listening(self) -> threading.Event:
        return self._listener.connected

    # -- main loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the process exit code (non-zero when a side task died)."""
        self._register()
        side_tasks = [
            threading.Thread(target=self._guard(self._listener.run), name="listener", daemon=True),
            threading.Thread(target=self._guard(self._heartbeat_loop), name="heartbeat", daemon=True),
        ]
        for thread in side_tasks:
            thread.start()
        lanes = [LaneState(lane, self.options.batch_size, self.role.name, self.options.recheck_after_s,
                            self.role.claim_delay_s, self.role.claim_together_s,
                            self._handoff_lanes.index(lane.queues) if lane.queues in self._handoff_lanes else None)
                 for lane in self.lanes]
        drained = False
        try:
            self._claim_loop(lanes)
            drained = self._drain()
        finally:
            self._side_tasks_done.set()
            # Drained: nothing runs, the pools' threads end at once. Otherwise leave the handlers running.
            for lane in lanes:
                lane.executor.shutdown(wait=drained, cancel_futures=True)
            if not self._abandon.is_set():
                self._flush_finished()
            self._claimer.close()
            self._mark_stopped()
            self.role.close()
        if self._fatal is not None:
            log.error("worker stopped because a helper thread died: %r", self._fatal, extra={"action": "worker_fatal"})
            return 1
        return 1 if self._overtaken is not None else 0

    def _claim_loop(self, lanes: list[LaneState]) -> None:
        failures = 0  # consecutive claims that could not reach the database
        next_poll = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            self._note_handed_claims()  # before the hints: a notification after a hand-off's claim still counts
            everything, hinted = self._wake.take_hint()
            now = time.monotonic()
            polling = now >= next_poll
            if polling:
                next_poll = now + self.options.poll_interval_s
            apply_wake(lanes, everything=everything or polling, hinted=hinted, now=now)
            for lane in lanes:
                rechecking, fell_due = lane.recheck_due(now), lane.fell_due(now)  # both consume what is due
                if rechecking or fell_due:
                    lane.dry = False
            asks = self._claims_wanted(lanes)
            if asks:
                try:
                    claimed = self._record_and_claim(asks)
                    failures = 0
                except psycopg.OperationalError as error:
                    failures += 1
                    delay = backoff_delay(failures, first_s=RECONNECT_FIRST_S, cap_s=RECONNECT_CAP_S)
                    log.warning("cannot claim jobs (%s); retrying in %.1fs", first_line(error), delay,
                                extra={"action": "claim_failed"})
                    self._stopping.wait(delay)
                    continue
                for (lane, asked), jobs in zip(asks, claimed, strict=True):
                    if not asked:
                        continue  # it did not claim: a dry lane stays dry
                    lane.claimed(jobs, asked)
                    for job in jobs:
                        if self.hooks.on_claimed:
                            self.hooks.on_claimed(job)
                        lane.executor.submit(self._run_one, job, lane)
                if any(lane.wants_claim() for lane in lanes):
                    continue  # a lane took a full claim and still has places: more are probably waiting
            elif self._flush_due():
                self._flush_finished()
            self._look_behind(lanes)
            wake_at = min([next_poll, *(lane.recheck_at for lane in lanes if lane.recheck_at is not None),
                           *(lane.next_due for lane in lanes if lane.next_due is not None)])
            self._wake.wait(FLUSH_AFTER_S if self._finished else max(0.0, wake_at - time.monotonic()))

    def _look_behind(self, lanes: list[LaneState]) -> None:
        """For each lane whose claim at a due time came back empty: is a due job of its queues still queued (then
        locked when the claim passed it by: claim again shortly), or did someone else take it? An unreachable
        database counts as the first: the claims that follow find out."""
        for lane in lanes:
            if lane.looking_behind:
                try:
                    waiting = self._claimer.due_job_waiting(lane.lane.queues)
                except psycopg.OperationalError:
                    waiting = True
                lane.left_behind(waiting)

    @staticmethod
    def _claims_wanted(lanes: list[LaneState]) -> list[tuple[LaneState, int]]:
        """When a lane is worth a round trip, every lane with places free claims in it: (lane, most to take), each
        lane in order, 0 for one that claims nothing (one text per worker whatever its lanes ask, and a lane of one
        queue that asks nothing is left out of its arrays: windmill.jobs.queue.round_trip_query)."""
        if not any(lane.wants_claim() for lane in lanes):
            return []
        return [(lane, lane.free if lane.free > 0 and not lane.dry else 0) for lane in lanes]

    def _run_one(self, job: Job | None, lane: LaneState) -> None:
        while job is not None:  # then each job its hand-off claimed, on this thread
            job = self._run_handing_off(job, lane)

    def _run_handing_off(self, job: Job, lane: LaneState) -> Job | None:
        """Run one job; the lane's next one when the job's hand-off was taken and claimed one."""
        handoff = self._offer_handoff(job, lane)
        error: BaseException | None = None
        started = time.monotonic()
        try:
            if job.poison:
                self._record_poison(job, handoff)
            elif handoff is not None and self.role.hand_off is not None:
                self.role.hand_off(job, handoff)
            else:
                self.role.handle(job)
        except BaseException as raised:  # a handler's failure is the job's, never the worker's
            error = raised
        finished = time.monotonic()
        self._suspects.leave(job)
        if self.hooks.on_handled:
            try:
                self.hooks.on_handled(job, error, finished - started)
            except Exception:  # a broken metrics hook must not leave the job in flight forever
                log.exception("on_handled hook failed", extra={"action": "hook_failed"})
        if handoff is not None and handoff.taken:
            if error is not None:  # after its outcome was committed: the job is done whatever came next
                log.warning("job %d (%s) raised after its outcome was stored: %s", job.id, job.queue,
                            first_line(error), extra={"action": "job_raised_after_done"})
            return self._take_handoff(job, lane, handoff)
        with self._lock:
            lane.busy -= 1
        self._finished.append((job, error, finished))
        self._wake.nudge()
        return None

    def _record_poison(self, job: Job, handoff: Handoff | None) -> None:
        """A job whose workers died on it (sql/0131) is not run: its role records the failure, or, with no row to
        record it in (a merge, a vote), it ends dead with the reason."""
        poison = PoisonInput(2, POISON_HOW)
        log.error("job %d (%s): %s", job.id, job.queue, poison, extra={"action": "job_poison_input"})
        if self.role.record_poison is None:
            raise PermanentJobError(str(poison))
        self.role.record_poison(job, poison, handoff)

    def _offer_handoff(self, job: Job, lane: LaneState) -> Handoff | None:
        if lane.handoff_lane is None:
            return None
        return Handoff(job.id, self.worker_id, self._handoff_lanes, lane.handoff_lane,
                       wants=0 if self._stopping.is_set() else 1)

    def _take_handoff(self, job: Job, lane: LaneState, handoff: Handoff) -> Job | None:
        """The job is done and recorded; the first job its write claimed (if any) is this thread's next, the others
        (a claim may bring expired leases beside what it asked for) go to the lane's other threads."""
        handoff.next_jobs = self._suspects.admit(handoff.next_jobs)
        with self._lock:
            self._inflight.update((claimed.id, claimed) for claimed in handoff.next_jobs)
            lane.busy += len(handoff.next_jobs) - 1  # the job done gives its place to the first of them
        self._forget([(job, None, 0.0)])
        if handoff.wants:
            self._handed_claims.append((lane, handoff.next_jobs, handoff.wants))
        for claimed in handoff.next_jobs:
            if self.hooks.on_claimed:
                self.hooks.on_claimed(claimed)
        for extra in handoff.next_jobs[1:]:
            lane.executor.submit(self._run_one, extra, lane)
        if not handoff.next_jobs:
            self._wake.nudge()  # a thread of the lane is free
        return handoff.next_jobs[0] if handoff.next_jobs else None

    def _note_handed_claims(self) -> None:
        while self._handed_claims:
            lane, jobs, asked = self._handed_claims.popleft()
            lane.claimed(jobs, asked)

    def _drain(self) -> bool:
        """Record jobs as their handlers finish, for at most the drain timeout; True when none is left."""
        deadline = time.monotonic() + self.options.drain_timeout_s
        while self._inflight and not self._abandon.is_set():
            self._flush_finished()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            if len(self._inflight) > len(self._finished):
                self._wake.wait(min(remaining, 0.5))
            elif self._finished:  # finished but not recorded: the database is away; try again shortly
                self._abandon.wait(min(remaining, 0.5))
        if self._inflight:
            log.warning("%s: %d jobs still running keep their lease until it expires",
                        "leaving now" if self._abandon.is_set() else "drain timeout", len(self._inflight),
                        extra={"action": "drain_timeout"})
        return not self._inflight

    def _flush_due(self) -> bool:
        """Outcomes are recorded in batches: when half a batch is waiting, or the oldest waited long enough."""
        if not self._finished:
            return False
        return (len(self._finished) >= max(1, self.options.batch_size // 2)
                or time.monotonic() - self._finished[0][2] >= FLUSH_AFTER_S)

    def _take_finished(self) -> list[tuple[Job, BaseException | None, float]]:
        batch = []
        while self._finished:
            batch.append(self._finished.popleft())
        return batch

    def _record_and_claim(self, asks: list[tuple[LaneState, int]]) -> list[list[Job]]:
        """Record finished jobs and lease new ones for each lane asking: successes and the claims share one round
        trip, failures are recorded one by one. A job stays in flight (its lease renewed) until its outcome is
        stored."""
        batch = self._take_finished()
        try:
            for job, error, _ in batch:
                if error is not None:
                    self._record_failure(job, error)
            done = [job.id for job, error, _ in batch if error is None]
            lanes = [(lane.lane.queues, asked) for lane, asked in asks]
            claimed = self._claimer.complete_and_claim_lanes(done, lanes, self.worker_id)
        except psycopg.OperationalError:
            self._finished.extendleft(reversed(batch))
            raise
        claimed = [self._suspects.admit(jobs) for jobs in claimed]
        self._forget(batch)
        with self._lock:
            for (lane, _), jobs in zip(asks, claimed, strict=True):
                lane.busy += len(jobs)
                for job in jobs:
                    self._inflight[job.id] = job
        return claimed

    def _flush_finished(self) -> None:
        batch = self._take_finished()
        if not batch:
            return
        try:
            for job, error, _ in batch:
                if error is not None:
                    self._record_failure(job, error)
            self.jobs.complete([job.id for job, error, _ in batch if error is None], self.worker_id)
        except psycopg.OperationalError as error:
            log.warning("cannot record %d finished jobs (%s); will retry", len(batch), first_line(error),
                        extra={"action": "record_failed"})
            self._finished.extendleft(reversed(batch))
            if not self._stopping.is_set():
                self._stopping.wait(0.5)
            return
        self._forget(batch)

    def _forget(self, batch: list[tuple[Job, BaseException | None, float]]) -> None:
        with self._lock:  # handler threads that hand off forget their jobs too
            for job, error, _ in batch:
                self._inflight.pop(job.id, None)
                if error is None:
                    self.jobs_done += 1
                else:
                    self.jobs_failed += 1
        for job, error, _ in batch:
            if self.hooks.on_done:
                self.hooks.on_done(job, error)

    def _record_failure(self, job: Job, error: BaseException) -> None:
        reason = first_line(error) or type(error).__name__
        if is_database_unavailable(error):
            released = self.jobs.fail(job, self.worker_id, self._mark(job, f"database unavailable: {reason}"),
                                      counted=False)
            if released is None:  # meanwhile its lease ran out: the claim that took it back decided what follows
                log.info("job %d (%s) could not reach the database (%s), and was no longer this worker's: its lease "
                         "had run out", job.id, job.queue, reason, extra={"action": "job_failed_unheld"})
                return
            log.warning("job %d (%s) could not reach the database (%s); back in the queue, not counted as an attempt",
                        job.id, job.queue, reason, extra={"action": "job_released"})
            return
        if isinstance(error, AttemptGivenBack):
            if self.jobs.fail(job, self.worker_id, self._mark(job, reason), counted=False) is not None:
                log.info("job %d (%s) given back: %s", job.id, job.queue, reason, extra={"action": "job_released"})
            return
        permanent = isinstance(error, PermanentJobError)
        state = self.jobs.fail(job, self.worker_id, reason, permanent=permanent)
        if state is None:  # another worker holds it now (a lease run out is run again: sql/0126), or it is gone
            log.info("job %d (%s) failed (%s) once it was no longer this worker's: its lease had run out, or its "
                     "image was removed", job.id, job.queue, reason, extra={"action": "job_failed_unheld"})
            return
        level = logging.ERROR if state is JobState.DEAD else logging.WARNING
        log.log(level, "job %d (%s) attempt %d/%d failed: %s → %s", job.id, job.queue, job.attempts,
                job.max_attempts, reason, state, extra={"action": "job_failed"})

    @staticmethod
    def _mark(job: Job, reason: str) -> str:
        """The last_error of a job given back uncounted: a job whose worker died keeps the claim's mark (sql/0126,
        sql/0131), so that an expiry still counts as the one it is, and a poison is recorded, not run, when it is
        claimed again."""
        return job.last_error if (job.poison or died_before(job)) and job.last_error else reason

    def _give_back_unstarted(self, job: Job) -> None:
        self.jobs.fail(job, self.worker_id, self._mark(job, "given back"), counted=False)

    # -- side tasks ----------------------------------------------------------------------------
    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def guarded() -> None:
            try:
                target()
            except BaseException as error:
                self._fatal = error
                self.request_stop()

        return guarded

    def heartbeat_once(self) -> None:
        with self._lock:
            held = list(self._inflight)
        self.jobs.renew_leases(held, self.worker_id)
        self.presence.beat(self.jobs_done, self.jobs_failed)

    def _heartbeat_loop(self) -> None:
        interval = min(self.options.heartbeat_interval_s, self.jobs.lease.total_seconds() / 3)
        while not self._side_tasks_done.wait(interval):
            try:
                self.heartbeat_once()
            except SchemaOvertaken as error:  # leases were renewed first: the jobs in hand drain as on any stop
                if self._overtaken is None:
                    self._overtaken = error
                    error.say(log)
                    self.request_stop()
            except psycopg.OperationalError as error:
                log.warning("heartbeat failed (%s)", first_line(error), extra={"action": "heartbeat_failed"})

    def _register(self) -> None:
        self.presence.announce()
        log.info("worker %s started: role %s, threads by queue: %s", self.worker_id, self.role.name,
                 describe_lanes(self.lanes), extra={"action": "worker_started"})

    def _mark_stopped(self) -> None:
        self.presence.stopped(self.jobs_done, self.jobs_failed)
        log.info("worker %s stopped after %d done, %d failed", self.worker_id, self.jobs_done, self.jobs_failed,
                 extra={"action": "worker_stopped"})
