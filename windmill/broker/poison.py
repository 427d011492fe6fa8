"""A poison input via RabbitMQ: a task whose handling kills its worker process (a decoder's segfault, the OOM killer)
is run a bounded number of times, then recorded as a failure and dead-lettered (DESIGN rule 4).

A delivery lost with its connection is not an attempt (nothing failed that the worker saw, and the attempt count
travels in a header only a handled failure writes), so without a count kept elsewhere a keeper restarting the worker
had it killed again and again, for ever. The count outlives the worker in PostgreSQL (DeliveryDeaths; the ledger of
tasks in flight keeps it, sql/0130), and costs a first delivery nothing:

* a first delivery writes nothing: its loss is never counted (a worker killed in a chaos run, a broker restart,
  takes hundreds of first deliveries with it, none of them at fault);
* a redelivered one (RabbitMQ's flag: an earlier delivery was lost, or given back) records that it runs when its
  handler starts (one statement), and that it handed the task on when the handler ends without the task's final
  row (a retry, a task given back: another statement); a final row removes the record with the entry. A start
  that finds the mark of a delivery that never finished counts it as dead; at `bound` deaths (the task's attempts)
  the task is not run: PoisonInput, which the consumer records and dead-letters;
* a redelivered delivery whose task has a death on record, or a mark left by a delivery that never finished (a
  suspect), runs one at a time in a process (`alone`): a task running beside the one that kills the worker would
  die with it each time and be counted as often. Each waits at most ALONE_WAIT_S for the one before (one that runs
  that long is not killing its worker quickly), and a stop gives the waiting ones back, not started, so not
  counted. A redelivered delivery with a clean record is marked running and runs beside the others (one statement,
  clean_delivery_starts): a crash of the RabbitMQ node flags every message it recovers as redelivered, not only those
  delivered before (seen with a node SIGKILLed holding 200 messages, 5 of them unacked: all 200 came back flagged;
  a clean stop flagged the 5), and run one at a time the whole backlog went at one task per worker process (the
  chaos run via RabbitMQ, seed 107: 553 s, and 273 s with clean records side by side). A poison input still meets
  its neighbours only once: on its first redelivery, whose death leaves its mark, so from the next one on it runs
  alone.

So what does not count: a delivery that waited in the worker's prefetch and never started; a clean stop's (drain)
deliveries, handed back unstarted, or finished before the connection closes; a task given back by a worker stopped
while its service was down (the handler returns: its mark is removed); a broker restart's redeliveries, unless the
delivery lost was itself a redelivered one running (then one death). What does: a redelivered delivery that dies
while its handler runs, whatever killed the process; so a healthy task is recorded as a poison only when its worker
dies under it that many times in a row after a first loss.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from windmill.broker.base import Task
from windmill.broker.deliveries import Delivery, Outcome
from windmill.db.connect import is_database_unavailable
from windmill.errors import PoisonInput, first_line

log = logging.getLogger(__name__)

ALONE_WAIT_S = 30.0
HOW = "after its first delivery was lost with its worker"


class DeliveryDeaths(Protocol):
    """Where a task's deaths are counted, outside the worker (windmill.broker.ledger.DeathsInLedger)."""

    def starts_clean(self, task: Task) -> int | None:
        """A redelivered delivery of the task starts running if its task has no death on record and no mark of a
        delivery that never finished: 0 (None: a suspect, or not counted; nothing was marked)."""

    def starts(self, task: Task) -> int | None:
        """A redelivered delivery of the task starts running: the deaths counted so far (None: not counted)."""

    def hands_on(self, task: Task) -> None:
        """The delivery's handler ended without the task's final row: it did not die running."""


class PoisonWatch:
    """Runs redelivered deliveries for a consumer, counting their deaths in `deaths`; suspects one at a time."""

    def __init__(self, deaths: DeliveryDeaths, bound: int, stopping: threading.Event) -> None:
        self.deaths = deaths
        self.bound = max(1, bound)
        self.stopping = stopping
        self._alone = threading.Lock()

    def run(self, delivery: Delivery, task: Task, handle: Callable[[], Outcome]) -> Outcome:
        """`handle` the redelivered delivery, unless its deaths reached the bound: then PoisonInput is raised for the
        consumer to record and dead-letter. An unavailable database is raised too (the consumer waits for it). A
        clean record runs at once, beside the others; a suspect alone."""
        if delivery.deaths is None:
            delivery.deaths = self._start(task, self.deaths.starts_clean)
        if delivery.deaths == 0:  # a clean record (run again after a database outage: still clean)
            return self._handle(delivery, task, handle)
        with self._running_alone(task) as alone:
            if not alone:
                return Outcome.REQUEUE  # the worker stops: given back before it started
            if delivery.deaths is None:
                delivery.deaths = self._start(task, self.deaths.starts)
            if delivery.deaths is not None and delivery.deaths >= self.bound:
                raise PoisonInput(delivery.deaths, HOW)
            return self._handle(delivery, task, handle)

    def _handle(self, delivery: Delivery, task: Task, handle: Callable[[], Outcome]) -> Outcome:
        outcome = handle()
        if delivery.deaths is not None and outcome in (Outcome.RETRY, Outcome.REQUEUE):
            self._hands_on(task)
        return outcome

    def _start(self, task: Task, start: Callable[[Task], int | None]) -> int | None:
        try:
            return start(task)
        except Exception as error:
            if is_database_unavailable(error):
                raise
            log.warning("task %s: its start could not be recorded (%s); run uncounted", task.task_id,
                        first_line(error), extra={"action": "task_start_unrecorded"})
            return None

    def _hands_on(self, task: Task) -> None:
        try:
            self.deaths.hands_on(task)
        except Exception as error:  # its next start counts it once as dead: within the bound's margin
            log.warning("task %s: could not record that it was handed on (%s)", task.task_id, first_line(error),
                        extra={"action": "task_hand_on_unrecorded"})

    @contextmanager
    def _running_alone(self, task: Task) -> Iterator[bool]:
        """Hold the process's place for redelivered deliveries; False when the worker stops while waiting."""
        deadline = time.monotonic() + ALONE_WAIT_S
        held = False
        while not (held := self._alone.acquire(timeout=0.25)):
            if self.stopping.is_set():
                yield False
                return
            if time.monotonic() >= deadline:
                log.info("task %s waited %.0f s for the redelivered tasks before it; it runs beside them",
                         task.task_id, ALONE_WAIT_S, extra={"action": "redelivered_task_not_alone"})
                break
        try:
            yield True
        finally:
            if held:
                self._alone.release()
