"""Distinct synthetic scenes for the pipeline benchmarks: each image a new composition of 3–4 objects cut from the
bundled annotated photographs, scaled and placed at random on a noisy background, with a sidecar the stand-in
reads (`farm serve --annotations DIR`). No two images are copies, so neither the stand-in nor anything in
Windmill can profit from a repeated image, and every image has several boxes to merge, postprocess and vote on.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from windmill.simfarm.annotations import SIDECAR_SUFFIX, load_sidecar
from windmill.simfarm.server import SAMPLES_DIR

CANVAS = (640, 480)
GRID = (2, 2)  # one object per cell keeps objects apart, as in a real photograph with several subjects
OBJECTS_PER_SCENE = (3, 4)


@dataclass(frozen=True)
class Cutout:
    image: Image.Image
    annotation: dict  # the sidecar entry, its boxes relative to the cutout
    caption_word: str


def _cutouts() -> list[Cutout]:
    """Every object a COCO detector can see in the bundled samples, cut out with its annotation."""
    found = []
    for sidecar_path in sorted(SAMPLES_DIR.glob("*" + SIDECAR_SUFFIX)):
        sidecar = load_sidecar(sidecar_path)
        with Image.open(sidecar_path.with_name(sidecar_path.name.removesuffix(SIDECAR_SUFFIX) + ".jpg")) as photo:
            rgb = photo.convert("RGB")
        for obj in sidecar.objects:
            if obj.coco is None or obj.bbox[2] < 32 or obj.bbox[3] < 32:
                continue
            x, y, w, h = obj.bbox
            entry = {"label": obj.label, "emoji": obj.emoji, "coco": obj.coco, "clip": obj.clip,
                     "imagenet": obj.imagenet, "bbox": [0, 0, w, h]}
            if obj.face is not None:
                fx, fy, fw, fh = obj.face
                entry["face"] = [fx - x, fy - y, fw, fh]
            found.append(Cutout(rgb.crop((x, y, x + w, y + h)), entry, obj.label))
    return found


def _scaled(box: list[int], scale: float, dx: int, dy: int) -> list[int]:
    return [round(box[0] * scale) + dx, round(box[1] * scale) + dy, max(1, round(box[2] * scale)),
            max(1, round(box[3] * scale))]


def _scene(cutouts: list[Cutout], rng: random.Random) -> tuple[Image.Image, dict]:
    width, height = CANVAS
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    canvas = Image.fromarray(noise).resize(CANVAS, Image.Resampling.BILINEAR)
    cell_w, cell_h = width // GRID[0], height // GRID[1]
    cells = [(column, row) for column in range(GRID[0]) for row in range(GRID[1])]
    objects, words = [], []
    for column, row in rng.sample(cells, rng.randint(*OBJECTS_PER_SCENE)):
        cutout = rng.choice(cutouts)
        cw, ch = cutout.image.size
        scale = min(cell_w / cw, cell_h / ch) * rng.uniform(0.55, 0.95)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        dx = column * cell_w + rng.randint(0, cell_w - size[0])
        dy = row * cell_h + rng.randint(0, cell_h - size[1])
        canvas.paste(cutout.image.resize(size, Image.Resampling.BILINEAR), (dx, dy))
        entry = dict(cutout.annotation, bbox=_scaled(cutout.annotation["bbox"], scale, dx, dy))
        if "face" in entry:
            entry["face"] = _scaled(entry["face"], scale, dx, dy)
        objects.append(entry)
        words.append(cutout.caption_word)
    sentence = ", ".join(words[:-1]) + f" and {words[-1]}"
    sidecar = {"size": [width, height], "objects": objects,
               "captions": {"blip": f"a {sentence}", "ollama": f"A picture with a {sentence}."},
               "labels": sorted({entry["clip"] for entry in objects}), "nsfw": False}
    return canvas, sidecar


def write_scenes(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """`count` distinct scene images (JPEG) with their sidecars in `folder`; the same seed gives the same scenes."""
    rng = random.Random(seed)
    cutouts = _cutouts()
    paths = []
    for number in range(count):
        image, sidecar = _scene(cutouts, rng)
        path = folder / f"scene_{number:06d}.jpg"
        image.save(path, quality=85)
        (folder / f"scene_{number:06d}{SIDECAR_SUFFIX}").write_text(json.dumps(dict(sidecar, image=path.name)))
        paths.append(path)
    return paths
