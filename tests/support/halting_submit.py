"""A real `windmill-cli submit` process that halts itself by a signal at a chosen point of publishing to RabbitMQ, for
tests of what a submit killed there (SIGKILL: the OOM killer, a machine lost; no shutdown of any kind) or still alive
there (SIGSTOP, until the test sends SIGCONT) leaves in submit's ledger. The point, in HALTING_SUBMIT_AT:

    messages:N   before handing RabbitMQ its message N + 1: the pages before are confirmed; this page's tasks are
                 entered and committed, N minus the earlier pages' of them buffered unsent, the rest not published
    publishes:N  just after its Nth publish returned: every task of that page confirmed by RabbitMQ, before submit
                 records it

    HALTING_SUBMIT_AT=messages:6 HALTING_SUBMIT_SIGNAL=SIGKILL python -m tests.support.halting_submit --services blip
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from windmill.broker import rabbitmq

WHERE, _, COUNT = os.environ["HALTING_SUBMIT_AT"].partition(":")
SIGNAL = signal.Signals[os.environ.get("HALTING_SUBMIT_SIGNAL", "SIGKILL")]
done = 0


def _halting_at(where: str, *, before: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            global done
            if where == WHERE and before and done == int(COUNT):
                os.kill(os.getpid(), SIGNAL)
            result = method(*args, **kwargs)
            if where == WHERE:
                done += 1
                if not before and done == int(COUNT):
                    os.kill(os.getpid(), SIGNAL)
            return result

        return counted

    return wrap


# The confirming publisher sends one message per call (its confirms come later); the broker's publish returns once
# RabbitMQ confirmed the whole page.
rabbitmq._ConfirmingPublisher.publish = _halting_at(  # type: ignore[method-assign]  # the fault injected
    "messages", before=True)(rabbitmq._ConfirmingPublisher.publish)
rabbitmq.RabbitMQBroker.publish = _halting_at(  # type: ignore[method-assign]  # the fault injected
    "publishes", before=False)(rabbitmq.RabbitMQBroker.publish)


if __name__ == "__main__":
    from windmill.commands import main

    sys.exit(main(["submit", *sys.argv[1:]]))
