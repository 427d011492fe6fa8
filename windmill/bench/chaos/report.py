"""What a chaos run did and found: its conditions (what was crashed, how, for how long), the audit's counts and
every end condition that does not hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from windmill.bench.chaos.audit import CHECKS, Audit
from windmill.bench.chaos.plan import FARM, POSTGRES, ChaosPlan


@dataclass(frozen=True)
class Outage:
    """One server crash as it happened: SIGKILL at `at_s` into the run, back `seconds` later."""

    server: str
    at_s: float
    seconds: float
    unanswered: int  # pairs still without an answer when it crashed


@dataclass
class ChaosReport:
    plan: ChaosPlan
    audit: Audit = field(default_factory=Audit)
    seconds: float = 0.0
    ingest_seconds: float = 0.0  # until every pair had an answer
    kills: dict[str, int] = field(default_factory=dict)
    unexpected_exits: dict[str, int] = field(default_factory=dict)
    outages: list[Outage] = field(default_factory=list)
    durability: dict[str, str] = field(default_factory=dict)  # PostgreSQL's, as the server reported it
    crash_recoveries: int = 0  # PostgreSQL starts that replayed the WAL, from its log
    settled: bool = False

    @property
    def run_problems(self) -> list[str]:
        """Ways the run was kinder than its plan: then a clean audit proves less than it claims."""
        plan, found = self.plan, []
        if not self.settled:
            found.append("the pipeline did not settle: answers stopped coming, or the deadline passed")
        if sum(self.kills.values()) < plan.min_kills:
            found.append(f"only {sum(self.kills.values())} SIGKILLs of workers (wanted {plan.min_kills})")
        if len(self.outages) < len(plan.crashes):
            found.append(f"{len(plan.crashes) - len(self.outages)} planned server crashes did not happen")
        if any(value != "on" for value in self.durability.values()) or not self.durability:
            found.append(f"PostgreSQL ran without production durability ({self._durability()})")
        postgres = [outage for outage in self.outages if outage.server == POSTGRES]
        if self.crash_recoveries < len(postgres):
            found.append(f"PostgreSQL recovered from a crash {self.crash_recoveries} times after "
                         f"{len(postgres)} crashes")
        longest = max(postgres, key=lambda outage: outage.seconds, default=None)
        if plan.longest_postgres_outage_s > plan.retry_budget_s:
            if longest is None or longest.seconds <= plan.retry_budget_s:
                found.append("no PostgreSQL outage outlasted a task's retry budget")
            elif not longest.unanswered:
                found.append("the long PostgreSQL outage began after every pair was answered")
        farm = max((outage for outage in self.outages if outage.server == FARM), key=lambda outage: outage.seconds,
                   default=None)
        if plan.longest_farm_outage_s > plan.service_retry_budget_s:
            if farm is None or farm.seconds <= plan.service_retry_budget_s:
                found.append("no farm outage outlasted a task's retry budget")
            elif not farm.unanswered:
                found.append("the farm outage began after every pair was answered")
        return found

    @property
    def problems(self) -> list[str]:
        return self.run_problems + self.audit.problems

    def lines(self) -> list[str]:
        a, p = self.audit, self.plan
        final = ", ".join(f"{a.final.get(status, 0)} {status}" for status in ("success", "error", "timeout"))
        others = {k: v for k, v in a.final.items() if k not in ("success", "error", "timeout")}
        final += "".join(f", {count} {status}" for status, count in sorted(others.items()))
        if a.failure_kinds:
            final += " (" + ", ".join(f"{kind} {count}" for kind, count in sorted(a.failure_kinds.items())) + ")"
        kills = ", ".join(f"{name} {count}" for name, count in sorted(self.kills.items()))
        outages = "; ".join(f"{outage.server} at {outage.at_s:.0f} s, back after {outage.seconds:.1f} s "
                            f"({outage.unanswered} pairs unanswered)" for outage in self.outages) or "none"
        backfill = ", ".join(f"{count} {queue}" for queue, count in a.backfill.items()) or "nothing"
        ingest = f"after {self.ingest_seconds:.0f} s" if self.ingest_seconds else "never"
        lines = [
            f"Chaos run: {a.images} images × {a.pairs // max(a.images, 1)} primary services "
            f"in {self.seconds:.0f} s (every pair answered: {ingest})",
            f"  farm:        {p.error_rate:.0%} HTTP 500, {p.timeout_rate:.0%} timeouts ({p.service_timeout_s:g} s), "
            f"{p.malformed_rate:.0%} malformed bodies; {p.latency_mean_ms:g} ms per request on average, lognormal "
            f"jitter σ {p.latency_jitter:g}",
            f"  kills:       {sum(self.kills.values())} SIGKILLs of workers ({kills}); "
            f"{sum(self.unexpected_exits.values())} exits we did not cause (restarted too)",
            f"  crashes:     SIGKILL of {outages}",
            f"  tasks via:   {'the job table' if p.via_job_table else 'RabbitMQ'}",
            f"  PostgreSQL:  {self._durability()}; {self.crash_recoveries} crash recoveries; a task's retry budget "
            f"{p.retry_budget_s:.1f} s ({p.task_attempts} attempts, each waiting {p.database_wait_s:g} s for a "
            f"connection)",
            f"  answers:     {a.pairs} pairs, {a.answers} rows; final: {final}; "
            f"{a.dead_lettered} tasks dead-lettered",
            f"  products:    {a.boxes} boxes; the final backfill queued {backfill}",
            f"  jobs:        {a.jobs} in all; {a.retries} retries, {a.lease_expiries} ended by an expired lease",
        ]
        for name, check in a.checks.items():
            verdict = "holds" if not check.failures else f"FAILS {check.failures}×: {'; '.join(check.examples)}"
            lines.append(f"  {name + ':':<16}{verdict} ({CHECKS[name]})")
        problems = self.problems
        lines.append("  result:      " + ("every end condition holds" if not problems
                                          else "PROBLEMS: " + "; ".join(problems)))
        return lines

    def _durability(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.durability.items()) or "settings unknown"
