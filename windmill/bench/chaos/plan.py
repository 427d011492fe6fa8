"""What the chaos run does to the pipeline, and when: the farm's faults and latency, worker kills, server crashes
and outages, the workers' retry budget."""

from __future__ import annotations

from dataclasses import dataclass, replace

from windmill.backoff import backoff_delay
from windmill.broker.choice import JOB_TABLE
from windmill.broker.choice import RABBITMQ as BROKER_RABBITMQ
from windmill.broker.rabbitmq import MAX_RETRY_DELAY_S

POSTGRES = "postgres"
RABBITMQ = "rabbitmq"
FARM = "farm"  # the stand-in: every Animal Farm service at once


@dataclass(frozen=True)
class ServerCrash:
    """SIGKILL of a server once `at` (a share) of the image × service pairs have their answer; it is started
    again `outage_s` seconds later, on the same data."""

    server: str  # POSTGRES, RABBITMQ or FARM
    at: float
    outage_s: float


@dataclass(frozen=True)
class ChaosPlan:
    """What goes wrong, and how often. The faults are issue 7's: 5 % HTTP 500, 2 % timeouts, 1 % malformed; the
    crashes issue 11's: the RabbitMQ node, the PostgreSQL postmaster with an immediate restart (crash recovery
    under load), and PostgreSQL once more, down for longer than a task's retry budget; and the farm, every service
    down at once for longer than that budget too."""

    images: int = 500
    error_rate: float = 0.05
    timeout_rate: float = 0.02
    malformed_rate: float = 0.01
    # Every farm request takes a lognormal time of this mean and sigma (a latency profile of the stand-in): an
    # image's detectors answer spread out and in varying order, so merges run while other answers of the same
    # image commit. Sigma 0.8: median 73 ms, one request in ten over 200 ms, one in a hundred over 450 ms.
    latency_mean_ms: float = 100.0
    latency_jitter: float = 0.8
    # The stand-in holds a "timeout" request for 10× the catalog timeout: 30 s services would make every timeout
    # cost minutes; 3 s keeps them honest (the client really gives up) and the run short.
    service_timeout_s: float = 3.0
    lease_seconds: float = 5.0  # short, so a killed worker's jobs come back within seconds
    kill_interval_s: float = 4.0  # mean time between SIGKILLs of a worker (uniform in [0.5, 1.5] × this)
    min_kills: int = 2
    # The long outage comes near the end of the ingest: a retried task goes to the back of its queue, so only
    # when few tasks are left does each come round again and again while the database is away, and exhaust its
    # attempts within the outage (with thousands queued, each would be tried once or twice).
    # The farm goes down for longer than a task's retry budget (1 + 2 + 4 + 8 s of holds): the services' calls
    # wait for it (windmill/farm/outages.py), so its outage must leave no failed row.
    crashes: tuple[ServerCrash, ...] = (
        ServerCrash(RABBITMQ, 0.2, 2.0),
        ServerCrash(FARM, 0.35, 30.0),
        ServerCrash(POSTGRES, 0.5, 0.0),
        ServerCrash(POSTGRES, 0.98, 90.0),
    )
    # The retry budget of a RabbitMQ task: its attempts and the hold after each (WINDMILL_AMQP_TASK_ATTEMPTS,
    # WINDMILL_AMQP_RETRY_DELAY_S of the workers: the defaults), and how long each attempt waits for a database
    # connection (WINDMILL_DATABASE_WAIT_S: 1 s rather than the default 30 s, or every attempt would last as long
    # as a short outage).
    task_attempts: int = 5
    task_retry_delay_s: float = 1.0
    database_wait_s: float = 1.0
    service_workers: int = 2
    service_concurrency: int = 4
    # How the service tasks travel (windmill.broker.choice): RabbitMQ, the ingest path its crash tests, or the job
    # table, where the service workers' jobs meet the PostgreSQL crashes too.
    broker: str = BROKER_RABBITMQ
    seed: int = 7
    deadline_s: float = 3600.0  # the whole run gives up after this
    stall_s: float = 90.0  # settling gives up when nothing moved for this long

    @property
    def via_job_table(self) -> bool:
        return self.broker == JOB_TABLE

    @property
    def retry_budget_s(self) -> float:
        """How long a task whose attempt the database outage broke keeps being retried while the database stays
        away: the holds between its attempts, and each later attempt's wait for a connection."""
        return self.service_retry_budget_s + (self.task_attempts - 1) * self.database_wait_s

    @property
    def service_retry_budget_s(self) -> float:
        """How long a task's attempts last when each fails at once (a service refusing connections): the holds
        between them."""
        return sum(backoff_delay(attempt, first_s=self.task_retry_delay_s, cap_s=MAX_RETRY_DELAY_S)
                   for attempt in range(1, self.task_attempts))

    @property
    def longest_farm_outage_s(self) -> float:
        return max((crash.outage_s for crash in self.crashes if crash.server == FARM), default=0.0)

    @property
    def longest_postgres_outage_s(self) -> float:
        return max((crash.outage_s for crash in self.crashes if crash.server == POSTGRES), default=0.0)

    def with_long_outage(self, seconds: float) -> ChaosPlan:
        """The plan with its longest PostgreSQL outage set to `seconds`."""
        longest = self.longest_postgres_outage_s
        crashes = tuple(replace(crash, outage_s=seconds) if crash.server == POSTGRES and crash.outage_s == longest
                        else crash for crash in self.crashes)
        return replace(self, crashes=crashes)
