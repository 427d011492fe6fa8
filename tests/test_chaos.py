"""The chaos run, small: 30 images through the whole pipeline while the stand-in farm answers 5 % of requests with
HTTP 500, holds 2 % past the client's timeout and garbles 1 %, worker processes are SIGKILLed at random and
restarted, PostgreSQL restarts once and RabbitMQ is killed and restarted once. Afterwards every end condition of
the full run (`windmill-cli bench chaos`, README) holds: one final answer per image × service, boxes and consensus
equal to a calm recompute, nothing running, nothing twice.

It runs on a private PostgreSQL cluster and a private RabbitMQ node of its own, so it may restart and crash them."""

from __future__ import annotations

from pathlib import Path

import pytest

from windmill.bench.chaos import ChaosPlan, run
from windmill.catalog import Catalog

IMAGES = 30


@pytest.mark.timeout(300)
def test_every_product_is_exact_after_faults_kills_and_server_restarts(catalog: Catalog, tmp_path: Path) -> None:
    plan = ChaosPlan(images=IMAGES, kill_interval_s=2.0, min_kills=2, deadline_s=180, stall_s=30)
    printed: list[str] = []
    report = run(catalog, plan, log_dir=tmp_path / "logs", echo=printed.append)
    story = "\n".join(printed) + f"\n(worker logs: {tmp_path / 'logs'})"

    # Every planned fault happened.
    assert sum(report.kills.values()) >= 2, story
    assert report.postgres_outage_s is not None and report.rabbitmq_outage_s is not None, story
    found = report.audit
    assert found.retries > 0, "the farm's faults made jobs retry\n" + story
    # One final answer per image × service: success, or error/timeout with its reason; none twice.
    assert (found.images, found.pairs, found.answers) == (IMAGES, IMAGES * 11, IMAGES * 11), story
    assert (found.missing_pairs, found.duplicated_pairs, found.failures_without_reason) == (0, 0, 0), story
    assert sum(found.final.values()) == found.pairs and set(found.final) <= {"success", "error", "timeout"}, story
    # Products equal a recompute over the final rows; nothing left running or waiting; nothing else wrong.
    assert found.box_sets_equal == IMAGES, story
    assert found.consensus_present == found.consensus_equal == IMAGES, story
    assert (found.jobs_running, found.jobs_waiting) == (0, 0), story
    assert report.settled and report.problems == [], story
