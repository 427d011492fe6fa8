"""`images add` at scale: the walk lists one directory at a time in the order of the whole listing sorted, goes on
past a directory it cannot list, and registers a batch at a time as it goes (issue 13: ten million images)."""

from __future__ import annotations

import os
import random
import string
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.unprivileged import as_nobody, open_folder
from windmill import Windmill
from windmill.collection import BATCH_SIZE, MAX_NAME_BYTES, AddReport, find_image_files
from windmill.commands.collection import RunningCount
from windmill.db.connect import Database
from windmill.settings import Settings, settings_from_mapping


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # registering reads no pixels: a name is enough
    return path


def walk(*paths: Path, recursive: bool = True, report: AddReport | None = None) -> Iterator[Path]:
    return find_image_files(list(paths), recursive=recursive, report=report or AddReport())


def test_the_walk_keeps_the_order_of_the_sorted_listing(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for name in ("b.jpg", "a.jpg", "a/z.png", "a/b/y.PNG", "a/notes.txt", "A/1.jpeg", "dir.jpg/in.jpg", ".jpg",
                 "z/deep/er/q.webp", "z/deep/r.tif"):
        touch(root / name)
    outside = touch(tmp_path / "elsewhere" / "t.jpg")
    (root / "link.jpg").symlink_to(outside)  # a file's link: registered as what it points to
    (root / "linked").symlink_to(outside.parent)  # a directory's link: not entered (it may lead back up)
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(root / "a" / "pipe.png")
    report = AddReport()

    found = [str(path.relative_to(tmp_path)) for path in walk(root, report=report)]

    # "a" sorts before "a.jpg": a directory's files come where its name puts it, as sorting whole paths does.
    assert found == ["photos/A/1.jpeg", "photos/a/b/y.PNG", "photos/a/z.png", "photos/a.jpg", "photos/b.jpg",
                     "photos/dir.jpg/in.jpg", "elsewhere/t.jpg", "photos/z/deep/er/q.webp", "photos/z/deep/r.tif"]
    # What bears an image's name and is no file is reported, as when named on the command line; a directory so
    # named, or any other name, is not.
    assert report.skipped == [
        (str(root / "a" / "pipe.png"), "not a regular file or a directory (a device, socket or FIFO)"),
        (str(root / "dangling.jpg"), "dangling symbolic link")]
    assert [str(path.relative_to(tmp_path)) for path in walk(root, recursive=False)] == [
        "photos/a.jpg", "photos/b.jpg", "elsewhere/t.jpg"]
    assert [path.name for path in walk(root / "linked")] == ["t.jpg"]  # a named link is followed


def test_the_walk_lists_one_directory_at_a_time(tmp_path: Path) -> None:
    """Files are found while later directories are still unlisted: nothing holds the whole tree in memory."""
    touch(tmp_path / "cam1" / "0001.jpg")
    (tmp_path / "cam2").mkdir()
    files = walk(tmp_path)
    assert next(files).name == "0001.jpg"
    touch(tmp_path / "cam2" / "0002.jpg")  # lands after the walk began, in a directory it has not listed yet
    assert [path.name for path in files] == ["0002.jpg"]


def test_a_directory_that_cannot_be_listed_is_reported_and_the_walk_goes_on(tmp_path: Path) -> None:
    touch(tmp_path / "cam1" / "0001.jpg")
    touch(tmp_path / "cam2" / "0002.jpg")
    touch(tmp_path / "cam3" / "0003.jpg")
    report = AddReport()
    files = walk(tmp_path, report=report)
    assert next(files).name == "0001.jpg"
    for leftover in (tmp_path / "cam2").iterdir():
        leftover.unlink()
    (tmp_path / "cam2").rmdir()  # gone between its parent's listing and its own
    assert [path.name for path in files] == ["0003.jpg"]
    assert report.skipped == [(str(tmp_path / "cam2"), "cannot list the directory: No such file or directory")]


def test_an_unreadable_directory_is_reported_and_the_walk_goes_on() -> None:
    report = AddReport()
    with open_folder() as folder:
        touch(folder / "cam1" / "0001.jpg")
        touch(folder / "cam2" / "0002.jpg")
        (folder / "cam1").chmod(0)
        with as_nobody():  # root lists every directory
            found = [path.name for path in walk(folder, report=report)]
    assert found == ["0002.jpg"]
    assert report.skipped == [(str(folder / "cam1"), "cannot list the directory: Permission denied")]


@pytest.fixture
def settings(database: Database, database_url: str) -> Settings:
    return settings_from_mapping({"WINDMILL_DATABASE_URL": database_url})


def test_images_are_registered_a_batch_at_a_time_as_the_walk_finds_them(settings: Settings, tmp_path: Path,
                                                                        conn: psycopg.Connection) -> None:
    for n in range(2 * BATCH_SIZE + 500):
        touch(tmp_path / f"cam{n // 700}" / f"{n:05d}.jpg")
    seen: list[tuple[int, int]] = []

    def progress(report: AddReport) -> None:  # what the report says, and what another connection sees committed
        seen.append((report.added, conn.execute("SELECT count(*) FROM images").fetchone()[0]))

    with Windmill(settings) as windmill:
        report = windmill.add_images([tmp_path], recursive=True, progress=progress)
        assert report.added == 2 * BATCH_SIZE + 500
        assert seen == [(1000, 1000), (2000, 2000), (2500, 2500)]
        again = windmill.add_images([tmp_path], recursive=True, progress=lambda report: None)
    assert (again.added, again.already_known) == (0, 2 * BATCH_SIZE + 500)


def test_the_running_count_is_rewritten_in_place_and_ended_with_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    count = RunningCount()
    count(AddReport(added=700, already_known=300))
    count(AddReport(added=1700, already_known=300))  # within the interval: not shown
    count.close()
    err = capsys.readouterr().err
    assert err.startswith("\rRegistering: 1,000 file(s), 700 added, 300 already known (")
    assert "2,000" not in err and err.endswith("/s)\n")


def test_a_name_that_is_not_utf8_is_skipped_with_its_reason_and_the_rest_is_registered(
        run, tmp_path: Path, conn: psycopg.Connection) -> None:
    """Latin-1 names from an old camera or archive: PostgreSQL's text cannot hold them, so each is reported (once
    for a whole directory), printably, and everything else goes in."""
    root = os.fsencode(tmp_path / "card")
    os.makedirs(root + b"/caf\xe9")
    for name in (b"/ok.jpg", b"/caf\xe9.jpg", b"/caf\xe9/inside.jpg", b"/caf\xe9/too.jpg"):
        Path(os.fsdecode(root + name)).write_bytes(b"")
    result = run("images", "add", str(tmp_path / "card"), "--recursive")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert f"skipped {tmp_path}/card/caf\\xe9: the name is not valid UTF-8" in result.output  # the directory, once
    assert f"skipped {tmp_path}/card/caf\\xe9.jpg: the name is not valid UTF-8" in result.output
    assert "Added 1 image(s); 0 already known; 2 skipped." in result.output
    assert conn.execute("SELECT image_filename FROM images").fetchall() == [("ok.jpg",)]


def random_letters(count: int, seed: int) -> str:
    """Letters PostgreSQL cannot compress much: a repetitive long key is compressed before it is indexed, and fits."""
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters) for _ in range(count))


def deep_folder(root: Path, at_least: int) -> Path:
    """A folder under `root` whose path is at least `at_least` bytes long, in names of 200 letters."""
    folder, seed = root, 0
    while len(os.fsencode(folder)) < at_least:
        seed += 1
        folder = folder / random_letters(200, seed)
    folder.mkdir(parents=True)
    return folder


def test_a_path_or_url_too_long_to_index_is_skipped_with_its_reason_and_the_rest_is_registered(
        run, tmp_path: Path, conn: psycopg.Connection) -> None:
    """Each path and URL is the key of a unique index, whose B-tree entries hold at most 2,704 bytes: a longer one
    failed the insert of its whole batch, and `images add` ended with PostgreSQL's error, registering none of it."""
    card = tmp_path / "card"
    folder = deep_folder(card, MAX_NAME_BYTES - 200)  # under the bound, its files' paths over it
    far = folder / f"{random_letters(200, 99)}.jpg"
    for path in (far, card / "ok.jpg", folder / "near.jpg"):
        path.write_bytes(b"")
    too_deep = deep_folder(card / "deeper", MAX_NAME_BYTES + 1)
    (too_deep / "inside.jpg").write_bytes(b"")
    long_url = f"https://example.org/{random_letters(MAX_NAME_BYTES, 7)}.jpg"
    result = run("images", "add", str(card), "--recursive")
    assert result.exit_code == 0, result.output
    size = len(os.fsencode(far))
    assert f"skipped {far}: the path is {size:,} bytes long, over the 2,600 the collection can index" in result.output
    assert f"skipped {too_deep}: the folder's path is" in result.output
    assert "Added 2 image(s); 0 already known; 2 skipped." in result.output, result.output
    result = run("images", "add", long_url, "https://example.org/b.jpg")
    assert result.exit_code == 0, result.output
    assert f"the URL is {len(long_url):,} bytes long, over the 2,600 the collection can index" in result.output
    assert "Added 1 image(s); 0 already known; 1 skipped." in result.output, result.output
    assert sorted(row[0] for row in conn.execute("SELECT image_filename FROM images")) == [
        "b.jpg", "near.jpg", "ok.jpg"]


@pytest.mark.parametrize("command", [
    ("images", "remove", "--group", "caf\udce9", "--yes"),
    ("submit", "--group", "caf\udce9", "--services", "primary", "--broker", "postgres"),
    ("images", "remove", "{folder}/caf\udce9.jpg", "--yes"),
    ("export", "--group", "caf\udce9", "--format", "jsonl", "--out", "{folder}/out.jsonl"),
], ids=["images-remove-group", "submit-group", "images-remove-path", "export-group"])
def test_text_that_is_not_utf8_given_to_a_command_is_one_sentence_not_a_traceback(
        run, tmp_path: Path, command: tuple[str, ...]) -> None:
    """A Latin-1 name typed or pasted (a group, a path to remove) reaches Python as surrogates, which the database
    driver cannot send: it ended in a UnicodeEncodeError's traceback."""
    result = run(*(part.format(folder=tmp_path) for part in command))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "UnicodeEncodeError" not in result.output
    assert f"`{' '.join(command[:2]) if command[0] == 'images' else command[0]}` was given text that is not valid " \
           "UTF-8, which the database cannot hold or look up: '" in result.output, result.output
    assert "caf\\xe9" in result.output


@pytest.mark.parametrize(("group", "said"), [
    # The group's index (images_group_idx) refused the batch in PostgreSQL's words, with its advice to index a hash.
    (random_letters(3000, 12), f"{random_letters(3000, 12)[:60]}…: the group name is 3,000 bytes long, over the "
                               "2,600 the collection can index"),
    # The database driver could not send it: a UnicodeEncodeError's traceback.
    ("caf\udce9", "caf\\xe9: the name is not valid UTF-8"),
], ids=["too-long", "not-utf8"])
def test_a_group_name_the_collection_cannot_hold_is_one_sentence_and_registers_nothing(
        run, tmp_path: Path, conn: psycopg.Connection, group: str, said: str) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    result = run("images", "add", str(tmp_path / "a.jpg"), "--group", group)
    assert result.exit_code == 1, result.output
    assert f"cannot register images in the group {said}" in result.output, result.output
    assert conn.execute("SELECT count(*) FROM images").fetchone() == (0,)


def test_a_url_list_line_that_is_not_utf8_is_skipped_with_its_reason(run, tmp_path: Path,
                                                                     conn: psycopg.Connection) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_bytes(b"https://example.org/a.jpg\nhttps://example.org/caf\xe9.jpg\nhttps://example.org/b.jpg\n"
                     b"https://example.org/n\x00ul.jpg\n")
    result = run("images", "add", "--url-list", str(urls))
    assert result.exit_code == 0, result.output
    assert "skipped https://example.org/caf\\xe9.jpg: the line is not valid UTF-8" in result.output
    # A NUL character failed the insert of the whole batch: the command ended with PostgreSQL's error.
    assert "skipped https://example.org/n\\x00ul.jpg: the URL holds a NUL character, which the database's text " \
           "cannot" in result.output
    assert "Added 2 image(s); 0 already known; 2 skipped." in result.output
