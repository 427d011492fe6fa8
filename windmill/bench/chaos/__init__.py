"""The chaos run (`windmill-cli bench chaos`): images through the whole pipeline while the stand-in farm fails
requests and answers with jittered latency, worker processes are SIGKILLed at random and restarted, the RabbitMQ
node and the PostgreSQL postmaster are SIGKILLed (PostgreSQL once for longer than a task's retry budget) and
started again on their data; then an audit that every answer is accounted for and every product is exactly what
a fresh recompute over the final rows gives.

Why a run of its own rather than the unit tests' guarantees: each rule of the design (task ids, leases, recompute
under a per-image lock, bounded retries, backfill) is tested alone; only all faults at once show that they
compose: that no kill, crash or retry leaves a pair without its answer, an answer twice, or a product stale.

Everything it changes is its own: a PostgreSQL cluster with production durability, a RabbitMQ node, a stand-in
farm on free ports, copies of the sample photographs. Modules: plan (what goes wrong and when), supervisor (the
worker processes and their kills), servers (the private servers and their crashes), audit (the end conditions),
report (what is printed), run (the sequence).
"""

from windmill.bench.chaos.audit import Audit, audit
from windmill.bench.chaos.plan import ChaosPlan, ServerCrash
from windmill.bench.chaos.report import ChaosReport
from windmill.bench.chaos.run import run
from windmill.bench.chaos.servers import write_catalog

__all__ = ["Audit", "ChaosPlan", "ChaosReport", "ServerCrash", "audit", "run", "write_catalog"]
