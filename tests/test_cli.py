"""The command line against a real database: images add, submit, status, jobs; user errors are one sentence."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image

from tests.conftest import PYTHON, REPOSITORY
from windmill.commands import main


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ("a.jpg", "b.png", "nested/c.webp"):
        Image.new("RGB", (8, 8), "red").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_images_add_registers_each_file_once(run, photos: Path, conn: psycopg.Connection) -> None:
    first = run("images", "add", str(photos), "--group", "g1")
    assert first.exit_code == 0, first.output
    assert "Added 2 image(s)" in first.output
    again = run("images", "add", str(photos), "--recursive", "--group", "g1")
    assert "Added 1 image(s); 2 already known" in again.output
    assert conn.execute("SELECT count(*) FROM images WHERE image_group = 'g1'").fetchone()[0] == 3
    # Known files given with another group stay in theirs, and the summary says so (a submit of that group would
    # otherwise find none of them, right after they were "added" to it).
    (photos / "c.jpg").write_bytes((photos / "a.jpg").read_bytes())
    other = run("images", "add", str(photos), "--group", "g2")
    assert ("Added 1 image(s); 2 already known (2 of them in another group or none, where they stay: an image "
            "belongs to one group); 0 skipped.") in other.output, other.output
    assert "in another group" not in run("images", "add", str(photos / "c.jpg"), "--group", "g2").output
    assert conn.execute("SELECT count(*) FROM images WHERE image_group = 'g1'").fetchone()[0] == 3


def test_images_add_reports_what_it_skipped(run, photos: Path) -> None:
    result = run("images", "add", str(photos / "notes.txt"), str(photos / "missing.jpg"))
    assert result.exit_code == 1
    assert "skipped" in result.output and "no such file or directory" in result.output


def test_images_add_says_a_device_is_not_a_file_it_can_add(run) -> None:
    result = run("images", "add", "/dev/null")
    assert result.exit_code == 1
    assert "skipped /dev/null: not a regular file or a directory" in result.output


def test_images_add_url_list(run, tmp_path: Path, conn: psycopg.Connection) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("# photos\nhttps://example.org/img/one.jpg\n\nftp://example.org/two.jpg\nhttp://h/x%20y.png\n")
    result = run("images", "add", "--url-list", str(urls))
    assert "Added 2 image(s)" in result.output
    assert "only http:// and https://" in result.output
    names = [row[0] for row in conn.execute("SELECT image_filename FROM images ORDER BY image_id")]
    assert names == ["one.jpg", "x y.png"]


def test_a_url_whose_host_or_port_cannot_be_fetched_is_skipped_with_the_reason(
        run, tmp_path: Path, conn: psycopg.Connection) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://exa mple.org/a.jpg\nhttp://h:99999/b.jpg\nhttp://h:web/c.jpg\nhttp://:80/d.jpg\n"
                    "https://example.org/my photo.jpg\nhttp://[::1]:8080/e.jpg\nhttp:///f.jpg\n")
    result = run("images", "add", "--url-list", str(urls))
    assert "Added 2 image(s); 0 already known; 5 skipped." in result.output, result.output
    for skipped in ["http://exa mple.org/a.jpg: 'exa mple.org' is not a host name",
                    "http://h:99999/b.jpg: the port is not a number from 0 to 65535",
                    "http://h:web/c.jpg: the port is not a number from 0 to 65535",
                    "http://:80/d.jpg: the URL names no host",
                    "http:///f.jpg: the URL names no host"]:  # (once: only http:// and https:// URLs can be added)
        assert f"skipped {skipped}" in result.output
    assert [row[0] for row in conn.execute("SELECT image_filename FROM images ORDER BY image_id")] == [
        "my photo.jpg", "e.jpg"]


def test_images_add_takes_urls_as_arguments_beside_files(run, photos: Path, conn: psycopg.Connection) -> None:
    # Read as paths, the URLs were collapsed to 'https:/example.org/...' and skipped as missing files.
    result = run("images", "add", "https://example.org/img/one.jpg", str(photos / "a.jpg"), "ftp://example.org/two.jpg",
                 "HTTP://h/x%20y.png")
    assert "Added 3 image(s)" in result.output, result.output
    assert "skipped ftp://example.org/two.jpg: only http:// and https:// URLs can be added" in result.output
    stored = conn.execute("SELECT image_filename, image_url FROM images ORDER BY image_filename").fetchall()
    assert stored == [("a.jpg", None), ("one.jpg", "https://example.org/img/one.jpg"), ("x y.png", "HTTP://h/x%20y.png")]


def test_submit_queues_one_task_per_image_and_service_and_skips_answered_pairs(
        run, photos: Path, conn: psycopg.Connection) -> None:
    run("images", "add", str(photos), "-r")
    result = run("submit", "--services", "yolov8,blip")
    assert result.exit_code == 0, result.output
    assert "Submitted 6 task(s) for 3 image(s)" in result.output
    task = conn.execute("SELECT payload FROM jobs WHERE queue = 'queue_yolov8' ORDER BY id LIMIT 1").fetchone()[0]
    assert set(task) == {"task_id", "image_id", "image_filename", "image_path", "image_url", "submitted_at",
                         "service_name", "queue_name"}
    # A second submit while the tasks wait adds nothing, and says so.
    again = run("submit", "--services", "yolov8,blip")
    assert "Submitted 0 task(s) for 3 image(s)" in again.output
    assert "0 already answered, 6 already in flight." in again.output
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue LIKE 'queue%%'").fetchone()[0] == 6
    # Once the workers are done, an answered pair is skipped unless --force.
    conn.execute("UPDATE jobs SET state = 'done'")
    conn.execute("""INSERT INTO results (image_id, service, task_id, data, status)
                    VALUES (1, 'blip', gen_random_uuid(), '{}', 'success')""")
    assert "Submitted 5 task(s)" in run("submit", "-s", "yolov8,blip").output
    conn.execute("UPDATE jobs SET state = 'done'")
    assert "Submitted 6 task(s)" in run("submit", "-s", "yolov8,blip", "--force").output
    conn.execute("UPDATE jobs SET state = 'done'")
    assert "Submitted 2 task(s) for 1 image(s)" in run("submit", "-s", "yolov8,blip", "--limit", "1",
                                                       "--force").output


def test_submit_queues_no_task_that_no_worker_would_take(run, photos: Path, conn: psycopg.Connection) -> None:
    """Caption scoring scores the captions other services answered: a task of its own would wait forever in a
    queue nobody consumes, and keep its image from ever being complete (the reference's bug with full_catalog)."""
    run("images", "add", str(photos), "-r")
    named = run("submit", "--services", "blip,caption_score")
    assert named.exit_code == 1
    assert ("Error: caption_score takes no image task: it scores the captions of blip, ollama as they are "
            "answered") in named.output, named.output
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    everything = run("submit", "--services", "full_catalog", "--json")
    assert everything.exit_code == 0, everything.output
    assert "caption_score" not in json.loads(everything.output)["services"]
    queues = [row[0] for row in conn.execute("SELECT DISTINCT queue FROM jobs ORDER BY 1")]
    assert len(queues) == 13 and "queue_face" in queues and "queue_caption_score" not in queues


def test_images_remove_takes_everything_stored_for_the_images_it_names(run, photos: Path, tmp_path: Path,
                                                                       conn: psycopg.Connection) -> None:
    (photos / "nested2").mkdir()
    Image.new("RGB", (8, 8), "blue").save(photos / "nested2" / "d.png")  # beside nested/, not under it
    run("images", "add", str(photos), "-r", "--group", "cams")
    run("images", "add", "https://example.org/x.jpg")
    assert run("submit", "-s", "nsfw2").exit_code == 0
    ids = dict(conn.execute("SELECT image_filename, image_id FROM images").fetchall())
    conn.execute("""INSERT INTO results (image_id, service, task_id, data, status)
                    SELECT image_id, 'blip', gen_random_uuid(), '{}', 'success' FROM images""")

    def left() -> list[str]:
        return [row[0] for row in conn.execute("SELECT image_filename FROM images ORDER BY image_filename")]

    # Nothing is removed without --yes when no terminal can ask, nor when nothing matches (a mistyped group).
    asked = run("images", "remove", "--group", "cams")
    assert asked.exit_code == 1 and "removing 4 image(s) needs --yes" in asked.output, asked.output
    assert run("images", "remove", "--group", "cam", "--yes").exit_code == 1
    assert run("images", "remove", "--yes").exit_code == 2, "nothing named"
    assert left() == ["a.jpg", "b.png", "c.webp", "d.png", "x.jpg"]
    # A folder takes every image under it, a file or URL itself (a file already gone from disk too), --id its
    # image; the images' answers and queued jobs go with them.
    (photos / "a.jpg").unlink()
    assert "Removed 1 image(s)" in run("images", "remove", str(photos / "a.jpg"), "--yes").output
    assert run("images", "remove", str(photos / "nested"), "--yes", "--json").output.count('"removed": 1') == 1
    assert left() == ["b.png", "d.png", "x.jpg"]
    assert "Removed 3 image(s)" in run("images", "remove", "--id", str(ids["b.png"]), "https://example.org/x.jpg",
                                       str(photos / "nested2" / "d.png"), "-y").output
    assert left() == []
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue = 'queue_nsfw2'").fetchone()[0] == 0
    # A stream's old images: those registered before an instant.
    run("images", "add", "https://example.org/old.jpg", "https://example.org/new.jpg")
    conn.execute("UPDATE images SET image_created = '2026-01-01T00:00Z' WHERE image_url LIKE '%%old.jpg'")
    assert "Removed 1 image(s)" in run("images", "remove", "--added-before", "2026-06-01T00:00Z", "--yes").output
    assert left() == ["new.jpg"]
    assert "--added-before takes an ISO 8601 instant" in run("images", "remove", "--added-before", "june",
                                                             "--yes").output


def test_submit_with_no_images_says_so(run, photos: Path) -> None:
    result = run("submit")
    assert result.exit_code == 1
    assert "no images to submit; add some with `windmill-cli images add`" in result.output
    run("images", "add", str(photos), "--group", "field cams")
    mistyped = run("submit", "--group", "field cam")  # a name close to a group's is most likely that group
    assert mistyped.exit_code == 1
    assert "Error: no images to submit in group 'field cam'; did you mean 'field cams'?" in mistyped.output
    new = run("submit", "--group", "roof")
    assert new.exit_code == 1
    assert ("Error: no images to submit in group 'roof'; add some with `windmill-cli images add --group roof`"
            in new.output), new.output
    # The groups there are, and how many images each holds.
    run("images", "add", str(photos / "nested"))
    assert json.loads(run("images", "groups", "--json").output) == [{"group": None, "images": 1},
                                                                    {"group": "field cams", "images": 2}]
    assert run("images", "remove", "--group", "lab", "--yes").output.strip() == (
        "Error: no registered image matches (none is in group 'lab'; the groups are 'field cams'); nothing removed")


def test_status_and_jobs_commands(run, photos: Path, conn: psycopg.Connection) -> None:
    run("images", "add", str(photos))
    run("submit", "-s", "metadata")
    status = json.loads(run("status", "--json").output)
    [queue] = status["queues"]
    assert (queue["queue"], queue["queued"], queue["running"]) == ("queue_metadata", 2, 0)
    assert {row["service"]: row["queued"] for row in status["services"]}["metadata"] == 2
    conn.execute("UPDATE jobs SET state = 'dead', last_error = 'gave up' WHERE id = 1")
    listed = json.loads(run("jobs", "list", "--state", "dead", "--json").output)
    assert [(job["id"], job["last_error"]) for job in listed] == [(1, "gave up")]
    assert "Queued 1 dead job(s) again." in run("jobs", "retry").output
    assert conn.execute("SELECT state::text FROM jobs WHERE id = 1").fetchone()[0] == "queued"
    assert "queue_metadata" in run("status").output


def test_unknown_role_is_one_sentence(run) -> None:
    result = run("worker", "--role", "juggler")
    assert result.exit_code == 1
    assert result.output.startswith("Error: unknown role 'juggler'; valid roles:")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["submit", "-s", "nope"], {}, "Error: unknown service 'nope'"),
        (["status"], {"WINDMILL_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none"},
         "Error: cannot connect to PostgreSQL at 127.0.0.1:1/none"),
        (["config"], {"DB_HOST": "x", "WINDMILL_DATABASE_URL": ""}, "Error: DB_NAME is required when DB_HOST is set"),
        # Refused before anything is opened or started (it was reported as a metrics port taken, or a database away).
        (["worker", "--role", "service"], {"WINDMILL_DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none"},
         "Error: the service role needs --service NAME"),
    ],
)
def test_user_errors_print_one_line_without_traceback(worker_env: dict[str, str], tmp_path: Path,
                                                      args: list[str], env: dict[str, str], expected: str) -> None:
    process = subprocess.run([PYTHON, "-m", "windmill", *args], env={**worker_env, **env}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1].startswith(expected)
    assert "pw@" not in process.stderr


def test_a_refused_rabbitmq_login_is_one_sentence(run, photos: Path, worker_env: dict[str, str], tmp_path: Path,
                                                  amqp_url: str) -> None:
    run("images", "add", str(photos))
    scheme, rest = amqp_url.split("://", 1)
    refused = f"{scheme}://windmill-test:not-the-password@{rest.rpartition('@')[2]}"
    process = subprocess.run([PYTHON, "-m", "windmill", "submit"], env={**worker_env, "WINDMILL_AMQP_URL": refused},
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1
    lines = process.stderr.strip().splitlines()
    assert "Traceback" not in process.stderr
    assert [line for line in lines if "pika" in line] == []
    assert lines[-1].startswith("Error: could not declare queues: RabbitMQ at ")
    assert "refused: the user name or password is wrong (403 ACCESS_REFUSED; they come from WINDMILL_AMQP_URL" in \
        lines[-1] and "not-the-password" not in process.stderr


@pytest.mark.parametrize(("broker_said", "explained"), [
    ("ProbableAccessDeniedError: ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost nosuchvh not found'",
     "virtual host 'nosuchvh' does not exist (530 NOT_ALLOWED): create it (`rabbitmqctl add_vhost nosuchvh`) or "
     "correct the URL's path (`/%2F` is the default virtual host)"),
    ("ProbableAccessDeniedError: ConnectionClosedByBroker: (530) \"NOT_ALLOWED - access to vhost 'h1' refused for "
     "user 'probe'\"", "user 'probe' may not use virtual host 'h1' (530 NOT_ALLOWED): grant it (`rabbitmqctl "
     "set_permissions -p h1 probe '.*' '.*' '.*'`)"),
    ("StreamLostError: Transport indicated EOF", None),
])
def test_rabbitmqs_refusals_are_said_with_their_fix(broker_said: str, explained: str | None) -> None:
    # As RabbitMQ 3.x words them; pika passed them on raw (`(530) 'NOT_ALLOWED - vhost nosuchvh not found'`).
    from windmill.broker.refusals import explain_refusal

    assert explain_refusal(broker_said) == explained


def test_every_command_has_help() -> None:
    def walk(group, path):
        yield path
        for name, command in getattr(group, "commands", {}).items():
            yield from walk(command, [*path, name])

    for path in walk(main, []):
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage:" in result.output


def test_readme_documents_every_command() -> None:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    for name in main.commands:
        assert f"windmill-cli {name}" in readme, name


def test_the_command_line_and_a_submit_session_load_no_worker_code() -> None:
    """`windmill-cli submit` (or status, or jobs) starts a process whose start-up sits between an operator and the
    first task queued: it loaded every role, the HTTP client, numpy and Pillow for nothing, about half its 0.8 s."""
    loaded = subprocess.run(
        [PYTHON, "-c", "import sys, windmill.commands, windmill.api.session, windmill.stopping; "
                       "print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=REPOSITORY).stdout.split()
    heavy = {"numpy", "httpx", "PIL", "pika", "windmill.roles", "windmill.image_cache", "windmill.worker.runtime"}
    assert heavy.isdisjoint(loaded), sorted(heavy.intersection(loaded))


def test_a_group_that_selects_nothing_is_answered_with_the_groups_it_may_have_meant() -> None:
    from windmill.collection import group_hint

    assert group_hint("cams", []) == "; no image is in any group"
    assert group_hint("feild cams", ["field cams", "roof"]) == "; did you mean 'field cams'?"
    # A short name in other letter case: too far by the letters alone, and `images add --group G1` was the advice.
    assert group_hint("G1", ["g1", "roof"]) == "; did you mean 'g1'?"
    assert group_hint("FEILD CAMS", ["field cams", "roof"]) == "; did you mean 'field cams'?"
    assert group_hint("lab", ["field cams", "roof"]) == "; the groups are 'field cams', 'roof'"
    many = [f"camera {index:02d}" for index in range(12)]
    assert group_hint("lab", many) == "; `windmill-cli images groups` lists them"
