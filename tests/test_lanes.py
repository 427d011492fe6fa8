"""How a worker's threads are shared out in lanes (windmill.worker.lanes): a table of cases, no I/O."""

from __future__ import annotations

import pytest

from windmill.worker.lanes import Lane, plan_lanes

Q = ("queue_yolov8", "queue_ollama", "queue_pose")


@pytest.mark.parametrize(("service_queues", "budget", "expected"), [
    # One service: the whole budget, or its limit when smaller.
    ({"queue_yolov8": None}, 8, [(("queue_yolov8",), 8)]),
    ({"queue_pose": 1}, 8, [(("queue_pose",), 1)]),
    # A limit above the budget gets the budget.
    ({"queue_yolov8": 16}, 4, [(("queue_yolov8",), 4)]),
    # Limited lanes take their limit; unlimited ones share the rest evenly, rounded up.
    ({"queue_yolov8": None, "queue_ollama": 1, "queue_pose": None}, 8,
     [(("queue_yolov8",), 4), (("queue_ollama",), 1), (("queue_pose",), 4)]),
    ({"queue_yolov8": None, "queue_ollama": None, "queue_pose": 1}, 4,
     [(("queue_yolov8",), 2), (("queue_ollama",), 2), (("queue_pose",), 1)]),
    # More services than threads: still a thread each, so none waits behind another.
    ({"queue_yolov8": None, "queue_ollama": None, "queue_pose": None}, 2,
     [(("queue_yolov8",), 1), (("queue_ollama",), 1), (("queue_pose",), 1)]),
    ({"queue_yolov8": 3, "queue_ollama": None, "queue_pose": None}, 2,
     [(("queue_yolov8",), 2), (("queue_ollama",), 1), (("queue_pose",), 1)]),
])
def test_each_service_queue_gets_a_lane_sized_by_its_limit_and_the_budget(
        service_queues: dict[str, int | None], budget: int, expected: list[tuple[tuple[str, ...], int]]) -> None:
    queues = tuple(queue for queue in Q if queue in service_queues)
    lanes = plan_lanes(queues, service_queues, budget)
    assert [(lane.queues, lane.threads) for lane in lanes] == expected
    assert all(lane.per_service for lane in lanes)


def test_queues_that_call_no_one_service_share_one_lane_of_the_whole_budget() -> None:
    assert plan_lanes(("merge",), {}, 2) == (Lane(("merge",), 2, per_service=False),)
    lanes = plan_lanes(("queue_pose", "merge", "consensus"), {"queue_pose": 1}, 4)
    assert lanes == (Lane(("queue_pose",), 1), Lane(("merge", "consensus"), 4, per_service=False))



@pytest.mark.parametrize(("threads", "prefetch"), [(1, 2), (4, 5), (8, 9)])
def test_a_lane_holds_one_rabbitmq_task_waiting_besides_those_its_threads_run(threads: int, prefetch: int) -> None:
    """So a thread that finishes starts the next task at once, and its ack need not wake the connection's thread."""
    assert Lane(("queue_yolov8",), threads).prefetch == prefetch
