"""Commands for the RabbitMQ side of ingest: dead-lettered tasks (list, replay) and the ledger of tasks in flight
that keeps `submit` from sending a pair twice (list, resend, forget)."""

from __future__ import annotations

from datetime import timedelta

import click

from windmill.commands.context import AppContext, echo_json, json_option, pass_app, refuse_unknown
from windmill.errors import WindmillError
from windmill.settings import LOST_TASK_AFTER_S


def amqp_url_or_fail(app: AppContext) -> str:
    if app.settings.amqp_url is None:
        raise WindmillError("RabbitMQ is not configured: set WINDMILL_AMQP_URL (or QUEUE_HOST and QUEUE_USER)")
    return app.settings.amqp_url


@click.group()
def dlq() -> None:
    """Dead-lettered RabbitMQ tasks (queue_<service>.dlq): list them, replay them (`jobs` for the job table)."""


queue_option = click.option("--queue", help="Only this queue's DLQ (queue_<service>, with or without .dlq).")


@dlq.command("list")
@queue_option
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@json_option
@pass_app
def dlq_list(app: AppContext, queue: str | None, limit: int, as_json: bool) -> None:
    """Show dead-lettered tasks, oldest first: queue, task, image, attempts, last error. They stay in the DLQ."""
    from windmill.broker.dead_letters import list_dead_letters, work_queues
    from windmill.monitor import format_table

    queues = work_queues(app.catalog, queue)
    letters = [letter.as_dict() for letter in list_dead_letters(amqp_url_or_fail(app), queues, limit=limit)]
    if not letters:
        refuse_unknown(queues[0] if queue else None, work_queues(app.catalog, None), "task queue")
    if as_json:
        echo_json(letters)
    else:
        click.echo(format_table(letters))
    if len(letters) == limit:
        click.echo(f"(the first {limit}; there may be more: --limit N shows more)", err=True)


@dlq.command("replay")
@queue_option
@click.option("--limit", type=click.IntRange(1), help="Replay at most this many tasks.")
@pass_app
def dlq_replay(app: AppContext, queue: str | None, limit: int | None) -> None:
    """Publish dead-lettered tasks to their queue again with fresh attempts (under new task ids), then remove them
    from the DLQ."""
    from windmill.broker.dead_letters import replay_dead_letters, work_queues

    queues = work_queues(app.catalog, queue)
    with app.connection() as conn:
        report = replay_dead_letters(amqp_url_or_fail(app), conn, queues, limit=limit)
    if not (report.replayed or report.skipped or report.malformed):
        refuse_unknown(queues[0] if queue else None, work_queues(app.catalog, None), "task queue")
    click.echo(f"Replayed {report.replayed} dead-lettered task(s) with fresh attempts; left in the DLQ: "
               f"{report.skipped} whose image and service has another task in flight (or whose image is gone), "
               f"{report.malformed} that are not tasks.")


@click.group()
def tasks() -> None:
    """RabbitMQ tasks in flight, as submit's ledger records them: submit skips their image × service pairs until
    their answer is stored."""


older_than_option = click.option("--older-than", type=click.FloatRange(0), default=0.0, show_default=True,
                                 help="Only entries submitted at least this many seconds ago.")


@tasks.command("list")
@click.option("--service", help="Only this service.")
@older_than_option
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@json_option
@pass_app
def tasks_list(app: AppContext, service: str | None, older_than: float, limit: int, as_json: bool) -> None:
    """Ledger entries, oldest first."""
    from windmill.broker.ledger import list_in_flight
    from windmill.monitor import format_table

    with app.connection() as conn:
        rows = list_in_flight(conn, service=service, older_than=timedelta(seconds=older_than), limit=limit)
    if not rows:
        refuse_unknown(service, app.catalog.names, "service")
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_table(rows))
    if len(rows) == limit:
        click.echo(f"(the first {limit}; there may be more: --limit N shows more)", err=True)


@tasks.command("forget")
@click.option("--service", help="Only this service's entries.")
@click.option("--all", "every_service", is_flag=True, help="Every service's entries.")
@older_than_option
@pass_app
def tasks_forget(app: AppContext, service: str | None, every_service: bool, older_than: float) -> None:
    """Remove ledger entries whose messages were lost (a purged or deleted queue, a submit killed mid-way), so the
    next submit sends their pairs again. An entry whose task is still in RabbitMQ would then be answered twice."""
    from windmill.broker.ledger import forget_in_flight

    if (service is None) == (not every_service):
        raise click.UsageError("name a --service, or say --all")
    with app.connection() as conn:
        forgotten = forget_in_flight(conn, service=service, older_than=timedelta(seconds=older_than))
    if not forgotten:
        refuse_unknown(service, app.catalog.names, "service")
    click.echo(f"Forgot {forgotten} task(s) in flight; `windmill-cli submit` sends their pairs again.")


@tasks.command("resend")
@click.option("--service", help="Only this service's entries that RabbitMQ lost (a dead submit's unconfirmed tasks "
                                "go out for every service: a page holds them all).")
@click.option("--older-than", type=click.FloatRange(0), default=LOST_TASK_AFTER_S, show_default=True,
              help="Only entries RabbitMQ lost submitted at least this many seconds ago.")
@pass_app
def tasks_resend(app: AppContext, service: str | None, older_than: float) -> None:
    """Publish again, under their own ids, the tasks in flight whose queue holds no message ready (RabbitMQ lost
    them, e.g. in a crash), and those a submit entered and ended before RabbitMQ confirmed (killed, or its
    database connection lost; of every service, whatever their queue holds). A queue with ready messages is
    otherwise left alone. The scheduler role does this by itself (WINDMILL_LOST_TASK_AFTER_S)."""
    from windmill.broker.ledger import resend_lost
    from windmill.broker.rabbitmq import RabbitMQBroker

    queues = [app.catalog[service].queue_name] if service else [s.queue_name for s in app.catalog.services]
    with app.connection() as conn, RabbitMQBroker(amqp_url_or_fail(app)) as broker:
        outcome = resend_lost(conn, broker, queues, older_than=timedelta(seconds=older_than))
    for queue, count in outcome.resent.items():
        click.echo(f"{queue}: resent {count} task(s) its queue no longer held")
    for queue, count in outcome.unconfirmed.items():
        click.echo(f"{queue}: resent {count} task(s) of a submit that ended before RabbitMQ confirmed them")
    if not (outcome.resent or outcome.unconfirmed):
        click.echo(f"Nothing to resend: no empty queue has tasks in flight older than {older_than:g} s, and no "
                   "submit ended before RabbitMQ confirmed its tasks.")
    for queue, depth in outcome.waiting.items():
        click.echo(f"{queue}: left alone, it holds {depth} message(s) ready")


COMMANDS = (dlq, tasks)
