"""backfill(): each rule on rows written by hand (stale means "recorded inputs are not the current ones", never a
clock), pages walked from a saved position, then a real run broken on purpose — backfill queues exactly the
repairs, the pipeline's roles carry them out, and a second backfill finds nothing left to do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_monitoring import add_box, add_image, add_job, add_postprocessing, add_result
from windmill.bench.backfill import seed_history
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.emoji import PERSON
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.settings import settings_from_mapping
from windmill.upkeep import retry_failed_products, run_backfill
from windmill.worker.group import WorkerGroup, pipeline_idle
from windmill.worker.layout import SINGLE_MACHINE
from windmill.worker.runtime import WorkerOptions

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"


def queued_jobs(conn: psycopg.Connection) -> list[tuple[str, int | None, Any, str | None]]:
    return conn.execute("SELECT queue, image_id, payload, dedupe_key FROM jobs WHERE state = 'queued' "
                        "ORDER BY queue, image_id, dedupe_key").fetchall()


def lose_jobs(conn: psycopg.Connection) -> None:
    """What the triggers queued disappears: the situation backfill exists for."""
    conn.execute("DELETE FROM jobs")


# -- each rule -------------------------------------------------------------------------------------------------------


def merged(conn: psycopg.Connection, image_id: int, source_result_ids: list[int], revision: int = 0,
           seconds_ago: float = 0.0) -> None:
    """The boxes of an image recomputed from these answers (as the merger records it)."""
    conn.execute("""INSERT INTO merged_images (image_id, boxes, source_result_ids, revision, merged_at, changed_at)
                    VALUES (%s, 0, %s, %s, now() - make_interval(secs => %s), now() - make_interval(secs => %s))""",
                 (image_id, source_result_ids, revision, seconds_ago, seconds_ago))


def voted(conn: psycopg.Connection, image_id: int, result_ids: list[int], revision: int = 0,
          postprocessing_ids: tuple[int, ...] = ()) -> None:
    """A consensus that says it voted on these answers, this box revision and these face/pose rows."""
    conn.execute("""INSERT INTO consensus (image_id, consensus_data, source_result_ids, boxes_revision,
                                           postprocessing_ids)
                    VALUES (%s, '{}', %s, %s, %s)""", (image_id, sorted(result_ids), revision,
                                                        sorted(postprocessing_ids)))


def face_pose_ids(conn: psycopg.Connection, image_id: int) -> list[int]:
    return [row[0] for row in conn.execute("SELECT postprocessing_id FROM postprocessing WHERE image_id = %s "
                                           "AND service IN ('face', 'pose') ORDER BY 1", (image_id,))]


def test_nothing_to_do_on_an_empty_database(conn: psycopg.Connection) -> None:
    assert run_backfill(conn) == {}


def test_an_answer_of_any_service_needs_a_consensus_that_lists_it(conn: psycopg.Connection) -> None:
    # The vote lists every answering service with its time: even a metadata answer makes the consensus stale
    # (the reference's enable_consensus_triggers: false left such answers out for good).
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "metadata")
    lose_jobs(conn)
    assert run_backfill(conn) == {"consensus": 1}


def test_merge_when_the_boxes_were_computed_from_other_answers_whatever_the_clocks_say(
        conn: psycopg.Connection) -> None:
    never, missed, fresh, superseded = (add_image(conn, f"{n}.jpg") for n in range(4))
    add_result(conn, never, "yolov8")
    # The lost wake-up: an answer whose transaction started before the merge (so its timestamp is older than
    # merged_at) committed after the merger had read the answers. By clock the boxes look fresh; by content not.
    first = add_result(conn, missed, "yolov8", seconds_ago=60)
    add_result(conn, missed, "rtdetr", seconds_ago=30)
    merged(conn, missed, [first], seconds_ago=0)
    # Boxes from exactly the latest answers are fresh, however old the merge.
    ids = sorted([add_result(conn, fresh, "yolov8"), add_result(conn, fresh, "rtdetr")])
    merged(conn, fresh, ids, seconds_ago=3600)
    # Only the latest answer of a detector counts: a newer one supersedes what the boxes read.
    old = add_result(conn, superseded, "yolov8", seconds_ago=60)
    add_result(conn, superseded, "yolov8", seconds_ago=10)
    merged(conn, superseded, [old])
    conn.execute("INSERT INTO consensus (image_id, consensus_data) SELECT image_id, '{}' FROM images")
    lose_jobs(conn)
    assert run_backfill(conn)["merge"] == 3
    assert [(q, image, payload, key) for q, image, payload, key in queued_jobs(conn) if q == "merge"] == [
        ("merge", image, {"image_id": image}, f"merge:{image}") for image in (never, missed, superseded)]


def test_consensus_when_its_answers_boxes_or_face_and_pose_rows_are_not_the_current_ones(
        conn: psycopg.Connection) -> None:
    missing, by_answer, by_boxes, by_face, fresh = (add_image(conn, f"{n}.jpg") for n in range(5))
    person = add_box(conn, by_face, PERSON, f"{PERSON}:0,0,9,9")
    for service in ("colors", "face", "pose"):
        add_postprocessing(conn, by_face, person, service)
    answers = {image: [add_result(conn, image, "nsfw2", seconds_ago=300)] for image in
               (missing, by_answer, by_boxes, by_face, fresh)}
    for image in (by_answer, by_boxes, by_face, fresh):
        merged(conn, image, [], revision=3)
        voted(conn, image, answers[image], revision=3, postprocessing_ids=tuple(face_pose_ids(conn, image)))
    add_result(conn, by_answer, "ocr", seconds_ago=600)  # older by the clock, new to the vote all the same
    conn.execute("UPDATE merged_images SET revision = 4 WHERE image_id = %s", (by_boxes,))
    conn.execute("DELETE FROM postprocessing WHERE merged_box_id = %s AND service = 'pose'", (person,))
    lose_jobs(conn)
    assert run_backfill(conn) == {"consensus": 4, "postprocess_pose": 1}
    assert [image for queue, image, _, _ in queued_jobs(conn) if queue == "consensus"] == sorted(
        [missing, by_answer, by_boxes, by_face])


def test_an_image_whose_detectors_found_nothing_is_fresh(conn: psycopg.Connection) -> None:
    """Merged once into no box (revision 0), voted with no box: nothing to repair."""
    image = add_image(conn, "a.jpg")
    answer = add_result(conn, image, "yolov8")
    merged(conn, image, [answer], revision=0)
    voted(conn, image, [answer], revision=0)
    lose_jobs(conn)
    assert run_backfill(conn) == {}


def test_postprocessing_for_boxes_without_their_rows(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    person = add_box(conn, image, PERSON, f"{PERSON}:0,0,9,9")
    add_box(conn, image, "", "person:20,0,9,9")  # no emoji: the class is the label
    dog = add_box(conn, image, "🐕", "🐕:40,0,9,9")
    add_postprocessing(conn, image, person, "colors")
    add_postprocessing(conn, image, person, "face", "error")  # an answer, even a failed one, is not missing
    add_postprocessing(conn, image, dog, "colors")
    complete = add_image(conn, "b.jpg")  # its one box has its colors: no job
    add_postprocessing(conn, complete, add_box(conn, complete, "🐕", "🐕:0,0,9,9"), "colors")
    lose_jobs(conn)
    # A job per image and service that some box lacks (sql/0115); the labelled person lacks colors, face and pose.
    assert run_backfill(conn) == {"consensus": 1, "postprocess_colors": 1, "postprocess_face": 1,
                                  "postprocess_pose": 1}
    wanted = [(queue, image_id, payload, key) for queue, image_id, payload, key in queued_jobs(conn)
              if queue.startswith("postprocess")]
    assert wanted == [(f"postprocess_{service}", image, {"image_id": image}, f"{service}:image:{image}")
                      for service in ("colors", "face", "pose")]


def caption_scored(conn: psycopg.Connection, image_id: int, source: str, caption_id: int) -> None:
    conn.execute("""INSERT INTO postprocessing (image_id, service, data, source_result_id)
                    VALUES (%s, %s, '{}', %s)""", (image_id, f"caption_score_{source}", caption_id))


def test_caption_score_when_it_scored_another_caption_than_the_latest(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    older_blip = add_result(conn, image, "blip", seconds_ago=60)
    blip = add_result(conn, image, "blip", seconds_ago=30)
    ollama = add_result(conn, image, "ollama", seconds_ago=60)
    caption_scored(conn, image, "blip", older_blip)  # stored after the newer caption arrived: still stale
    caption_scored(conn, image, "ollama", ollama)
    voted(conn, image, [blip, ollama])
    lose_jobs(conn)
    assert run_backfill(conn) == {"caption_score": 1}
    assert queued_jobs(conn) == [("caption_score", image, {"image_id": image, "service": "blip"},
                                  f"caption_score:blip:{image}")]


def test_expired_leases_go_back_to_the_queue_and_a_last_attempt_runs_once_more(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    expired = add_job(conn, "noop", "running", owner="gone", lease_s=-10)
    last = add_job(conn, "noop", "running", owner="gone", lease_s=-10)
    conn.execute("UPDATE jobs SET attempts = max_attempts WHERE id = %s", (last,))
    alive = add_job(conn, "noop", "running", image_id=image, owner="here", lease_s=30)
    assert run_backfill(conn) == {"expired_leases": 2}
    rows = {row[0]: row[1:] for row in conn.execute(
        "SELECT id, state::text, last_error, lease_owner, run_after <= now() FROM jobs")}
    assert rows[expired] == ("failed", "lease of worker gone expired", None, True)
    # The last attempt runs once more (the claim counts it again: it stays the last), to record its outcome.
    assert rows[last] == ("failed", "lease of worker gone expired on its last attempt; run once more to record its "
                                    "outcome", None, True)
    assert conn.execute("SELECT max_attempts - attempts FROM jobs WHERE id = %s", (last,)).fetchone() == (1,)
    assert rows[alive][0] == "running"
    # Expired on that last attempt again: a poison input, whose failure the claim has its role record (sql/0131).
    expire_again = ("UPDATE jobs SET state = 'running', attempts = max_attempts, lease_owner = %s, "
                    "lease_expires_at = now() - interval '10 seconds' WHERE id = %s")
    conn.execute(expire_again, ("gone too", last))
    run_backfill(conn)
    state, reason = conn.execute("SELECT state::text, last_error FROM jobs WHERE id = %s", (last,)).fetchone()
    assert state == "failed" and reason.startswith("lease of worker gone too expired on its last attempt twice")
    # Its recording expired too: given up.
    conn.execute(expire_again, ("gone as well", last))
    run_backfill(conn)
    state, reason = conn.execute("SELECT state::text, last_error FROM jobs WHERE id = %s", (last,)).fetchone()
    assert state == "dead" and reason.startswith("lease of worker gone as well expired while the failure of a poison")


def add_merge_job(conn: psycopg.Connection, image_id: int, state: str) -> int:
    job = add_job(conn, "merge", state, image_id=image_id, owner="w" if state == "running" else None,
                  lease_s=30 if state == "running" else None, error="boom" if state in ("failed", "dead") else None)
    conn.execute("UPDATE jobs SET dedupe_key = 'merge:' || image_id, payload = jsonb_build_object('image_id', "
                 "image_id) WHERE id = %s", (job,))
    return job


def test_work_covered_by_a_job_is_not_queued_again(conn: psycopg.Connection) -> None:
    waiting, running, retrying, dead, dead_then_done = (add_image(conn, f"{n}.jpg") for n in range(5))
    for image in (waiting, running, retrying, dead, dead_then_done):
        add_result(conn, image, "yolov8", seconds_ago=60)
    conn.execute("INSERT INTO consensus (image_id, consensus_data) SELECT image_id, '{}' FROM images")
    lose_jobs(conn)
    add_merge_job(conn, waiting, "queued")
    add_merge_job(conn, running, "running")
    add_merge_job(conn, retrying, "failed")
    # The newest job of the key gave up on the work: `jobs retry` is the operator's call. An older dead job that a
    # later job followed has said nothing about the current work.
    add_merge_job(conn, dead, "dead")
    add_merge_job(conn, dead_then_done, "dead")
    add_merge_job(conn, dead_then_done, "done")
    assert run_backfill(conn)["merge"] == 1
    assert conn.execute("SELECT image_id FROM jobs WHERE state = 'queued' AND queue = 'merge' AND image_id <> %s",
                        (waiting,)).fetchall() == [(dead_then_done,)]


def test_the_limit_bounds_each_category(conn: psycopg.Connection) -> None:
    for n in range(5):
        image = add_image(conn, f"{n}.jpg")
        add_result(conn, image, "yolov8")
        add_box(conn, image, "🐕", "🐕:0,0,9,9")
    lose_jobs(conn)
    assert run_backfill(conn, limit=2) == {"merge": 2, "consensus": 2, "postprocess_colors": 2}
    assert run_backfill(conn, limit=2) == {"merge": 2, "consensus": 2, "postprocess_colors": 2}
    assert run_backfill(conn, limit=2) == {"merge": 1, "consensus": 1, "postprocess_colors": 1}
    assert run_backfill(conn, limit=2) == {}


def test_two_backfills_at_once_do_the_work_once(database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "yolov8")
    lose_jobs(conn)
    with database.connect() as other, other.transaction():
        assert run_backfill(other) == {"merge": 1, "consensus": 1}
        assert run_backfill(conn) == {}  # the first still runs (its transaction is open): this one steps aside


def test_backfill_works_from_any_search_path(conn: psycopg.Connection) -> None:
    """pg_cron calls it with the server's default search_path."""
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "yolov8")
    lose_jobs(conn)
    conn.execute("SET search_path TO public")
    assert conn.execute("SELECT * FROM windmill.backfill() ORDER BY 1").fetchall() == [("consensus", 1), ("merge", 1)]


# -- pages: a bounded part of the collection per run ------------------------------------------------------------------


def position(conn: psycopg.Connection) -> tuple[int, int]:
    return conn.execute("SELECT after_image_id, laps FROM backfill_state").fetchone()


def consensus_queued_for(conn: psycopg.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT image_id FROM jobs WHERE queue = 'consensus' "
                                           "AND state = 'queued' ORDER BY image_id")]


@pytest.fixture
def six_lost_consensus(conn: psycopg.Connection) -> list[int]:
    images = [add_image(conn, f"{n}.jpg") for n in range(6)]
    for image in images:
        add_result(conn, image, "metadata")
    lose_jobs(conn)
    return images


def test_a_run_looks_only_at_its_page_and_the_next_one_goes_on_from_there(
        conn: psycopg.Connection, six_lost_consensus: list[int]) -> None:
    images = six_lost_consensus
    assert run_backfill(conn, page=2) == {"consensus": 2}
    assert consensus_queued_for(conn) == images[:2] and position(conn) == (images[1], 0)
    assert run_backfill(conn, page=2) == {"consensus": 2}
    assert consensus_queued_for(conn) == images[:4] and position(conn) == (images[3], 0)
    assert run_backfill(conn, page=4) == {"consensus": 2}  # a short page ends the lap
    assert consensus_queued_for(conn) == images and position(conn) == (0, 1)


def test_the_walk_wraps_around_and_finds_new_work_behind_it(conn: psycopg.Connection,
                                                            six_lost_consensus: list[int]) -> None:
    images = six_lost_consensus
    assert run_backfill(conn, page=3) == {"consensus": 3}
    assert run_backfill(conn, page=3) == {"consensus": 3}  # a full page: the lap is over only at the next one
    assert position(conn) == (images[5], 0)
    lose_jobs(conn)
    assert run_backfill(conn, page=3) == {} and position(conn) == (0, 1)  # nothing after the last image
    assert run_backfill(conn, page=3) == {"consensus": 3}  # the lost jobs of the first page, found again
    assert consensus_queued_for(conn) == images[:3]


def test_a_page_with_more_work_than_the_limit_is_finished_before_moving_on(
        conn: psycopg.Connection, six_lost_consensus: list[int]) -> None:
    images = six_lost_consensus
    assert run_backfill(conn, page=4, limit=3) == {"consensus": 3}
    assert position(conn) == (0, 0)
    assert run_backfill(conn, page=4, limit=3) == {"consensus": 1}
    assert consensus_queued_for(conn) == images[:4] and position(conn) == (images[3], 0)


# -- a real run, broken on purpose -----------------------------------------------------------------------------------


def run_until_idle(database: Database, pool: ConnectionPool, catalog: Catalog) -> None:
    # A service left out of the stand-in is down: its calls wait a second for it, then take their retries.
    settings = settings_from_mapping({"WORKER_ID": "backfill-test", "WINDMILL_OUTAGE_WAIT_S": "1"})
    group = WorkerGroup(settings, database, pool, catalog, SINGLE_MACHINE,
                        jobs=JobQueue(pool, retry_base_s=0.05), options=WorkerOptions(poll_interval_s=0.1))
    with group:
        wait_until(lambda: pipeline_idle(pool), timeout=120, interval=0.1, message="the pipeline to go idle")


def without_result_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_result_ids(item) for key, item in value.items() if key != "result_id"}
    if isinstance(value, list):
        return [without_result_ids(item) for item in value]
    return value


def products(conn: psycopg.Connection) -> dict[str, Any]:
    """What a repaired database must hold again: boxes, their postprocessing, consensus per image."""
    return {
        "boxes": conn.execute("SELECT image_id, crop_key FROM merged_boxes ORDER BY 1, 2").fetchall(),
        "post": conn.execute("SELECT mb.crop_key, p.service FROM postprocessing p JOIN merged_boxes mb "
                             "ON mb.merged_id = p.merged_box_id ORDER BY 1, 2").fetchall(),
        # The answer loaded behind the triggers' back is a copy of one already there: the vote must not change,
        # only the result ids it cites and the time of the latest answer. A repaired face answer is for the box's
        # current crop, which may be a few pixels off the crop first analysed (a nudged box keeps its row and its
        # answers): its confidence may differ, whether a face was found may not.
        "consensus": [(image_id, without_result_ids(data)) for image_id, data in conn.execute(
            "SELECT image_id, consensus_data - 'latest_result_time' - 'debug' #- '{special,face,confidence}' "
            "FROM consensus ORDER BY 1")],
        "captions": conn.execute("SELECT image_id, service FROM postprocessing WHERE merged_box_id IS NULL "
                                 "ORDER BY 1, 2").fetchall(),
    }


def test_backfill_repairs_a_deliberately_broken_run(database: Database, pool: ConnectionPool,
                                                    conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / name for name in ("coffee.jpg", "ascent.jpg", "chelsea.jpg", "rocket.jpg")])
    ids = dict(conn.execute("SELECT image_filename, image_id FROM images"))
    coffee, ascent, chelsea, rocket = (ids[f"{name}.jpg"] for name in ("coffee", "ascent", "chelsea", "rocket"))
    with running_farm(catalog) as (_, farm_catalog):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
        run_until_idle(database, pool, farm_catalog)
        healthy = products(conn)
        assert run_backfill(conn) == {}, "a finished run needs no repair"
        assert conn.execute("SELECT bool_and(complete) FROM image_completeness").fetchone() == (True,)
        # Re-dating an answer changes no content: nothing to repair (the timestamp backfill queued a merge here).
        conn.execute("""UPDATE results SET result_created = result_created + interval '1 hour' WHERE result_id = (
                            SELECT max(result_id) FROM results WHERE image_id = %s AND service = 'rtdetr')""",
                     (coffee,))
        assert run_backfill(conn) == {}

        # Break it: a lost consensus, a lost face answer, an answer loaded with the triggers off (a bulk load: a
        # copy of chelsea's yolov8 answer, newer), a worker that died holding a merge job.
        conn.execute("DELETE FROM consensus WHERE image_id = %s", (coffee,))
        face_box = conn.execute("""DELETE FROM postprocessing WHERE postprocessing_id = (
                                       SELECT min(postprocessing_id) FROM postprocessing
                                        WHERE image_id = %s AND service = 'face')
                                   RETURNING merged_box_id""", (ascent,)).fetchone()[0]
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("""INSERT INTO results (image_id, service, task_id, data, status, processing_time)
                            SELECT image_id, service, gen_random_uuid(), data, status, processing_time
                              FROM results WHERE image_id = %s AND service = 'yolov8'""", (chelsea,))
        lease_job = add_job(conn, "merge", "running", image_id=rocket, owner="killed-worker", lease_s=-60)
        conn.execute("UPDATE jobs SET payload = jsonb_build_object('image_id', image_id) WHERE id = %s", (lease_job,))

        # The ascent consensus counted the face row that is gone: it is stale too.
        assert run_backfill(conn) == {"expired_leases": 1, "merge": 1, "consensus": 3, "postprocess_face": 1}
        assert queued_jobs(conn) == sorted([
            ("consensus", coffee, {"image_id": coffee}, f"consensus:{coffee}"),
            ("consensus", ascent, {"image_id": ascent}, f"consensus:{ascent}"),
            ("consensus", chelsea, {"image_id": chelsea}, f"consensus:{chelsea}"),
            ("merge", chelsea, {"image_id": chelsea}, f"merge:{chelsea}"),
            ("postprocess_face", ascent, {"image_id": ascent}, f"face:image:{ascent}"),
        ], key=lambda job: (job[0], job[1], job[3]))
        assert conn.execute("SELECT state::text, last_error FROM jobs WHERE id = %s", (lease_job,)).fetchone() == (
            "failed", "lease of worker killed-worker expired")

        run_until_idle(database, pool, farm_catalog)
    assert conn.execute("SELECT state::text FROM jobs WHERE id = %s", (lease_job,)).fetchone() == ("done",)
    assert conn.execute("SELECT count(*) FROM postprocessing WHERE merged_box_id = %s AND service = 'face'",
                        (face_box,)).fetchone() == (1,), "the image's face job answered the box that lost its row"
    assert products(conn) == healthy
    assert run_backfill(conn) == {}


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(conn: psycopg.Connection, limit: int) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_limit must be at least 1"):
        run_backfill(conn, limit=limit)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_page must be at least 1"):
        run_backfill(conn, page=limit)


# -- cost: a run reads its page through indexes -----------------------------------------------------------------------

BIG_TABLES = {"images", "results", "merged_boxes", "merged_images", "postprocessing", "consensus", "jobs"}


def nested_plans(conn: psycopg.Connection, statement: str) -> list[dict[str, Any]]:
    """The executed plan of every statement `statement` runs, its functions' included (auto_explain, with actual
    row counts, sent back as notices)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    for setting, value in (("log_min_duration", "0"), ("log_nested_statements", "on"), ("log_analyze", "on"),
                           ("log_format", "json"), ("log_level", "notice")):
        conn.execute(f"SET auto_explain.{setting} = '{value}'")
    conn.execute(statement)
    conn.execute("SET auto_explain.log_min_duration = '-1'")
    return [json.loads(notice.split("plan:", 1)[1])["Plan"] for notice in notices if "plan:" in notice]


def index_conditions(plan: dict[str, Any], index: str) -> Iterator[str]:
    """The index condition of every scan of `index` in an executed plan (generic: it names the parameters)."""
    if plan.get("Index Name") == index:
        yield plan["Index Cond"]
    for child in plan.get("Plans", []):
        yield from index_conditions(child, index)


def table_reads(plan: dict[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(node type, table, rows the node read, over all its loops) of every scan of a table."""
    if "Relation Name" in plan:
        per_loop = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
                    + plan.get("Rows Removed by Index Recheck", 0))
        yield plan["Node Type"], plan["Relation Name"], per_loop * plan.get("Actual Loops", 1)
    for child in plan.get("Plans", []):
        yield from table_reads(child)


def test_a_run_reads_its_page_by_index_whatever_the_collection_holds(conn: psycopg.Connection) -> None:
    """3,000 images of history (answers, boxes, postprocessing, caption scores, consensus, done jobs); a run over a
    page of 100 reads each table through an index, and no table beyond a few rows per image of its page."""
    page = 100
    history = seed_history(conn, 3000)
    conn.execute("UPDATE backfill_state SET after_image_id = %s", (history.first_image + 1500,))
    lost = conn.execute(query("bench_lose_consensus"), {"page": page}).rowcount
    assert lost == page // 10
    plans = nested_plans(conn, f"SELECT * FROM backfill(1000, {page})")
    reads = [read for plan in plans for read in table_reads(plan) if read[1] in BIG_TABLES]
    assert {table for _, table, _ in reads} >= {"images", "results", "postprocessing", "merged_boxes", "consensus"}
    assert [read for read in reads if read[0] == "Seq Scan"] == []
    assert [read for read in reads if read[2] > 20 * page] == []  # results: 11 rows an image; postprocessing: 6
    assert conn.execute("SELECT queue, count(*) FROM jobs WHERE state = 'queued' GROUP BY 1").fetchall() == [
        ("consensus", lost)]


def test_postprocessing_that_failed_for_good_is_asked_again_with_failed(database: Database, pool: ConnectionPool,
                                                                         conn: psycopg.Connection,
                                                                         catalog: Catalog) -> None:
    # The face service is down through every attempt: the person boxes get error rows, which the backfill counts as
    # answers. Once face is back, `backfill --failed` asks again (before, nothing did, short of deleting rows by hand).
    add_paths(conn, [SAMPLES / "ascent.jpg"])
    everything_but_face = [service.name for service in catalog.services if service.name != "face"]
    with running_farm(catalog, services=everything_but_face) as (_, farm_catalog):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
        run_until_idle(database, pool, farm_catalog)
    faces = "SELECT status, count(*) FROM postprocessing WHERE service = 'face' GROUP BY 1 ORDER BY 1"
    failed = conn.execute(faces).fetchall()
    assert [status for status, _ in failed] == ["error"]
    with running_farm(catalog) as (_, farm_catalog):
        assert run_backfill(conn) == {}, "an error row is an answer: nothing is missing"
        assert retry_failed_products(conn) == {"postprocess_face": 1}  # one job for the image's person boxes
        assert retry_failed_products(conn) == {}, "each failure is asked again once"
        run_until_idle(database, pool, farm_catalog)
    assert conn.execute(faces).fetchall() == [("success", failed[0][1])]
    assert run_backfill(conn) == {}, "the consensus took the new face rows in"
