"""Machines with different catalogs against one database: every worker's start copies its catalog into the
`services` table, which the triggers read (who is a detector, who votes, whose captions are scored). A machine with
an older or edited copy changed that silently, and the pipeline of every machine followed whichever worker started
last. Such a change is now said, naming the service and what changed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from windmill.catalog import Catalog
from windmill.db.schema import ensure_schema


@pytest.fixture
def synced_back(conn: psycopg.Connection, catalog: Catalog) -> Iterator[None]:
    yield
    ensure_schema(conn, catalog, may_migrate=False)  # the session's database keeps the shipped catalog


def _edited(catalog: Catalog, name: str, **changes: Any) -> Catalog:
    return Catalog(tuple(replace(s, **changes) if s.name == name else s for s in catalog.services))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno >= logging.WARNING and record.name.startswith("windmill")]


def test_a_catalog_that_changes_what_the_database_holds_is_said(
        conn: psycopg.Connection, catalog: Catalog, synced_back: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ensure_schema(conn, _edited(catalog, "yolov8", service_type=("other",)), may_migrate=False)
    assert _warnings(caplog) == [
        "the catalog here changed what the database holds for yolov8 (service_type spatial → other); the triggers "
        "of every machine follow it from now on, and a worker that starts with another catalog changes it back: "
        "give every machine the same catalog (deploy/README.md)"]
    assert not conn.execute("SELECT is_detector FROM services WHERE name = 'yolov8'").fetchone()[0]


def test_the_same_catalog_again_or_another_host_says_nothing(
        conn: psycopg.Connection, catalog: Catalog, synced_back: None, caplog: pytest.LogCaptureFixture) -> None:
    # Each Pi's service worker may call its own model at localhost: a host or port of its own is no drift.
    caplog.set_level(logging.WARNING)
    ensure_schema(conn, catalog, may_migrate=False)
    ensure_schema(conn, _edited(catalog, "yolov8", host="pi-yolo.local", port=9000), may_migrate=False)
    assert _warnings(caplog) == []
