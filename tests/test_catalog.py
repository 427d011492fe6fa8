"""The service catalog: the seed's format, the reference ports, selections and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from windmill.catalog import Catalog, load_catalog
from windmill.commands import main
from windmill.errors import CatalogError

PRIMARY = ["blip", "clip", "colors", "detectron2", "xception", "metadata", "ocr", "nsfw2", "ollama", "rtdetr",
           "yolov8"]
REFERENCE_PORTS = {"blip": 7777, "clip": 7788, "colors": 7770, "detectron2": 7771, "face": 7772, "xception": 7799,
                   "metadata": 7781, "ocr": 7775, "nsfw2": 7774, "ollama": 7782, "pose": 7786, "rtdetr": 7780,
                   "yolov8": 7773, "caption_score": 7778}


def test_bundled_catalog_has_the_fourteen_services_on_reference_ports(catalog: Catalog) -> None:
    assert {service.name: service.port for service in catalog.services} == REFERENCE_PORTS


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("all", PRIMARY),
        ("primary", PRIMARY),
        ("spatial_only", ["face", "pose"]),
        ("full_catalog", [*PRIMARY[:4], "face", *PRIMARY[4:9], "pose", *PRIMARY[9:], "caption_score"]),
        ("yolov8", ["yolov8"]),
        (" yolov8 , blip,yolov8", ["yolov8", "blip"]),
    ],
)
def test_selection(catalog: Catalog, selection: str, expected: list[str]) -> None:
    assert [service.name for service in catalog.select(selection)] == expected


def test_unknown_service_lists_the_valid_ones(catalog: Catalog) -> None:
    with pytest.raises(CatalogError) as error:
        catalog.select("yolov8,yolo9")
    assert "'yolo9'" in str(error.value)
    assert "valid services: blip, clip" in str(error.value)


def test_detectors_are_the_services_whose_type_lists_spatial(catalog: Catalog) -> None:
    assert sorted(service.name for service in catalog.detectors) == ["clip", "detectron2", "rtdetr", "xception",
                                                                       "yolov8"]
    assert catalog["clip"].evidence_type == "spatial"
    assert catalog["ollama"].timeout_s > catalog["blip"].timeout_s


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ([], '"services" object'),
        ({"services": {"x": {"host": "h", "port": 1, "endpoint": "/"}}}, "'category'"),
        ({"services": {"x": {"host": "h", "port": "p", "endpoint": "/", "category": "primary"}}}, "invalid field"),
        ({"services": {"x": {"host": "h", "port": 1, "endpoint": "/", "category": "odd"}}}, "category 'odd'"),
        *[({"services": {"x": {"host": "h", "port": 1, "endpoint": "/", "category": "primary",
                               "max_concurrency": bad}}}, f"max_concurrency {bad!r}; expected a whole number")
          for bad in (0, -2, 1.5, "1", True)],
        ({"services": {"x": {"host": "h", "port": 1, "endpoint": "/", "category": "primary",
                             "fleet_max_concurrency": 0}}}, "fleet_max_concurrency 0; expected a whole number"),
        # Once taken as they were: every call then failed at once (0, -1), or none ever timed out (NaN).
        *[({"services": {"x": {"host": "h", "port": 1, "endpoint": "/", "category": "primary",
                               "timeout_s": bad}}}, rf"timeout_s {bad!r}; expected the seconds a call may take")
          for bad in (0, -1, "nan", "inf")],
    ],
)
def test_malformed_catalog_is_a_clear_error(tmp_path: Path, document: object, fragment: str) -> None:
    path = tmp_path / "service_config.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CatalogError, match=fragment):
        load_catalog(path)


def test_list_services_prints_by_category(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["list-services"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.index("PRIMARY") < lines.index("SPATIAL_ONLY") < lines.index("POSTPROCESSING")
    assert any(line.split()[:2] == ["yolov8", "localhost:7773"] for line in lines)
    same = CliRunner().invoke(main, ["submit", "--list-services"])
    assert same.output == result.output


def test_list_services_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["list-services", "--json"])
    assert [entry["name"] for entry in json.loads(result.output)][:3] == ["blip", "clip", "colors"]


def test_pose_ships_with_one_request_at_a_time(catalog: Catalog) -> None:
    # The real pose service shares one MediaPipe graph across its threads without a lock (contract §2.7).
    assert (catalog["pose"].max_concurrency, catalog["pose"].fleet_max_concurrency) == (1, 1)
    assert catalog["yolov8"].max_concurrency is None and catalog["yolov8"].fleet_max_concurrency is None


def test_a_port_offset_that_takes_a_port_out_of_range_is_one_sentence() -> None:
    # WINDMILL_PORT_OFFSET=-99999 was taken, and every call then failed as "the host name does not resolve".
    catalog = load_catalog()
    with pytest.raises(CatalogError, match=r"^service \w+'s port \d+ \+ WINDMILL_PORT_OFFSET -99999 is -\d+, not a "
                                           r"port \(1–65535\)$"):
        catalog.with_port_offset(-99999)
    assert catalog.with_port_offset(-570)["yolov8"].port == catalog["yolov8"].port - 570
