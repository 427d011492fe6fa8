"""The chaos run, small: 30 images through the whole pipeline while the stand-in farm answers 5 % of requests with
HTTP 500, holds 2 % past the client's timeout, garbles 1 % and answers after a jittered latency; worker processes
are SIGKILLed at random and restarted; the run's own RabbitMQ node is SIGKILLed and restarted, the farm is SIGKILLed
and started again 4 s later (every service down at once, longer than a task's retry budget), and its own
PostgreSQL (production durability) is SIGKILLed twice, the second time staying down longer than a task's retry
budget (shrunk here, so the outage can be short). Afterwards every end condition of the full run (`windmill-cli
bench chaos`, README) holds: one final answer per image × service, every product equal to a fresh recompute by
content, nothing for the backfill to repair, nothing running, waiting, dead or queued."""

from __future__ import annotations

from pathlib import Path

import pytest

from windmill.bench.chaos import ChaosPlan, ServerCrash, run
from windmill.bench.chaos.plan import FARM, POSTGRES, RABBITMQ
from windmill.catalog import Catalog

IMAGES = 30
PLAN = ChaosPlan(images=IMAGES, kill_interval_s=2.0, min_kills=2,
                 crashes=(ServerCrash(RABBITMQ, 0.15, 0.0), ServerCrash(FARM, 0.25, 4.0),
                          ServerCrash(POSTGRES, 0.35, 0.0), ServerCrash(POSTGRES, 0.92, 10.0)),
                 task_attempts=2, task_retry_delay_s=0.25, database_wait_s=1.0, deadline_s=240, stall_s=30)


@pytest.mark.timeout(300)
def test_every_answer_and_product_is_exact_after_faults_kills_and_server_crashes(catalog: Catalog,
                                                                                tmp_path: Path) -> None:
    assert PLAN.longest_postgres_outage_s > 5 * PLAN.retry_budget_s  # the outage outlasts the budget, by far
    assert PLAN.longest_farm_outage_s > 5 * PLAN.service_retry_budget_s  # so does the farm's
    printed: list[str] = []
    report = run(catalog, PLAN, log_dir=tmp_path / "logs", echo=printed.append)
    story = "\n".join(printed) + f"\n(worker logs: {tmp_path / 'logs'})"

    assert (report.audit.images, report.audit.pairs) == (IMAGES, IMAGES * 11), story
    assert report.audit.retries > 0, "the farm's faults made jobs retry\n" + story
    # The run was as hard as planned (kills, crashes, recoveries, durability, the long outage mid-run) and every
    # end condition of the audit holds.
    assert report.problems == [], story
