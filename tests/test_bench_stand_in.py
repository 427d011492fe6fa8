"""The benchmarks' stand-in process: up before anything is sent to it, on another offset when a port is taken, and a
one-sentence error when it cannot start at all (it used to exit unseen and leave the workers retrying forever)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import signal_a_thread_not_main
from windmill.bench.stage import cli_argv
from windmill.bench.stand_in import HIGHEST_SERVICE_PORT, LOCAL_PORTS_START, offsets_to_try, running_stand_in
from windmill.catalog import load_catalog
from windmill.errors import WindmillError


def farm_argv(offset: int) -> list[str]:
    return cli_argv("farm", "serve", "--services", "yolov8", "--port-offset", str(offset))


def test_a_taken_port_moves_the_stand_in_to_the_next_offset() -> None:
    yolov8 = load_catalog()["yolov8"]
    taken, free = offsets_to_try(seed=7)[:2]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", yolov8.port + taken))
        holder.listen()
        with running_stand_in(farm_argv, offsets=[taken, free]) as (process, offset):
            assert offset == free and process.poll() is None
            # Up when it is handed over: the first request is answered, no retry needed.
            answer = httpx.get(f"http://127.0.0.1:{yolov8.port + offset}/health", timeout=10)
            assert answer.status_code == 200
    assert process.poll() is not None  # stopped on leaving


def test_the_stand_in_stops_on_a_signal_that_a_thread_other_than_main_takes() -> None:
    with running_stand_in(farm_argv, offsets=offsets_to_try(seed=11)) as (process, _):
        signal_a_thread_not_main(process.pid, signal.SIGTERM)  # a service's server thread: the main one must wake
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("`farm serve` did not stop within 15 s of a SIGTERM that one of its threads took")
    assert process.returncode == 0


def test_a_stand_in_that_cannot_start_is_one_sentence() -> None:
    def failing(offset: int) -> list[str]:
        return [sys.executable, "-c", f"import sys; sys.exit('cannot serve yolov8 on port {offset}')"]

    stand_in = running_stand_in(failing, offsets=[10_010, 10_020])
    with pytest.raises(WindmillError, match=r"on 2 port offsets; .*code 1: cannot serve yolov8 on port 10020$"):
        stand_in.__enter__()


def test_every_offset_keeps_the_ports_below_the_outgoing_connections() -> None:
    assert max(service.port for service in load_catalog().services) <= HIGHEST_SERVICE_PORT
    for seed in range(50):
        assert all(HIGHEST_SERVICE_PORT + offset < LOCAL_PORTS_START for offset in offsets_to_try(seed))
