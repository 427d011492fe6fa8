"""A service worker's answers written in groups (windmill/roles/answers.py), on real PostgreSQL with real threads.

A group is held in the database the way a slow commit would hold it: the test keeps an image locked FOR UPDATE, so
the first answer's insert waits on its foreign key, and the answers handed in meanwhile queue up behind it."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.test_database_outage import database_away  # noqa: F401  (a fixture)
from tests.test_triggers import add_image, queued
from windmill.catalog import Catalog
from windmill.db.connect import Database, is_database_unavailable
from windmill.db.jsonb import as_stored
from windmill.roles.answers import Answer, AnswerWriter

WRITER_APPLICATION = "windmill-answer-groups"


@pytest.fixture
def writer_pool(database_url: str, database: Database) -> Iterator[ConnectionPool]:
    with Database(database_url, application_name=WRITER_APPLICATION).pool(max_size=4, name="answers") as pool:
        pool.timeout = 1.0  # a connection not available within a second is the database being away
        yield pool


@pytest.fixture
def writer(writer_pool: ConnectionPool, catalog: Catalog) -> AnswerWriter:
    return AnswerWriter(writer_pool, catalog)


def answer(image_id: int, service: str, *, task_id: str | None = None, data: object = None) -> Answer:
    return Answer(image_id=image_id, service=service, task_id=task_id or str(uuid.uuid4()),
                  data={"predictions": []} if data is None else data, status="success", worker_id="groups")


class Handler(threading.Thread):
    """A handler thread: writes its answer, then looks (on a connection of its own) whether its row is committed."""

    def __init__(self, writer: AnswerWriter, database: Database, written: Answer) -> None:
        super().__init__()
        self.writer, self.database, self.answer = writer, database, written
        self.result: int | None = None
        self.error: BaseException | None = None
        self.committed_at_return: bool | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.writer.write(self.answer)
        except Exception as error:
            self.error = error
            return
        with self.database.connect() as conn:
            self.committed_at_return = conn.execute("SELECT EXISTS (SELECT FROM results WHERE task_id = %s)",
                                                    (self.answer.task_id,)).fetchone()[0]


def writer_waits_on_a_lock(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = %s "
                        "AND wait_event_type = 'Lock'", (WRITER_APPLICATION,)).fetchone()[0]


@contextmanager
def image_locked(database: Database, image_id: int) -> Iterator[None]:
    with database.connect() as blocker, blocker.transaction():
        blocker.execute("SELECT FROM images WHERE image_id = %s FOR UPDATE", (image_id,))
        yield


def held_group(writer: AnswerWriter, database: Database, conn: psycopg.Connection, answers: list[Answer]
               ) -> list[Handler]:
    """`answers` handed in by one thread each while a first answer's group is held; all handlers when done."""
    first_image = add_image(conn, "held.jpg")
    with image_locked(database, first_image):
        first = Handler(writer, database, answer(first_image, "nsfw2"))
        wait_until(lambda: writer_waits_on_a_lock(conn), message="the first group to wait for the image")
        handlers = []
        for waiting, given in enumerate(answers, start=1):
            handlers.append(Handler(writer, database, given))
            wait_until(lambda waiting=waiting: writer.group.waiting == waiting, message="the answers to queue")
        assert all(handler.is_alive() for handler in [first, *handlers]), "a handler returned before its commit"
    for handler in [first, *handlers]:
        handler.join(30)
    assert first.error is None and first.committed_at_return
    return handlers


def xmins(conn: psycopg.Connection, handlers: list[Handler]) -> set[str]:
    return {row[0] for row in conn.execute("SELECT xmin::text FROM results WHERE task_id = ANY(%s)",
                                           ([h.answer.task_id for h in handlers],))}


def test_answers_handed_in_together_are_one_transaction_and_each_returns_after_its_commit(
        writer: AnswerWriter, database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    # One image's answers in one transaction: a voter and caption source, detectors, a voter, in no useful order.
    handlers = held_group(writer, database, conn, [answer(image, service) for service in
                                                   ("yolov8", "blip", "nsfw2", "detectron2", "ollama", "colors")])
    assert [(h.error, h.committed_at_return) for h in handlers] == [(None, True)] * len(handlers)
    stored = dict(conn.execute("SELECT task_id::text, result_id FROM results WHERE image_id = %s", (image,)))
    assert {h.answer.task_id: h.result for h in handlers} == stored
    assert len(xmins(conn, handlers)) == 1, "the answers that came together were not one transaction"
    # Inserted in the one lock order (roles/answers.py): by image, detectors first, then by service.
    assert [row[0] for row in conn.execute("SELECT service FROM results WHERE image_id = %s ORDER BY result_id",
                                           (image,))] == ["detectron2", "yolov8", "blip", "colors", "nsfw2", "ollama"]
    # The triggers with several answers of one image in one transaction: each follow-up job once.
    assert sorted(job for job in queued(conn) if job[1] == image) == [
        ("caption_score", image), ("caption_score", image), ("consensus", image), ("merge", image)]
    assert conn.execute("SELECT count(*) FROM service_answer_count_deltas WHERE image_id = %s",
                        (image,)).fetchone()[0] == len(handlers)


def test_a_row_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_stored(
        writer: AnswerWriter, database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    bad = answer(image, "clip", data={"caption": "a \u0000 in text jsonb cannot hold"})
    handlers = held_group(writer, database, conn, [answer(image, "yolov8"), bad, answer(image, "nsfw2")])
    [failed] = [h for h in handlers if h.answer is bad]
    assert isinstance(failed.error, psycopg.DataError) and not is_database_unavailable(failed.error)
    assert [(h.error, h.committed_at_return) for h in handlers if h is not failed] == [(None, True)] * 2
    # Its task's final attempt stores the failure as its own error row (roles/outcome.py), through the same writer.
    writer.write(Answer(image_id=image, service="clip", task_id=bad.task_id, data={}, status="error",
                        worker_id="groups", error_message=str(failed.error)))
    assert conn.execute("SELECT service, status FROM results WHERE image_id = %s ORDER BY service",
                        (image,)).fetchall() == [("clip", "error"), ("nsfw2", "success"), ("yolov8", "success")]


def test_a_task_answered_before_or_twice_in_one_group_is_one_row(
        writer: AnswerWriter, database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    earlier = answer(image, "nsfw2")
    assert writer.write(earlier) is not None
    again = answer(image, "yolov8")
    fresh = answer(image, "blip")
    handlers = held_group(writer, database, conn, [earlier, again, answer(image, "yolov8", task_id=again.task_id),
                                                   fresh])
    assert [h.error for h in handlers] == [None] * 4
    assert [h.result is None for h in handlers] == [True, False, True, False]
    assert conn.execute("SELECT count(*), count(DISTINCT task_id) FROM results WHERE image_id = %s",
                        (image,)).fetchone() == (3, 3)
    assert len(xmins(conn, handlers[1:])) == 1, "the group fell back to one row at a time"


def test_a_database_outage_under_a_group_reaches_each_of_its_handlers_as_unavailable(
        writer: AnswerWriter, database: Database, conn: psycopg.Connection, database_away,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="windmill.roles.answers")
    first_image, image = add_image(conn, "first.jpg"), add_image(conn)
    with image_locked(database, image):
        with image_locked(database, first_image):
            first = Handler(writer, database, answer(first_image, "nsfw2"))
            wait_until(lambda: writer_waits_on_a_lock(conn), message="the first group to wait for its image")
            handlers = [Handler(writer, database, answer(image, service)) for service in ("yolov8", "blip", "clip")]
            wait_until(lambda: writer.group.waiting == 3, message="the group to queue")
        wait_until(lambda: writer.group.waiting == 0 and writer_waits_on_a_lock(conn),
                   message="the group's insert to wait for its image")
        with database_away(WRITER_APPLICATION):
            for handler in handlers:
                handler.join(30)
            assert all(h.error is not None and is_database_unavailable(h.error) for h in handlers), \
                [h.error for h in handlers]
    first.join(30)
    assert first.error is None
    assert not [r for r in caplog.records if getattr(r, "action", None) == "answer_group_failed"], \
        "the outage was taken for a bad row: the group's rows were tried one by one against a database away"
    assert conn.execute("SELECT count(*) FROM results WHERE image_id = %s", (image,)).fetchone()[0] == 0
    assert writer.write(answer(image, "yolov8")) is not None  # the database back, the next group is written


# Values the text form of an array must quote or escape (the group insert, insert_results, sends binary arrays
# instead): quotes, backslashes, braces, commas, white space, the word NULL, an empty string, non-ASCII, NULLs.
AWKWARD_TEXTS = ['say "hi", {then} \\ back\\\\slash', "NULL", "", " spaced\tout\n", "é 漢字 🙂 \u2028", "\\u0041"]


def awkward_answer(image_id: int, index: int) -> Answer:
    text = AWKWARD_TEXTS[index % len(AWKWARD_TEXTS)]
    data = {"caption": text, "nested": {"list": [1, 2.5, None, True, "null", text], text: [text]}, "": ""}
    failed = index % 2 == 1
    return Answer(image_id=image_id, service=("yolov8", "blip", "clip")[index % 3], task_id=str(uuid.uuid4()),
                  data=data, status="error" if failed else "success", worker_id=f"{text}-worker",
                  error_message=text if failed else None, processing_time=(0.1 + 0.2) * 10 ** -index)


def stored_answers(conn: psycopg.Connection, image_id: int) -> list[tuple[object, ...]]:
    return conn.execute("SELECT service, data, status, error_message, processing_time, worker_id FROM results "
                        "WHERE image_id = %s ORDER BY result_id", (image_id,)).fetchall()


def test_a_group_stores_awkward_values_exactly_as_answers_written_one_at_a_time(
        writer: AnswerWriter, database: Database, conn: psycopg.Connection) -> None:
    grouped_image, alone_image = add_image(conn, "grouped.jpg"), add_image(conn, "alone.jpg")
    count = 2 * len(AWKWARD_TEXTS)
    handlers = held_group(writer, database, conn, [awkward_answer(grouped_image, index) for index in range(count)])
    assert [h.error for h in handlers] == [None] * count
    assert len(xmins(conn, handlers)) == 1, "the answers were not written as one group"
    for index in range(count):  # alone, each is its own one-row insert (insert_result)
        writer.write(awkward_answer(alone_image, index))
    alone = sorted(stored_answers(conn, alone_image), key=repr)
    assert sorted(stored_answers(conn, grouped_image), key=repr) == alone  # to the bit
    assert alone == sorted(
        ((a.service, as_stored(a.data), a.status, a.error_message, a.processing_time, a.worker_id)
         for a in map(awkward_answer, [alone_image] * count, range(count))), key=repr)
    stored_tasks = {row[0] for row in conn.execute("SELECT task_id FROM results WHERE image_id = %s",
                                                   (grouped_image,))}
    assert stored_tasks == {uuid.UUID(h.answer.task_id) for h in handlers}
