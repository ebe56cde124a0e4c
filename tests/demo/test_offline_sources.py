"""Listing Fluent Emoji files: tone variants, names that merely end like a tone, accents, styles."""
from __future__ import annotations

from pathlib import Path

import pytest

from evaclip_demo.offline.build import PrepareOptions
from evaclip_demo.offline.sources import EmojiText, fluent_items
from evaclip.errors import ConfigError

TEXTS = {"1F9D1-200D-1F3A8": EmojiText("artist", ("painter",), "person-role"),
         "1F6A8": EmojiText("police car light", ("siren",), "transport-ground"),
         "1FA85": EmojiText("piñata", ("party",), "event"),
         "1F9D1-200D-1F3A8-1F3FB": EmojiText("artist: light skin tone", (), "person-role")}


def _package(root: Path, stems: list[str], style: str = "flat") -> Path:
    folder = root / "package" / "icons" / style
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (folder / f"{stem}.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    return root


def test_tone_variants_are_skipped_but_names_ending_like_a_tone_are_kept(tmp_path):
    pkg = _package(tmp_path, ["artist-default", "artist-light", "artist-medium-light", "artist-dark",
                              "police-car-light", "pinata", "mystery-thing"])
    listing = fluent_items(pkg, TEXTS, ("flat",))
    assert [(it.id, it.caption) for it in listing.items] == [
        ("flat/1F6A8", "Police car light. siren"),   # "-light" is part of its name: no -default sibling
        ("flat/1F9D1-200D-1F3A8", "Artist. painter"),  # the -default file stands for the emoji
        ("flat/1FA85", "Piñata. party"),             # matched without the accent
    ]
    assert listing.unmatched == ["mystery-thing"]


def test_unmatched_names_are_collected_from_every_style(tmp_path):
    _package(tmp_path, ["pinata"], "flat")
    _package(tmp_path, ["pinata", "only-in-modern"], "modern")
    listing = fluent_items(tmp_path, TEXTS, ("flat", "modern"))
    assert [it.id for it in listing.items] == ["flat/1FA85", "modern/1FA85"]
    assert listing.unmatched == ["only-in-modern"]


def test_style_lists_have_one_spelling():
    assert PrepareOptions(fluent_styles="modern, flat,flat").fluent_styles == "flat,modern"
    assert PrepareOptions(fluent_styles="modern,flat") == PrepareOptions(fluent_styles="flat,modern")
    assert PrepareOptions().styles() == ()
    with pytest.raises(ConfigError, match="'3d'"):
        PrepareOptions(fluent_styles="3d,flat").validate()
