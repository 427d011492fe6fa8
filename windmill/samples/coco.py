"""Annotation sidecars → a COCO annotations document, so `windmill-cli eval --coco` can score the pipeline
on the samples (or on any directory of sidecars) against the same truth the stand-in farm perturbs.

    python -m windmill.samples.coco [DIRECTORY] [-o annotations.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from windmill.coco_classes import COCO_CATEGORY_IDS
from windmill.simfarm.annotations import IMAGE_SUFFIXES, SIDECAR_SUFFIX, load_sidecar, sidecar_path_for

SAMPLES = Path(__file__).resolve().parent


def samples_to_coco(directory: Path = SAMPLES) -> dict[str, Any]:
    """Every image of `directory` with a sidecar, and its objects that a COCO detector can name.

    An object's class is its sidecar `coco` field (by default its label, when that is a COCO class);
    objects no COCO detector can see are left out, as detectors are not expected to find them.
    Boxes follow the image's real size (a sidecar written for another size is scaled).
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_path in _annotated_images(Path(directory)):
        with Image.open(image_path) as opened:
            width, height = opened.size
        sidecar = load_sidecar(sidecar_path_for(image_path)).fitted(width, height)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": image_path.name, "width": width, "height": height})
        for obj in sidecar.objects:
            if obj.coco is None:
                continue
            x, y, w, h = obj.bbox
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": COCO_CATEGORY_IDS[obj.coco], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    return {
        "info": {"description": f"ground truth from the .boxes.json sidecars of {Path(directory).name}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": ""} for name, cid in COCO_CATEGORY_IDS.items()],
    }


def _annotated_images(directory: Path) -> list[Path]:
    """Images with a sidecar beside them, by name (one image per sidecar: the first suffix found)."""
    found = []
    for sidecar in sorted(directory.glob(f"*{SIDECAR_SUFFIX}")):
        stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
        for suffix in IMAGE_SUFFIXES:
            candidates = [sidecar.with_name(stem + s) for s in (suffix, suffix.upper())]
            image = next((c for c in candidates if c.is_file()), None)
            if image is not None:
                found.append(image)
                break
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a COCO annotations file from .boxes.json sidecars.")
    parser.add_argument("directory", nargs="?", type=Path, default=SAMPLES, help="default: the bundled samples")
    parser.add_argument("-o", "--output", type=Path, help="default: standard output")
    args = parser.parse_args(argv)
    text = json.dumps(samples_to_coco(args.directory), indent=1, ensure_ascii=False)
    if args.output is None:
        sys.stdout.write(text + "\n")
    else:
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
