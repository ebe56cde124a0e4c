"""Zero-shot class definitions of the two evaluation sets and their prompt templates.

Tux Paint classes come from its stamp folders; Noto classes from Unicode emoji subgroups. Order is label
order (it is written to ``classnames.txt``). The first matching class wins, so specific folders come before
general ones (``clothes/hats`` before ``clothes``).
"""
from __future__ import annotations

# (class name, stamp folder prefixes)
TUXPAINT_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mammal", ("animals/mammals", "animals/marsupials")),
    ("bird", ("animals/birds",)),
    ("insect", ("animals/insects",)),
    ("fish", ("animals/fish",)),
    ("fruit", ("food/fruit",)),
    ("vegetable", ("food/vegetables",)),
    ("flower", ("plants/flowers",)),
    ("hat", ("clothes/hats",)),
    ("piece of clothing", ("clothes",)),
    ("house", ("town/houses",)),
    ("road sign", ("town/roadsigns",)),
    ("vehicle", ("vehicles", "military/vehicles")),
    ("musical instrument", ("hobbies/music",)),
    ("dish or kitchen utensil", ("household/dishes",)),
    ("tool", ("household/tools",)),
    ("electronic device", ("household/electronics",)),
    ("letter of the alphabet", ("symbols/alphabets/english", "symbols/alphabets/german",
                                "symbols/alphabets/spanish")),
    ("coin or banknote", ("symbols/money/us", "symbols/money/canadian", "symbols/money/euro",
                          "symbols/money/japanese")),
    ("chess piece", ("symbols/chess",)),
    ("musical note", ("symbols/music",)),
    ("planet or moon", ("space/planets", "space/moon")),
    ("body part", ("people/body_parts",)),
    ("number or math symbol", ("symbols/math",)),
)

# (class name, Unicode emoji subgroups)
NOTO_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("smiley face", ("face-smiling", "face-affection", "face-tongue", "face-hand", "face-neutral-skeptical",
                     "face-sleepy", "face-unwell", "face-concerned", "face-negative", "face-glasses",
                     "face-hat")),
    ("person", ("person", "person-role", "person-gesture", "person-fantasy", "person-activity",
                "person-sport", "person-resting")),
    ("hand", ("hand-fingers-open", "hand-fingers-partial", "hand-single-finger", "hand-fingers-closed",
              "hands")),
    ("mammal", ("animal-mammal",)), ("bird", ("animal-bird",)), ("sea animal", ("animal-marine",)),
    ("bug", ("animal-bug",)), ("flower", ("plant-flower",)), ("plant", ("plant-other",)),
    ("fruit", ("food-fruit",)), ("vegetable", ("food-vegetable",)),
    ("prepared food", ("food-prepared", "food-asian")), ("sweet dessert", ("food-sweet",)),
    ("drink", ("drink",)), ("building", ("place-building",)), ("land vehicle", ("transport-ground",)),
    ("aircraft", ("transport-air",)), ("boat", ("transport-water",)), ("clock", ("time",)),
    ("weather", ("sky & weather",)), ("sports equipment", ("sport",)), ("game", ("game",)),
    ("clothing", ("clothing",)), ("musical instrument", ("musical-instrument",)),
    ("computer", ("computer",)), ("book or paper", ("book-paper",)), ("office supplies", ("office",)),
    ("tool", ("tool",)), ("household item", ("household",)), ("heart", ("heart",)),
    ("zodiac sign", ("zodiac",)), ("arrow", ("arrow",)), ("geometric shape", ("geometric",)),
    ("national flag", ("country-flag",)),
)

# The reference note's prompt; one template keeps the zero-shot numbers comparable with its measurements.
TEMPLATES: tuple[str, ...] = ("a picture of a {c}.",)


def tuxpaint_class(rel: str) -> str:
    """Class name of a stamp path relative to the stamps folder (``animals/birds/robin``), or ""."""
    rel = rel.replace("/cartoon", "")
    for name, prefixes in TUXPAINT_CLASSES:
        if any(rel.startswith(p + "/") for p in prefixes):
            return name
    return ""


def noto_class(subgroup: str) -> str:
    """Class name of a Unicode emoji subgroup, or ""."""
    for name, subgroups in NOTO_CLASSES:
        if subgroup in subgroups:
            return name
    return ""
