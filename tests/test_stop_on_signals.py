"""Two-phase stop by signal (windmill.stopping.stop_on_signals): a signal stops a worker whatever its main
thread was doing when it landed, and a second one still interrupts a command that leaves by KeyboardInterrupt.

Each case runs in a process of its own, so a stop that deadlocks fails the test instead of hanging it. The signal
is raised while the main thread holds the lock of the worker's stop event, as `Event.wait` holds it while it enters
and leaves a wait: Python runs the handler right there, between two bytecodes."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.conftest import PYTHON, REPOSITORY
from windmill.export import ExportStop
from windmill.stopping import StopRequest, stop_on_signals

# Stops as every worker does (Worker, BrokerWorker, WorkerGroup): request_stop sets the event its run() waits on.
HELD_LOCK = """
import signal, sys, threading
from windmill.stopping import stop_on_signals

class Worker:
    def __init__(self):
        self.stopping = threading.Event()
    def request_stop(self, *, immediately=False):
        self.stopping.set()

worker = Worker()
with stop_on_signals(worker):
    with worker.stopping._cond:
        signal.raise_signal(signal.SIGTERM)  # the handler runs before this line returns, the lock held
    stopped = worker.stopping.wait(timeout=30)
sys.exit(0 if stopped else 1)
"""

SECOND_SIGNAL = """
import signal, sys, threading
from windmill.stopping import StopRequest, stop_on_signals

stop = StopRequest()
try:
    with stop_on_signals(stop):
        signal.raise_signal(signal.SIGTERM)
        if not stop.stopping.wait(timeout=30):
            sys.exit(2)
        signal.raise_signal(signal.SIGTERM)
        threading.Event().wait(timeout=30)  # blocked as a command may be: only an interruption ends this early
    sys.exit(3)
except KeyboardInterrupt:
    sys.exit(0)
"""


STACKS_ON_SIGUSR1 = """
import os, signal, sys, threading
from windmill.stopping import StopRequest, stop_on_signals

def waiting_for_the_stop(stop):
    stop.stopping.wait(timeout=30)

stop = StopRequest()
with stop_on_signals(stop):
    helper = threading.Thread(target=waiting_for_the_stop, args=(stop,), name="helper")
    helper.start()
    signal.raise_signal(signal.SIGUSR1)  # the stacks, and the command goes on
    print("still running", flush=True)
    signal.raise_signal(signal.SIGTERM)
    helper.join(timeout=30)
sys.exit(0 if stop.stopping.is_set() else 1)
"""


def run_child(script: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    try:
        return subprocess.run([PYTHON, "-c", script], env=env, cwd=REPOSITORY, timeout=60,
                              capture_output=True).returncode
    except subprocess.TimeoutExpired:
        pytest.fail("the process never stopped: the signal handler waits for a lock its own thread holds")


def test_a_signal_landing_while_the_main_thread_holds_the_stop_events_lock_still_stops_the_worker() -> None:
    assert run_child(HELD_LOCK) == 0


def test_a_second_signal_interrupts_a_command_that_leaves_by_keyboard_interrupt() -> None:
    assert run_child(SECOND_SIGNAL) == 0


def test_the_first_signal_is_logged_with_what_the_stopping_command_does(caplog: pytest.LogCaptureFixture) -> None:
    """A worker drains its jobs; a command that runs until a signal finishes its batch, an export its page."""
    class Worker:
        def request_stop(self, *, immediately: bool = False) -> None:
            pass

    caplog.set_level("INFO", logger="windmill.stopping")
    for stoppable in (Worker(), StopRequest(), ExportStop()):
        with stop_on_signals(stoppable):
            signal.raise_signal(signal.SIGTERM)
    assert [record.getMessage() for record in caplog.records] == [
        "received SIGTERM: draining in-flight jobs",
        "received SIGTERM: finishing the batch under way",
        "received SIGTERM: finishing the page being written",
    ]


def test_sigusr1_writes_every_threads_stack_and_the_command_goes_on() -> None:
    """What an operator (or a test) asks of a process that does not stop: where each thread waits."""
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    child = subprocess.run([PYTHON, "-c", STACKS_ON_SIGUSR1], env=env, cwd=REPOSITORY, timeout=60,
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout == "still running\n"
    assert "waiting_for_the_stop" in child.stderr and "Current thread" in child.stderr, child.stderr
