"""Named marker colours in the style of the Copic and Prismacolor systems the colors service matches against.

Our own table: names follow the systems' conventions ("<Name> (<code>)", Copic family prefixes that
decide warm/cool), hex values are ours, not the manufacturers'. The real service has 354 + 200 + 150
markers; ~110 + ~45 keep the nearest-match behaviour realistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Marker:
    code: str
    name: str
    hex: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.code})"

    @property
    def rgb(self) -> tuple[int, int, int]:
        value = int(self.hex[1:], 16)
        return (value >> 16) & 255, (value >> 8) & 255, value & 255


def _table(rows: str) -> tuple[Marker, ...]:
    markers = []
    for row in rows.strip().splitlines():
        code, name, hex_value = (part.strip() for part in row.split("|"))
        markers.append(Marker(code, name, hex_value.lower()))
    return tuple(markers)


COPIC = _table("""
R00 | Blush White | #fbe3dc
R02 | Rose Salmon | #f8c7b8
R05 | Salmon Red | #f4907e
R08 | Vermilion | #ef4a3a
R14 | Light Rouge | #f28592
R24 | Prawn | #ee6a6a
R27 | Cadmium Red | #e5302f
R29 | Lipstick Red | #d91e2b
R37 | Carmine | #c52a3c
R39 | Garnet | #b3253a
R59 | Cardinal | #9e2a36
R89 | Dark Red | #7a1f2b
YR02 | Light Orange | #fcd3ad
YR04 | Chrome Orange | #f8a24c
YR07 | Cadmium Orange | #f26f21
YR09 | Chinese Orange | #f15a22
YR15 | Pumpkin Yellow | #f8a83f
YR18 | Sanguine | #e8673c
YR24 | Pale Sepia | #e4b77a
YR27 | Tiger Lily | #d8622b
Y00 | Barium Yellow | #fdf7c9
Y02 | Canary Yellow | #fbf192
Y06 | Lemon Yellow | #fde74c
Y08 | Acid Yellow | #fde500
Y15 | Cadmium Yellow | #fed24a
Y17 | Golden Yellow | #fbc431
Y26 | Mustard | #dcc36b
Y38 | Honey | #f6c27b
YG01 | Green Bice | #e4efb8
YG03 | Yellow Green | #cfe28a
YG06 | Yellowish Green | #a5cd5a
YG09 | Lettuce Green | #7ab648
YG17 | Grass Green | #5aa33c
YG67 | Moss | #7e9a4e
YG95 | Pale Olive | #c9c08a
YG99 | Marine Green | #4e5a2d
G00 | Jade Green | #dff1e4
G02 | Spectrum Green | #b6e0c0
G05 | Emerald Green | #3fb26b
G07 | Nile Green | #5bb467
G09 | Veronese Green | #3a9a48
G17 | Forest Green | #1f8a4c
G28 | Ocean Green | #177245
G29 | Pine Tree Green | #1b5e3b
G85 | Verdigris | #9fc7b0
G99 | Olive | #5f6b32
BG01 | Aqua Blue | #c6e7e8
BG05 | Holiday Blue | #6ec9c8
BG09 | Blue Green | #00a0a0
BG18 | Teal Blue | #1e8a8a
BG49 | Duck Blue | #00737a
BG93 | Green Gray | #c5cbc1
BG96 | Bush | #7d8a7e
B000 | Pale Porcelain Blue | #e9f4fa
B01 | Mint Blue | #d0ebf7
B04 | Tahitian Blue | #72c7e8
B05 | Process Blue | #3ab2e5
B14 | Light Blue | #7cc4e3
B18 | Lapis Lazuli | #2f72b9
B24 | Sky | #87bfe6
B29 | Ultramarine | #1f5fae
B37 | Antwerp Blue | #1f4f8a
B39 | Prussian Blue | #1f3f73
B45 | Smoky Blue | #6ea4c4
B69 | Stratospheric Blue | #2a5f9e
B79 | Iris | #25407a
B99 | Agate | #2a3a52
BV00 | Mauve Shadow | #e3dbea
BV02 | Prune | #b9b1d8
BV04 | Blue Berry | #8d8ec4
BV08 | Blue Violet | #6a60ad
BV17 | Deep Reddish Blue | #5c66a8
BV29 | Slate | #2c3452
V01 | Heath | #efcfe2
V04 | Lilac | #d28fbf
V09 | Violet | #7f4a9b
V17 | Amethyst | #a58bc4
V28 | Eggplant | #6b4773
RV02 | Sugared Almond Pink | #f7c1d3
RV04 | Shock Pink | #f08db2
RV09 | Fuchsia | #d4589a
RV19 | Red Violet | #b42f7b
RV29 | Crimson | #df2e4c
RV66 | Raspberry | #b34a6a
E00 | Skin White | #fbe9dd
E02 | Fruit Pink | #fbdccd
E04 | Lipstick Natural | #e7b5a5
E07 | Light Mahogany | #c98a6b
E09 | Burnt Sienna | #d06f3b
E13 | Light Suntan | #e5b491
E18 | Copper | #a45c3a
E25 | Caribe Cocoa | #c59a6b
E29 | Burnt Umber | #6b3a27
E33 | Sand | #f2cfa5
E37 | Sepia | #c4894f
E39 | Leather | #b5693a
E44 | Clay | #b7a593
E49 | Dark Bark | #57403a
E57 | Light Walnut | #9c6e4f
E59 | Walnut | #7b5a4a
E71 | Champagne | #e6d9cc
E79 | Cashew | #4f3b31
E84 | Khaki | #b39a6d
E89 | Pecan | #7a6e5e
C-0 | Cool Gray No.0 | #eef1f3
C-1 | Cool Gray No.1 | #e1e5e8
C-3 | Cool Gray No.3 | #c3c9ce
C-5 | Cool Gray No.5 | #9aa1a8
C-7 | Cool Gray No.7 | #717981
C-8 | Cool Gray No.8 | #60676f
C-10 | Cool Gray No.10 | #33393f
N-0 | Neutral Gray No.0 | #eeeeee
N-2 | Neutral Gray No.2 | #d6d6d6
N-4 | Neutral Gray No.4 | #b8b8b8
N-6 | Neutral Gray No.6 | #8f8f8f
N-8 | Neutral Gray No.8 | #5e5e5e
N-10 | Neutral Gray No.10 | #383838
W-0 | Warm Gray No.0 | #efeee9
W-2 | Warm Gray No.2 | #dcd9d1
W-4 | Warm Gray No.4 | #bcb7ad
W-6 | Warm Gray No.6 | #958f86
W-8 | Warm Gray No.8 | #6b655e
W-10 | Warm Gray No.10 | #433e3a
T-3 | Toner Gray No.3 | #cbc8c4
T-7 | Toner Gray No.7 | #7a7773
100 | Black | #231f20
110 | Special Black | #0a0a0a
""")

PRISMACOLOR = _table("""
PM 3 | Sunburst Yellow | #fcd116
PM 5 | Cream | #f3e5ab
PM 8 | Spanish Orange | #f7a21b
PM 10 | Yellow Orange | #f9a13a
PM 14 | Orange | #f26522
PM 17 | Poppy Red | #e4352b
PM 4 | Crimson Red | #c8102e
PM 6 | Scarlet Lake | #dd2a30
PM 22 | Carmine Red | #d1213b
PM 24 | Tuscan Red | #7b3b3b
PM 31 | Process Red | #d5006d
PM 51 | Magenta | #c2185b
PM 53 | Mulberry | #a4306b
PM 55 | Violet | #6a3d9a
PM 62 | Lilac | #c8a2c8
PM 81 | Ultramarine | #3f4ea1
PM 87 | True Blue | #0073cf
PM 89 | Indigo Blue | #283a67
PM 105 | Copenhagen Blue | #3b6fb6
PM 111 | Cloud Blue | #c6dcee
PM 113 | Cool Grey 10% | #e6e8ea
PM 114 | Cool Grey 30% | #c4c8cc
PM 116 | Cool Grey 50% | #9ea3a8
PM 118 | Cool Grey 80% | #5f656b
PM 122 | Aquamarine | #7fd1c4
PM 125 | Teal Blue | #00868b
PM 131 | Parrot Green | #00a86b
PM 135 | Grass Green | #3b9b3b
PM 138 | Apple Green | #8cc63f
PM 140 | Olive Green | #708238
PM 143 | Dark Green | #1e5631
PM 147 | Sand | #dcc08e
PM 150 | Light Peach | #f8d3b5
PM 153 | Pumpkin Orange | #e8751a
PM 157 | French Grey 30% | #c9c2b8
PM 160 | French Grey 70% | #7e766c
PM 163 | French Grey 90% | #4f483f
PM 175 | Light Umber | #9c7a54
PM 178 | Dark Umber | #4e3629
PM 183 | Sepia | #704214
PM 190 | Terra Cotta | #b65c3a
PM 196 | Warm Grey 20% | #d9d4cc
PM 199 | Warm Grey 70% | #7a736a
PM 201 | Neutral Grey 10% | #e7e7e7
PM 204 | Neutral Grey 60% | #7f7f7f
PM 206 | Neutral Grey 90% | #3a3a3a
PM 98 | Black | #1c1c1c
PM 38 | White | #f7f7f5
""")

SYSTEMS: dict[str, tuple[Marker, ...]] = {"copic": COPIC, "prismacolor": PRISMACOLOR}

_COOL = ("BV", "BG", "YG", "B", "G", "C")
_WARM = ("RV", "YR", "R", "Y", "W")


def copic_temperature(code: str) -> str:
    """Warm/cool/neutral from a Copic code's family prefix (the letters before the digits)."""
    prefix = "".join(ch for ch in code if ch.isalpha())
    if prefix in _COOL:
        return "cool"
    if prefix in _WARM:
        return "warm"
    return "neutral"


# Each system's markers and their colours as one integer array: `nearest` runs for every palette entry of every
# answer computed, and a vectorised distance costs a quarter of a Python loop over 127 markers.
_COLOURS = {system: np.array([marker.rgb for marker in markers], dtype=np.int32) for system, markers in SYSTEMS.items()}


def nearest(system: str, rgb: tuple[int, int, int]) -> Marker:
    """The marker with the smallest squared RGB distance (the first of equals: argmin's rule), as the service
    matches. Exact integer arithmetic, so the same marker as comparing one by one."""
    distances = np.square(_COLOURS[system] - np.asarray(rgb, dtype=np.int32)).sum(axis=1)
    return SYSTEMS[system][int(np.argmin(distances))]


def nearest_markers(system: str, colours: list[tuple[int, int, int]]) -> list[Marker]:
    """`nearest` of each colour, in one distance table: a palette's colours are named at once."""
    if not colours:
        return []
    distances = np.square(_COLOURS[system][None, :, :] - np.asarray(colours, dtype=np.int32)[:, None, :]).sum(axis=2)
    markers = SYSTEMS[system]
    return [markers[index] for index in np.argmin(distances, axis=1).tolist()]
