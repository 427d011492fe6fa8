"""The chaos run's worker processes: one per role, kept alive as systemd's Restart=always would, and killed with
SIGKILL at random."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from windmill.bench.chaos.plan import ChaosPlan
from windmill.bench.stage import cli_argv
from windmill.worker.layout import ANSWER_STAGE, PRODUCT_STAGE


@dataclass(frozen=True)
class WorkerSpec:
    """One supervised worker process (a systemd unit with Restart=always, in production)."""

    name: str
    args: tuple[str, ...]


def worker_specs(plan: ChaosPlan) -> list[WorkerSpec]:
    """The pipeline's workers (windmill/worker/layout.py), the answer stage twice: service tasks through the plan's
    broker (RabbitMQ by default: the ingest path the broker crash tests); the product stage through the job table
    (the path the PostgreSQL crashes and the kills test)."""
    lease = ("--lease-seconds", f"{plan.lease_seconds:g}")
    services = [WorkerSpec(f"service-{n}", ("worker", *ANSWER_STAGE.worker_arguments(), "--broker", plan.broker,
                                            "--concurrency", str(plan.service_concurrency), *lease))
                for n in range(plan.service_workers)]
    return [*services, *(WorkerSpec(spec.role, ("worker", *spec.worker_arguments(), "--concurrency",
                                                str(spec.concurrency), *lease)) for spec in PRODUCT_STAGE)]


class ChaosSupervisor:
    """Keeps one process per spec alive and kills one at random on request. Each incarnation gets its own
    WORKER_ID, as a restarted host's worker would: a new process must never complete its predecessor's leases."""

    RESTART_DELAY_S = 1.0  # after an exit we did not cause (a worker that failed at start-up)

    def __init__(self, specs: Sequence[WorkerSpec], env: dict[str, str], log_dir: Path, rng: random.Random) -> None:
        self.specs = list(specs)
        self.env = env
        self.log_dir = log_dir
        self.rng = rng
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.generations: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.unexpected_exits: Counter[str] = Counter()
        self._killed: set[int] = set()
        self._exited_at: dict[str, float] = {}

    def start(self, spec: WorkerSpec) -> None:
        self.generations[spec.name] += 1
        with open(self.log_dir / f"{spec.name}.log", "ab") as log:
            self.processes[spec.name] = subprocess.Popen(
                cli_argv(*spec.args), env={**self.env, "WORKER_ID": f"chaos-{spec.name}-{self.generations[spec.name]}"},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def revive(self) -> None:
        """Start what is not running: every spec at first, then whatever was killed or exited."""
        now = time.monotonic()
        for spec in self.specs:
            process = self.processes.get(spec.name)
            if process is not None and process.poll() is None:
                continue
            if process is not None and process.pid not in self._killed:
                exited = self._exited_at.setdefault(spec.name, now)
                if exited == now:
                    self.unexpected_exits[spec.name] += 1
                if now - exited < self.RESTART_DELAY_S:
                    continue
            self._exited_at.pop(spec.name, None)
            self.start(spec)

    def kill_random(self) -> str | None:
        alive = sorted(name for name, process in self.processes.items() if process.poll() is None)
        if not alive:
            return None
        name = self.rng.choice(alive)
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()
        self._killed.add(process.pid)
        self.kills[name] += 1
        return name

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (drain), then SIGKILL what did not leave in time."""
        running = [process for process in self.processes.values() if process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
