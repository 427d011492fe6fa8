"""What each export format holds for an image, built from its rows without I/O: the JSONL line, the CSV rows, the
Parquet table rows and the COCO entries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from windmill.box_names import box_label
from windmill.export.source import ImageExport, latest_postprocessing
from windmill.harmony import stored_score

BOX_SERVICES = ("colors", "face", "pose")  # postprocessing of a merged box
CSV_COLUMNS = ("image_id", "file_name", "path", "url", "group", "merged_id", "label", "emoji", "x", "y", "width",
               "height", "score", "avg_confidence", "detection_count", "contributing_services", "primary_color",
               "face", "pose")


def _number(value: Any) -> float | None:
    """A finite JSON number as it is (whole pixel boxes stay whole), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def box_xywh(merged_data: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The merged box as [x, y, width, height] in pixels; None when it is unreadable."""
    bbox = merged_data.get("merged_bbox")
    if not isinstance(bbox, Mapping):
        return None
    x, y, width, height = (_number(bbox.get(key)) for key in ("x", "y", "width", "height"))
    if x is None or y is None or width is None or height is None or width <= 0 or height <= 0:
        return None
    return x, y, width, height


def box_fields(merged_data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every format shows of a merged box."""
    return {
        "label": box_label(merged_data),
        "emoji": str(merged_data.get("emoji") or ""),
        "bbox": list(box_xywh(merged_data) or ()),
        "score": stored_score(merged_data),  # how sure Windmill is of the box: what ranks it
        "avg_confidence": _number(merged_data.get("avg_confidence")),
        "detection_count": merged_data.get("detection_count"),
        "contributing_services": [str(s) for s in merged_data.get("contributing_services") or []],
    }


def _outcome(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"status": row["status"], "error": row.get("error_message"), "data": row.get("data")}


def image_fields(item: ImageExport) -> dict[str, Any]:
    image = item.image
    size = item.size()
    return {
        "image_id": item.image_id,
        "file_name": image["image_filename"],
        "path": image.get("image_path"),
        "url": image.get("image_url"),
        "group": image.get("image_group"),
        "created": image.get("image_created"),
        "width": size[0] if size else None,
        "height": size[1] if size else None,
    }


def top_emoji(consensus_data: Mapping[str, Any] | None) -> list[str]:
    """The consensus' emoji, best first."""
    votes = (consensus_data or {}).get("votes") or {}
    ranked = votes.get("consensus") if isinstance(votes, Mapping) else None
    return [str(entry["emoji"]) for entry in ranked or [] if isinstance(entry, Mapping) and entry.get("emoji")]


# -- JSON Lines ------------------------------------------------------------------------------------------------


def jsonl_line(item: ImageExport) -> dict[str, Any]:
    """One image: its file, every service's latest answer, its merged boxes with their colors/face/pose, its caption
    scores and its consensus."""
    per_box, whole_image = latest_postprocessing(item.postprocessing)
    answers = {row["service"]: {
        "status": row["status"], "error": row["error_message"], "result_id": row["result_id"],
        "created": row["result_created"], "processing_time": row["processing_time"],
        "data": row["data"]} for row in item.answers}
    boxes = []
    for row in item.boxes:
        post = per_box.get(row["merged_id"], {})
        boxes.append({"merged_id": row["merged_id"], **box_fields(row["merged_data"]),
                      **{service: _outcome(post.get(service)) for service in BOX_SERVICES},
                      "merged_data": row["merged_data"]})
    consensus = item.consensus
    return {
        **image_fields(item),
        "answers": answers,
        "boxes": boxes,
        "caption_scores": {service: _outcome(row) for service, row in sorted(whole_image.items())},
        "consensus": None if consensus is None else {
            "top_emoji": top_emoji(consensus["consensus_data"]), "created": consensus["consensus_created"],
            "data": consensus["consensus_data"]},
    }


def dumps(value: Any) -> bytes:
    """JSON as the export writes it: instants in ISO 8601 (orjson's own), numerics as numbers. Row values are
    written as they are: walking each answer's JSON to convert it would cost more than reading it."""
    return orjson.dumps(value, default=_plain, option=orjson.OPT_NON_STR_KEYS)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


# -- CSV -------------------------------------------------------------------------------------------------------------


# A spreadsheet runs a cell that begins so as a formula (`=HYPERLINK(…)`, `=cmd|…`): a label an ML service gave, or
# a file name someone chose, would be one (OWASP's "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell of the CSV export: as it is, or after an apostrophe when it would begin a formula (a spreadsheet
    shows the text, and hides the apostrophe)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_rows(item: ImageExport) -> list[list[Any]]:
    """One row per merged box (CSV_COLUMNS); text cells through csv_text."""
    image = image_fields(item)
    per_box, _ = latest_postprocessing(item.postprocessing)
    rows = []
    for row in item.boxes:
        fields = box_fields(row["merged_data"])
        x, y, width, height = fields["bbox"] or (None, None, None, None)
        post = per_box.get(row["merged_id"], {})
        text = [csv_text(str(value)) for value in (
            image["file_name"], image["path"] or "", image["url"] or "", image["group"] or "", fields["label"],
            fields["emoji"], ";".join(fields["contributing_services"]), primary_color(post.get("colors")),
            (post.get("face") or {}).get("status", ""), (post.get("pose") or {}).get("status", ""))]
        file_name, path, url, group, label, emoji, services, colour, face, pose = text
        rows.append([image["image_id"], file_name, path, url, group, row["merged_id"], label, emoji, x, y, width,
                     height, fields["score"], fields["avg_confidence"], fields["detection_count"], services, colour,
                     face, pose])
    return rows


def primary_color(colors: Mapping[str, Any] | None) -> str:
    """The dominant colour (hex) the colors service found in a box, "" when there is none."""
    if colors is None or colors.get("status") != "success":
        return ""
    predictions = (colors.get("data") or {}).get("predictions") or []
    primary = predictions[0].get("primary") if predictions and isinstance(predictions[0], Mapping) else None
    return str(primary.get("hex") or "") if isinstance(primary, Mapping) else ""


# -- Parquet tables ------------------------------------------------------------------------------------------------


def table_rows(item: ImageExport) -> dict[str, list[dict[str, Any]]]:
    """The image's rows of each Parquet table; jsonb columns as JSON text."""
    image = {**image_fields(item), "created": item.image.get("image_created")}
    answers = [{"result_id": row["result_id"], "image_id": item.image_id, "service": row["service"],
                "status": row["status"], "error_message": row["error_message"],
                "processing_time": row["processing_time"], "created": row["result_created"],
                "worker_id": row["worker_id"], "data": _json_text(row["data"])} for row in item.answers]
    boxes = []
    for row in item.boxes:
        fields = box_fields(row["merged_data"])
        x, y, width, height = fields.pop("bbox") or (None, None, None, None)
        boxes.append({"merged_id": row["merged_id"], "image_id": item.image_id, **fields, "x": x, "y": y,
                      "width": width, "height": height, "created": row["created"],
                      "merged_data": _json_text(row["merged_data"])})
    postprocessing = [{"postprocessing_id": row["postprocessing_id"], "image_id": item.image_id,
                       "merged_box_id": row["merged_box_id"], "service": row["service"], "status": row["status"],
                       "error_message": row["error_message"], "processing_time": row["processing_time"],
                       "created": row["result_created"], "data": _json_text(row["data"])}
                      for row in item.postprocessing]
    consensus = []
    if item.consensus is not None:
        emoji = top_emoji(item.consensus["consensus_data"])
        consensus.append({"image_id": item.image_id, "top_emoji": emoji[0] if emoji else None, "emoji": emoji,
                          "created": item.consensus["consensus_created"],
                          "consensus_data": _json_text(item.consensus["consensus_data"])})
    return {"images": [image], "answers": answers, "boxes": boxes, "postprocessing": postprocessing,
            "consensus": consensus}


def _json_text(value: Any) -> str:
    return dumps(value).decode()


# -- COCO ------------------------------------------------------------------------------------------------------------


def coco_image(item: ImageExport) -> dict[str, Any] | None:
    """The image entry, None while its size is unknown (COCO readers need it: FiftyOne's importer fails without
    it). Its file as registered, unique in the collection: a path (the images of several folders, or two files of
    one name, stay apart), or an image known only by its URL the URL (`http://h/a/ascent.jpg` and
    `http://h/b/ascent.jpg`: FiftyOne's importer indexes images by file_name, and gave two of one bare name one
    image's boxes)."""
    fields = image_fields(item)
    if fields["width"] is None:
        return None
    entry: dict[str, Any] = {"id": item.image_id, "file_name": fields["path"] or fields["url"] or fields["file_name"],
                             "width": fields["width"], "height": fields["height"]}
    if fields["url"]:
        entry["coco_url"] = fields["url"]
    entry.update({key: fields[key] for key in ("path", "group") if fields[key]})
    return entry


def coco_box(image_id: int, merged_id: int, merged_data: Mapping[str, Any], category_id: int
             ) -> dict[str, Any] | None:
    """A merged box as a COCO annotation with its score and the services that agree; None when unreadable."""
    bbox = box_xywh(merged_data)
    if bbox is None:
        return None
    fields = box_fields(merged_data)
    return {"id": merged_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "area": bbox[2] * bbox[3], "iscrowd": 0, "score": fields["score"], "emoji": fields["emoji"],
            "detection_count": fields["detection_count"], "contributing_services": fields["contributing_services"]}
