"""Words the stand-in speaks: a word→emoji map in the central API's style, the COCO classes, stopwords.

The real services fetch ~4,600 mappings from the central API; a few hundred common words are enough
for simulated captions and labels. Keys follow the same conventions: lower case, `snake_case` for
multi-word expressions, and a handful of keys that keep their space ("teddy bear", "stop sign"), which
is why yolov8 and rtdetr (verbatim lookup) find an emoji for those labels but not for "dining table".
"""

from __future__ import annotations

import re

from windmill.coco_classes import COCO_CLASSES as COCO_CLASSES  # where the stand-in and its tests look for them

PERSON = "🧑"

WORD_EMOJI: dict[str, str] = {
    # people
    "person": "🧑", "man": "🧑", "woman": "👩", "boy": "🧒", "girl": "🧒", "child": "🧒", "kid": "🧒",
    "baby": "👶", "people": "🧑", "player": "🧑", "photographer": "🧑", "astronaut": "🧑\u200d🚀",
    "face": "🙂", "smile": "😊", "smiling": "😊", "hand": "✋", "crowd": "👥",
    # animals
    "animal": "🐾", "cat": "🐱", "kitten": "🐱", "tabby": "🐱", "tabby_cat": "🐱", "tiger_cat": "🐱",
    "egyptian_cat": "🐱", "dog": "🐶", "puppy": "🐶", "golden_retriever": "🐶", "horse": "🐴", "bird": "🐦",
    "sheep": "🐑", "cow": "🐄", "elephant": "🐘", "bear": "🐻", "zebra": "🦓", "giraffe": "🦒",
    "raccoon": "🦝", "fish": "🐟", "duck": "🦆", "rabbit": "🐰", "lion": "🦁", "tiger": "🐯",
    "monkey": "🐒", "pig": "🐷", "chicken": "🐔", "owl": "🦉", "butterfly": "🦋", "bee": "🐝",
    "snake": "🐍", "turtle": "🐢", "frog": "🐸", "whale": "🐋", "dolphin": "🐬", "squirrel": "🐿️",
    "deer": "🦌", "goat": "🐐", "camel": "🐫", "penguin": "🐧", "eagle": "🦅", "fox": "🦊", "wolf": "🐺",
    # vehicles and transport
    "car": "🚗", "bicycle": "🚲", "bike": "🚲", "motorcycle": "🏍️", "airplane": "✈️", "plane": "✈️",
    "bus": "🚌", "train": "🚆", "truck": "🚚", "boat": "⛵", "ship": "🚢", "rocket": "🚀",
    "space_shuttle": "🚀", "shuttle": "🚀", "spaceship": "🚀", "missile": "🚀", "launch": "🚀",
    "launch_pad": "🚀", "helicopter": "🚁", "taxi": "🚕", "tractor": "🚜", "scooter": "🛴",
    "skateboard": "🛹", "van": "🚐", "satellite": "🛰️",
    # street and buildings
    "traffic light": "🚦", "traffic_light": "🚦", "fire hydrant": "🧯", "fire_hydrant": "🧯",
    "stop sign": "🛑", "stop_sign": "🛑", "parking_meter": "🅿️", "bench": "🪑", "road": "🛣️",
    "street": "🛣️", "bridge": "🌉", "building": "🏢", "house": "🏠", "tower": "🗼", "city": "🏙️",
    "stairs": "🪜", "staircase": "🪜", "stairway": "🪜", "steps": "🪜", "ladder": "🪜", "railing": "🚧",
    "fence": "🚧", "flag": "🏳️", "american_flag": "🇺🇸", "dome": "🏛️", "office": "🏢", "school": "🏫",
    "hospital": "🏥", "church": "⛪", "castle": "🏰", "stadium": "🏟️", "airport": "✈️", "station": "🚉",
    "factory": "🏭", "tent": "⛺", "campus": "🏫", "window": "🪟", "door": "🚪",
    # food and drink
    "cup": "☕", "coffee": "☕", "coffee_cup": "☕", "espresso": "☕", "mug": "☕", "coffee_mug": "☕",
    "latte": "☕", "cappuccino": "☕", "cafe": "☕", "tea": "🍵", "saucer": "🍽️", "plate": "🍽️",
    "spoon": "🥄", "teaspoon": "🥄", "fork": "🍴", "knife": "🔪", "bowl": "🥣", "bottle": "🍾",
    "wine": "🍷", "wine_glass": "🍷", "glass": "🥛", "beer": "🍺", "banana": "🍌", "apple": "🍎",
    "sandwich": "🥪", "orange": "🍊", "broccoli": "🥦", "carrot": "🥕", "hot dog": "🌭", "hot_dog": "🌭",
    "pizza": "🍕", "donut": "🍩", "cake": "🎂", "bread": "🍞", "cheese": "🧀", "egg": "🥚", "milk": "🥛",
    "cookie": "🍪", "chocolate": "🍫", "fruit": "🍎", "food": "🍽️", "meal": "🍽️", "dinner": "🍽️",
    "breakfast": "🍳", "salad": "🥗", "fresh": "🥗", "soup": "🍲", "rice": "🍚", "burger": "🍔",
    "fries": "🍟", "lemon": "🍋", "grape": "🍇", "strawberry": "🍓", "cherry": "🍒", "peach": "🍑",
    "watermelon": "🍉", "pineapple": "🍍", "tomato": "🍅", "potato": "🥔", "corn": "🌽",
    "mushroom": "🍄", "pepper": "🌶️", "honey": "🍯", "candy": "🍬", "ice_cream": "🍦", "drink": "🥤",
    "juice": "🧃", "dining_table": "🍽️", "table": "🍽️",
    # home and furniture
    "chair": "🪑", "couch": "🪑", "studio_couch": "🪑", "sofa": "🛋️", "living_room": "🛋️", "bed": "🛏️",
    "bedroom": "🛏️", "toilet": "🚽", "bathroom": "🛁", "tv": "📺", "television": "📺", "laptop": "💻",
    "computer": "💻", "keyboard": "⌨️", "computer_mouse": "🖱️", "mouse": "🐭", "cell phone": "📱",
    "cell_phone": "📱", "phone": "📱", "sink": "🚰", "book": "📚", "clock": "🕰️", "watch": "⌚",
    "vase": "🏺", "scissors": "✂️", "teddy bear": "🧸", "teddy_bear": "🧸", "toothbrush": "🪥",
    "lamp": "💡", "lampshade": "💡", "light": "💡", "candle": "🕯️", "mirror": "🪞", "kitchen": "🍳",
    "restaurant": "🍽️", "potted_plant": "🪴", "hair_drier": "💨",
    # things people carry and wear
    "umbrella": "☂️", "backpack": "🎒", "bag": "👜", "handbag": "👜", "purse": "👛", "suitcase": "🧳",
    "tie": "👔", "shirt": "👕", "jersey": "👕", "jacket": "🧥", "coat": "🧥", "trench_coat": "🧥",
    "sweatshirt": "🧥", "jeans": "👖", "jean": "👖", "dress": "👗", "shoe": "👟", "boot": "👢",
    "hat": "🎩", "cap": "🧢", "helmet": "⛑️", "crash_helmet": "⛑️", "glasses": "👓", "sunglasses": "🕶️",
    "glove": "🧤", "scarf": "🧣", "sock": "🧦", "ring": "💍", "crown": "👑", "suit": "👔",
    "space_suit": "🧑\u200d🚀", "spacesuit": "🧑\u200d🚀", "uniform": "👔", "badge": "📛", "patch": "📛",
    # sport and play
    "frisbee": "🥏", "skis": "🎿", "ski": "🎿", "snowboard": "🏂", "sports_ball": "⚽", "ball": "⚽",
    "soccer": "⚽", "football": "🏈", "basketball": "🏀", "baseball": "⚾", "kite": "🪁",
    "baseball_bat": "🏏", "baseball_glove": "🧤", "surfboard": "🏄", "tennis": "🎾",
    "tennis_racket": "🎾", "racket": "🎾", "golf": "⛳", "toy": "🧸", "balloon": "🎈", "gift": "🎁",
    # nature and weather
    "tree": "🌳", "plant": "🪴", "flower": "🌸", "grass": "🌱", "lawn": "🌱", "leaf": "🍃", "leaves": "🍂",
    "forest": "🌲", "wood": "🌲", "wooden": "🌲", "mountain": "⛰️", "hill": "⛰️", "rock": "🪨",
    "stone": "🪨", "beach": "🏖️", "sea": "🌊", "ocean": "🌊", "wave": "🌊", "lake": "🏞️", "river": "🏞️",
    "park": "🏞️", "field": "🌾", "desert": "🏜️", "island": "🏝️", "volcano": "🌋", "sky": "☁️",
    "cloud": "☁️", "sun": "☀️", "sunset": "🌅", "sunrise": "🌅", "moon": "🌙", "star": "⭐",
    "night": "🌃", "dusk": "🌆", "evening": "🌆", "twilight": "🌆", "rain": "🌧️", "snow": "❄️",
    "fire": "🔥", "hot": "🔥", "smoke": "💨", "water": "💧", "ice": "🧊", "space": "🌌", "galaxy": "🌌",
    "earth": "🌍", "world": "🌍", "globe": "🌍", "cold": "🥶",
    # objects and tools
    "camera": "📷", "video_camera": "📹", "camcorder": "📹", "key": "🔑", "lock": "🔒", "bell": "🔔",
    "guitar": "🎸", "piano": "🎹", "drum": "🥁", "music": "🎵", "microphone": "🎤", "headphones": "🎧",
    "pen": "🖊️", "pencil": "✏️", "paper": "📄", "newspaper": "📰", "letter": "✉️", "envelope": "✉️",
    "box": "📦", "basket": "🧺", "bucket": "🪣", "broom": "🧹", "hammer": "🔨", "wrench": "🔧",
    "tool": "🔧", "metal": "🔧", "metallic": "🔧", "steel": "🔧", "saw": "🪚", "axe": "🪓",
    "shield": "🛡️", "trophy": "🏆", "medal": "🏅", "money": "💰", "coin": "🪙", "map": "🗺️",
    "compass": "🧭", "battery": "🔋", "plug": "🔌", "magnet": "🧲", "telescope": "🔭",
    "microscope": "🔬", "ticket": "🎟️", "sign": "🪧", "calendar": "📅", "chain": "⛓️",
    "ocr": "💬", "text": "💬", "nsfw": "🔞", "portrait": "🖼️", "picture": "🖼️", "photo": "📷",
    # what people do
    "sitting": "🪑", "standing": "🧍", "walking": "🚶", "running": "🏃", "climbing": "🧗",
    "looking": "👀", "eating": "🍽️", "drinking": "🥤", "sleeping": "😴", "reading": "📖",
    "writing": "✍️", "swimming": "🏊", "dancing": "💃", "cooking": "🍳", "filming": "🎥",
    "happy": "😊", "posing": "📸",
}

# BLIP and ollama check these before the map (reference behaviour).
PRIORITY_OVERRIDES: dict[str, str] = {
    "glass": "🥛", "glasses": "👓", "wood": "🌲", "wooden": "🌲", "metal": "🔧", "metallic": "🔧",
}

_COCO = frozenset(COCO_CLASSES)

_STOPWORD_TEXT = """
a an the and or but of in on at to for from by with without into onto over under near next is are was
were be been being it its this that these those there here his her their our your my he she they we
you i me him them up down out off as than then so very some any all no not one two three four five
has have had do does did can could will would should may might must while who whom which what when
where why how each other another such only own same too just also about above below between through
during before after again further once both few more most
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


def is_coco_class(label: str) -> bool:
    return label in _COCO


def emoji_verbatim(label: str) -> str | None:
    """yolov8 and rtdetr: the COCO label as-is, spaces included."""
    return WORD_EMOJI.get(label)


def emoji_underscored(label: str, *, singular: bool = False) -> str | None:
    """detectron2, CLIP, xception: spaces become `_`; some also try the singular form."""
    key = label.lower().replace(" ", "_")
    found = WORD_EMOJI.get(key)
    if found is None and singular and key.endswith("s"):
        found = WORD_EMOJI.get(key[:-1])
    return found


def emoji_for_word(word: str) -> str | None:
    """BLIP and ollama: priority overrides, then the word, then its singular."""
    key = word.lower()
    if key in PRIORITY_OVERRIDES:
        return PRIORITY_OVERRIDES[key]
    found = WORD_EMOJI.get(key)
    if found is None and key.endswith("s"):
        found = WORD_EMOJI.get(key[:-1])
    return found


def strip_punctuation(token: str) -> str:
    return _PUNCTUATION.sub("", token)


def tokens_with_expressions(text: str) -> list[str]:
    """Split on spaces, strip punctuation, join two-word expressions the map knows (`teddy bear` → `teddy_bear`)."""
    words = [strip_punctuation(part) for part in text.split()]
    words = [word for word in words if word]
    joined: list[str] = []
    index = 0
    while index < len(words):
        if index + 1 < len(words):
            pair = f"{words[index]}_{words[index + 1]}"
            if pair.lower() in WORD_EMOJI:
                joined.append(pair)
                index += 2
                continue
        joined.append(words[index])
        index += 1
    return joined


def content_words(text: str) -> list[str]:
    """Lower-case alphabetic words of three letters or more that are not stopwords (OCR, caption scoring)."""
    words = (strip_punctuation(part).lower() for part in text.split())
    return [word for word in words if len(word) >= 3 and word.isalpha() and word not in STOPWORDS]
