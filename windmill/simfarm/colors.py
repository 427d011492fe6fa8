"""The colors service (contract §3.13), computed for real: a quantized palette named by the nearest marker."""

from __future__ import annotations

import colorsys
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, cast

from PIL import Image

from windmill.simfarm.palettes import copic_temperature, nearest_markers

MAX_COLORS = 8
REGION_GRIDS = {4: 2, 9: 3, 16: 4}
# A palette is computed on at most this many pixels (the primary marker at 64×64 was a 96×96 thumbnail's for 2 in 3
# images, and the same colour family for 4 in 5: the bundled samples and 100 benchmark scenes).
THUMBNAIL = (64, 64)
# The colour a caption names needs only the largest group: at this size the word is the one a 96×96 thumbnail
# gives for every bundled sample and each of 100 benchmark scenes.
DOMINANT_THUMBNAIL = (32, 32)

RGB = tuple[int, int, int]


def color_groups(image: Image.Image, size: tuple[int, int] = THUMBNAIL) -> list[tuple[int, RGB]]:
    """Up to eight colour groups as (pixel count, mean colour), most frequent first (what Haishoku yields)."""
    small = image.convert("RGB")
    small.thumbnail(size, Image.Resampling.BILINEAR)
    # Pillow's fast octree in one C call: 0.16 ms at 64×64 where its median cut took 1.15 (a quarter of the
    # stand-in's CPU per image, as every crop of a box gets a palette). Its groups weigh the dominant colours more,
    # as the real service's grouping does. (A median cut in numpy was cheaper alone but not in the server: its
    # hundred-odd array calls each let the GIL go, and the thread switches cost more than it saved.)
    quantized = small.quantize(colors=MAX_COLORS, method=Image.Quantize.FASTOCTREE)
    palette = quantized.getpalette() or []
    counts = quantized.getcolors(MAX_COLORS) or []
    # A palette image's colours are palette indexes.
    groups = [(count, (palette[3 * i], palette[3 * i + 1], palette[3 * i + 2]))
              for count, i in cast(list[tuple[int, int]], counts)]
    return sorted(groups, key=lambda group: (-group[0], group[1]))


Names = tuple[dict[str, str], list[str], str]  # system → marker label, the matched hexes, the temperature


def _names(colours: Iterable[RGB], systems: Sequence[str]) -> dict[RGB, Names]:
    """Each colour's marker per system, the matched hexes in system order, and the temperature (Copic only); the
    markers of all colours found at once (nearest_markers)."""
    distinct = list(dict.fromkeys(colours))
    matches = {system: nearest_markers(system, distinct) for system in systems}
    named: dict[RGB, Names] = {}
    for position, rgb in enumerate(distinct):
        markers = {system: matches[system][position] for system in systems}
        temperature = copic_temperature(markers["copic"].code) if "copic" in markers else "neutral"
        named[rgb] = ({system: marker.label for system, marker in markers.items()},
                      [marker.hex for marker in markers.values()], temperature)
    return named


def _primary(names: Names) -> dict[str, Any]:
    labels, hexes, temperature = names
    return {"hex": hexes[-1], "temperature": temperature, **labels}  # primary: the last system's hex


def _entry(names: Names) -> dict[str, Any]:
    labels, hexes, temperature = names
    return {"hex": hexes[0], "temperature": temperature, **labels}  # palette: the first system's hex


def _palette_temperature(colors: list[dict[str, Any]]) -> str:
    cool = sum(1 for color in colors if color["temperature"] == "cool")
    warm = sum(1 for color in colors if color["temperature"] == "warm")
    return "cool" if cool > warm else "warm" if warm > cool else "neutral"


def _dedupe(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for entry in entries:
        seen.setdefault(entry["hex"], entry)
    return list(seen.values())


def analyze(image: Image.Image, systems: Sequence[str], regions: int | None = None) -> tuple[dict[str, Any], dict]:
    """The prediction, and what multi-region mode adds to `metadata`."""
    if regions in REGION_GRIDS:
        return _analyze_regions(image, systems, REGION_GRIDS[regions], regions)
    groups = color_groups(image)
    named = _names((rgb for _, rgb in groups), systems)
    colors = _dedupe([_entry(named[rgb]) for _, rgb in groups])[:MAX_COLORS]
    prediction = {
        "primary": _primary(named[groups[0][1]]),
        "palette": {"temperature": _palette_temperature(colors), "colors": colors},
    }
    return prediction, {}


def _analyze_regions(image: Image.Image, systems: Sequence[str], grid: int, regions: int) -> tuple[dict, dict]:
    width, height = image.size
    weights: Counter[str] = Counter()
    entries: dict[str, dict[str, Any]] = {}
    dominants: list[tuple[str, RGB]] = []
    cells = [color_groups(image.crop((column * width // grid, row * height // grid,
                                      max((column + 1) * width // grid, column * width // grid + 1),
                                      max((row + 1) * height // grid, row * height // grid + 1))))
             for row in range(grid) for column in range(grid)]
    named = _names((rgb for groups in cells for _, rgb in groups), systems)
    for groups in cells:
        for count, rgb in groups:
            entry = _entry(named[rgb])
            entries.setdefault(entry["hex"], entry)
            weights[entry["hex"]] += count
        dominants.append((_entry(named[groups[0][1]])["hex"], groups[0][1]))
    ranked = sorted(entries, key=lambda hex_value: (-weights[hex_value], hex_value))
    colors = [entries[hex_value] for hex_value in ranked[:MAX_COLORS]]
    common_hex = Counter(hex_value for hex_value, _ in dominants).most_common(1)[0][0]
    primary_rgb = next(rgb for hex_value, rgb in dominants if hex_value == common_hex)
    prediction = {
        "primary": _primary(named[primary_rgb]),
        "palette": {"temperature": _palette_temperature(colors), "colors": colors},
    }
    return prediction, {"regions_analyzed": regions, "unique_colors_found": len(entries)}


def dominant_family(image: Image.Image) -> str:
    """The colour word of the image's largest colour group."""
    return color_family(color_groups(image, DOMINANT_THUMBNAIL)[0][1])


def color_family(rgb: RGB) -> str:
    """A plain colour word for a pixel colour, for captions of images nobody annotated."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255 for channel in rgb))
    if value < 0.18:
        return "black"
    if saturation < 0.15:
        return "white" if value > 0.85 else "gray"
    degrees = hue * 360
    if degrees < 15 or degrees >= 345:
        family = "red"
    elif degrees < 40:
        family = "orange"
    elif degrees < 70:
        family = "yellow"
    elif degrees < 170:
        family = "green"
    elif degrees < 200:
        family = "teal"
    elif degrees < 260:
        family = "blue"
    elif degrees < 300:
        family = "purple"
    else:
        family = "pink"
    if family in ("red", "orange") and value < 0.6:
        return "brown"
    return family
