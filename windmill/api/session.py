"""`Windmill`: the pipeline from Python. One object opens the database (the embedded cluster when none is
configured) and offers what the command line does: add images, submit them, follow and wait for the work, read
the results. The CLI's commands call these same methods."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from windmill.api.records import Image, ImageRecord, from_row
from windmill.catalog import Catalog, Service, configured_catalog
from windmill.collection import AddReport
from windmill.db.connect import Database, outliving_connection_loss
from windmill.db.queries import query
from windmill.errors import WindmillError
from windmill.jobs import JobQueue
from windmill.producer import SubmitReport, Submitter
from windmill.progress import Progress
from windmill.settings import Settings, load_settings
from windmill.watch import WatchReport
from windmill.worker.layout import SINGLE_MACHINE, RoleSpec

if TYPE_CHECKING:  # the workers load on first use: a session that only submits or reads needs none of them
    from windmill.removal import RemoveReport
    from windmill.worker.group import WorkerGroup
    from windmill.worker.runtime import WorkerOptions


@dataclass(frozen=True)
class Submission:
    """What `submit` queued: the counts, where the tasks went, and for which services (pass them to `wait`)."""

    report: SubmitReport
    rabbitmq: bool
    services: tuple[str, ...]


class Windmill:
    """The pipeline from Python, used as a context manager::

        with Windmill() as windmill:  # settings from the environment and ./.env, as windmill-cli reads them
            windmill.add_images(["photos"], group="holiday")
            submission = windmill.submit("primary", group="holiday")
            windmill.wait(group="holiday", services=submission.services, timeout_s=600)
            for image in windmill.iter_images(group="holiday"):
                print(image.image_filename, windmill.image(image.image_id).consensus)

    Workers run elsewhere (`windmill-cli run`, `workers start`), or in this process inside `with
    windmill.workers():`. Entering opens the database, migrating the embedded one on first use (a configured one
    must be up to date: `windmill-cli init-db`); leaving closes the connections and releases the embedded cluster.
    """

    def __init__(self, settings: Settings | None = None, *, catalog: Catalog | None = None,
                 application_name: str = "windmill-api", reading_only: bool = False) -> None:
        self.settings = settings if settings is not None else load_settings()
        # The catalog as clients use it: WINDMILL_PORT_OFFSET points them at a stand-in farm.
        self.catalog = catalog if catalog is not None else configured_catalog(
            self.settings.service_config).with_port_offset(self.settings.port_offset)
        self.application_name = application_name
        self.reading_only = reading_only  # writes nothing, not even the services table: the monitor role may open it
        self._stack: ExitStack | None = None
        self._database: Database | None = None
        self._pool: ConnectionPool | None = None

    # -- opening and closing ------------------------------------------------------------------------------------

    def __enter__(self) -> Windmill:
        from windmill.db.schema import open_migrated

        with ExitStack() as stack:
            self._database = stack.enter_context(
                open_migrated(self.settings, self.catalog, application_name=self.application_name,
                              sync_catalog=not self.reading_only))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and release the database (the embedded cluster stops with its last user)."""
        stack, self._stack, self._database, self._pool = self._stack, None, None, None
        if stack is not None:
            stack.close()

    @property
    def database(self) -> Database:
        if self._database is None:
            raise WindmillError("this Windmill is not open: use it in a `with` block")
        return self._database

    @property
    def pool(self) -> ConnectionPool:
        """The connections the methods share, opened on first use."""
        if self._pool is None:
            database = self.database  # refuses a Windmill that is not open
            assert self._stack is not None
            self._pool = self._stack.enter_context(database.pool(min_size=1, max_size=4, name=self.application_name))
        return self._pool

    def connection(self) -> AbstractContextManager[psycopg.Connection]:
        """A connection of the pool (autocommit; open a transaction where you need one), returned on exit."""
        return self.pool.connection()

    @property
    def jobs(self) -> JobQueue:
        """The PostgreSQL job queue: list and retry jobs."""
        return JobQueue(self.pool)

    # -- the collection -----------------------------------------------------------------------------------------

    def add_images(self, paths: Iterable[str | Path], *, group: str | None = None, recursive: bool = False,
                   progress: Callable[[AddReport], None] | None = None) -> AddReport:
        """Register image files and directories of images (with `recursive`, their sub-directories too), a batch
        of 1,000 at a time as the walk finds them; `progress` gets the report after each batch. A file already
        known is not added twice; anything that is not an image file is skipped with its reason."""
        from windmill.collection import add_paths

        with self.connection() as conn:
            return add_paths(conn, [Path(path) for path in paths], group=group, recursive=recursive,
                             progress=progress)

    def add_urls(self, urls: Iterable[str], *, group: str | None = None,
                 progress: Callable[[AddReport], None] | None = None) -> AddReport:
        """Register http(s) image URLs (blank lines and `#` comments are ignored, so a list file's lines do);
        `progress` as for `add_images`."""
        from windmill.collection import add_urls

        with self.connection() as conn:
            return add_urls(conn, urls, group=group, progress=progress)

    def groups(self) -> dict[str | None, int]:
        """Each group's number of images (None: the images in no group). It reads every image's index entry."""
        with self.connection() as conn:
            return dict(conn.execute(query("image_groups")).fetchall())

    def group_names(self) -> list[str]:
        """The collection's group names in order, found by one index probe each."""
        from windmill.collection import group_names

        with self.connection() as conn:
            return group_names(conn)

    def images_to_remove(self, targets: Iterable[str] = (), *, ids: Iterable[int] = (), group: str | None = None,
                         added_before: datetime | None = None) -> int:
        """How many images `remove_images` with the same arguments would remove now."""
        from windmill.removal import Removal, count_selected

        with self.connection() as conn:
            return count_selected(conn, Removal.of(targets, ids=ids, group=group, added_before=added_before))

    def remove_images(self, targets: Iterable[str] = (), *, ids: Iterable[int] = (), group: str | None = None,
                      added_before: datetime | None = None,
                      progress: Callable[[int], None] | None = None) -> RemoveReport:
        """Remove images with everything stored for them (answers, boxes, postprocessing, consensus, jobs); the
        files are not touched. `targets`: files as registered (on disk or not), folders (the images under them)
        or URLs; with `ids`, `group` and `added_before` (registered before that instant), the images any of them
        selects. A page of images per transaction; `progress` gets each page's count."""
        from windmill.removal import Removal, remove_images

        removal = Removal.of(targets, ids=ids, group=group, added_before=added_before)
        if removal.empty:
            raise WindmillError("name the images to remove: files, folders or URLs, ids or a group")
        with self.connection() as conn:
            return remove_images(conn, removal, progress=progress)

    def count_images(self, *, group: str | None = None, limit: int | None = None, after_id: int = 0) -> int:
        """How many images `submit` with this group, limit and `after_id` would send."""
        from windmill.producer import count_images

        with self.connection() as conn:
            return count_images(conn, group=group, limit=limit, after_id=after_id)

    def iter_images(self, *, group: str | None = None, after_id: int = 0, page_size: int = 1000) -> Iterator[Image]:
        """The collection's images (of a group) by ascending id, read a page at a time."""
        while True:
            with self.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                rows = cursor.execute(query("images_page"),
                                      {"group": group, "after_id": after_id, "limit": page_size}).fetchall()
            yield from (from_row(Image, row) for row in rows)
            if len(rows) < page_size:
                return
            after_id = rows[-1]["image_id"]

    def image(self, image_id: int) -> ImageRecord:
        """Everything stored about one image (what `windmill-cli show` prints); WindmillError for an unknown id."""
        from windmill.record import image_record

        with self.connection() as conn:
            return ImageRecord.from_dict(image_record(conn, image_id))

    # -- the work -----------------------------------------------------------------------------------------------

    def submit(self, services: str | Sequence[Service] = "all", *, group: str | None = None,
               limit: int | None = None, force: bool = False, broker: str | None = None, after_id: int = 0,
               page_size: int | None = None, progress: Callable[[int], None] | None = None,
               report: SubmitReport | None = None, stopping: threading.Event | None = None) -> Submission:
        """Queue one task per image × service: `services` is a selection (`all`, `primary`, `spatial_only`,
        `full_catalog`, or a comma list) or catalog services. Pairs that already have a successful answer are
        skipped unless `force`; pairs with a task in flight (queued, running or waiting for a retry) always are.
        The tasks go to `broker` (`rabbitmq` or `postgres`; by default RabbitMQ when it is
        configured, else the job table). The images after `after_id` are read `page_size` at a time
        (WINDMILL_SUBMIT_PAGE by default), each page in a short transaction of its own; `progress` is called with
        the number of images of each page sent, and `report` (filled page by page) says how far an interrupted
        submit got (its `last_image_id` is where `after_id` resumes); once `stopping` is set, it ends after the
        page it is on."""
        from windmill.producer import submit

        with self._submitting(services, broker, force, report, stopping) as (submitter, submission), \
                self.connection() as read_conn:
            submit(read_conn, submitter.conn, submitter.broker, submitter.services, group=group, limit=limit,
                   force=force, after_id=after_id, page_size=page_size or self.settings.submit_page,
                   progress=progress, report=submitter.report, stopping=stopping)
        return submission

    def follow(self, services: str | Sequence[Service] = "all", *, stopping: threading.Event,
               group: str | None = None, force: bool = False, broker: str | None = None,
               after_id: int | None = None,
               page_size: int | None = None, poll_interval_s: float | None = None,
               on_walk: Callable[[SubmitReport], None] | None = None,
               report: SubmitReport | None = None) -> Submission:
        """`submit`, then keep queueing images as they are registered (woken by their registration's
        notification, or every `poll_interval_s` at the latest) until `stopping` is set. It starts after
        `after_id`, by default where the last follow of the same services, group and broker stood (saved in
        `follow_positions`); the report's `last_image_id` is that position: every image up to it was submitted."""
        from windmill.follow import POLL_INTERVAL_S, Follower, saved_position, stream_name
        from windmill.worker.listener import JobListener

        wake = threading.Event()
        listener = JobListener(self.database.conninfo, wake, stopping, listen="listen_images")
        listening = threading.Thread(target=listener.run, name="follow-listener", daemon=True)
        listening.start()
        report = report if report is not None else SubmitReport()
        submissions: list[Submission] = []

        def follow_until_stopped() -> None:
            with self._submitting(services, broker, force, report, stopping) as (submitter, submission), \
                    self.connection() as read_conn:
                stream = stream_name(submission.services, group, "rabbitmq" if submission.rabbitmq else "postgres")
                if submissions:  # again, after the database came back: from where the last walk got
                    start = report.last_image_id
                else:
                    start = saved_position(read_conn, stream) if after_id is None else after_id
                submissions.append(submission)
                Follower(read_conn, submitter, wake, stopping, group=group,
                         page_size=page_size or self.settings.submit_page,
                         poll_interval_s=POLL_INTERVAL_S if poll_interval_s is None else poll_interval_s,
                         on_walk=on_walk, stream=stream).run(start)

        try:
            outliving_connection_loss("submit --follow", stopping, follow_until_stopped)
        finally:
            stopping.set()
            listening.join()
        return submissions[-1] if submissions else Submission(report, False, ())

    def watch(self, folder: str | Path, *, stopping: threading.Event, recursive: bool = False,
              group: str | None = None, settle_s: float | None = None,
              submit: str | Sequence[Service] | None = None, broker: str | None = None,
              on_batch: Callable[[AddReport, int], None] | None = None) -> WatchReport:
        """Register the image files that land in `folder` (with `recursive`, its sub-folders too) once each has
        stopped changing for `settle_s`, until `stopping` is set; files already there are looked at first. With
        `submit` (a selection or services) their tasks are queued too. A registered file written again is new
        content: the image of the old is removed with what was stored for it and the file registered (and queued)
        as a new image. `on_batch` hears of each batch: what was registered and how many tasks were queued."""
        from windmill.watch import SETTLE_S, FolderWatch

        report = WatchReport()

        def watch_until_stopped() -> None:
            with ExitStack() as stack:
                submitter = None
                if submit is not None:
                    submitter, _ = stack.enter_context(self._submitting(submit, broker, False, None, stopping))
                conn = stack.enter_context(self.connection())
                # Again after the database came back: the folder is looked at afresh, and what was registered
                # meanwhile is known already (registration is idempotent by path).
                FolderWatch(conn, Path(folder), stopping, recursive=recursive, group=group,
                            settle_s=SETTLE_S if settle_s is None else settle_s, submitter=submitter,
                            on_batch=on_batch, report=report).run()

        outliving_connection_loss("images watch", stopping, watch_until_stopped)
        return report

    @contextmanager
    def _submitting(self, services: str | Sequence[Service], broker: str | None, force: bool,
                    report: SubmitReport | None, stopping: threading.Event | None
                    ) -> Iterator[tuple[Submitter, Submission]]:
        """A submitter on a connection and a broker of their own, closed after the block; once `stopping` is set,
        the broker no longer waits to try again."""
        from windmill.broker.choice import open_task_broker, uses_rabbitmq
        from windmill.producer import Submitter

        selected = self.catalog.select_for_tasks(services)
        rabbitmq = uses_rabbitmq(self.settings, broker)
        report = report if report is not None else SubmitReport()
        with self.connection() as lookup_conn:
            sink = open_task_broker(self.settings, self.pool, rabbitmq=rabbitmq, stopping=stopping)
            try:
                yield (Submitter(lookup_conn, sink, selected, force=force, report=report),
                       Submission(report, rabbitmq, tuple(service.name for service in selected)))
            finally:
                sink.close()

    def progress(self, *, group: str | None = None) -> Progress:
        """How far the work on a group's images (all images without a group) got: per service answered and failed
        images, answer rows, jobs pending. It reads every answer of the group: ask now and then."""
        from windmill.progress import read_progress

        with self.connection() as conn:
            return read_progress(conn, group)

    def wait(self, *, group: str | None = None, services: Iterable[str] = (), timeout_s: float | None = None,
             poll_interval_s: float = 0.5, on_progress: Callable[[Progress], None] | None = None) -> Progress:
        """Wait until no job for the group's images is pending and every image has a final answer from each of
        `services` (name them when the tasks went through RabbitMQ: `submit(...).services`). Raises WindmillError
        after `timeout_s`. Someone must run the workers meanwhile: another process, or `workers()` here."""
        from windmill.progress import wait_for

        with self.connection() as conn:
            return wait_for(conn, group=group, services=services, timeout_s=timeout_s,
                            poll_interval_s=poll_interval_s, on_progress=on_progress)

    @contextmanager
    def worker_group(self, specs: Sequence[RoleSpec] = SINGLE_MACHINE, *, options: WorkerOptions | None = None,
                     broker: str | None = None) -> Iterator[WorkerGroup]:
        """The workers of `specs` (the pipeline, SINGLE_MACHINE, by default) in this process, not started, on a
        pool of their own that closes after the block (`run` starts them until a signal). The service tasks come
        from `broker`, as `submit` sends them: by default RabbitMQ when it is configured, else the job table."""
        from windmill.worker.group import WorkerGroup

        with self.database.pool(min_size=2, max_size=32, name="workers") as pool:
            yield WorkerGroup(self.settings, self.database, pool, self.catalog, specs, options=options, broker=broker)

    @contextmanager
    def workers(self, specs: Sequence[RoleSpec] = SINGLE_MACHINE, *, options: WorkerOptions | None = None,
                broker: str | None = None) -> Iterator[WorkerGroup]:
        """Run the workers of `specs` in this process while the block runs (the service tasks from `broker`, as
        in `worker_group`); leaving drains them."""
        with self.worker_group(specs, options=options, broker=broker) as group, group:
            yield group
