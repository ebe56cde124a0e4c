"""Readers that list the image/caption items of each unpacked package (no image decoding here).

Each reader takes the package root (the folder the archive was unpacked into) and returns items sorted by
id, so everything downstream is deterministic.
"""
from __future__ import annotations

import collections
import json
import random
import re
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from evaclip_demo.offline import captions as cap
from evaclip_demo.offline.classes import noto_class, tuxpaint_class
from evaclip.errors import DatasetError

OPENCLIPART_PNG = "usr/share/openclipart/png"
OPENCLIPART_SVG = "usr/share/openclipart/svg"
TUXPAINT_STAMPS = "usr/share/tuxpaint/stamps"
GEMOJIONE_GEMS = "usr/share/rubygems-integration/all/gems"
NPM_ROOT = "package"

# Bitmaps above this many pixels take ~1 GB to decode (some openclipart PNGs are 20k x 30k): use the SVG.
MAX_BITMAP_PIXELS = 4_000_000
# Folders of KDE application/mime icons, whose "captions" are program names, and generated gradients.
CLIPART_SKIP = ("/applications/", "/apps/", "/mimetypes/")


@dataclass
class Item:
    """One image with its caption. ``group`` keeps identical names on one side of the openclipart split;
    ``classname`` is the zero-shot class of an evaluation image ("" when it has none)."""

    source: str
    id: str
    path: Path
    caption: str
    subgroup: str = ""
    group: str = ""
    classname: str = ""


def _need(path: Path, package: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path} is missing: the {package} package does not have the expected layout; "
                           f"rerun `evaclip data prepare --force`")
    return path


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding the image."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return (0, 0)
    w, h = struct.unpack(">II", head[16:24])
    return int(w), int(h)


def openclipart_items(png_pkg: Path, svg_pkg: Path, rng: random.Random, stars_kept: int = 40) -> list[Item]:
    """openclipart PNGs (symlinked duplicates skipped) captioned from the RDF of the SVG at the same path.

    Of the ~1,400 generated "gramastar" star polygons only ``stars_kept`` random ones stay.
    """
    png_root = _need(png_pkg / OPENCLIPART_PNG, "openclipart-png")
    svg_root = _need(svg_pkg / OPENCLIPART_SVG, "openclipart-svg")
    raw: list[tuple[str, Path, cap.ClipartMeta]] = []
    for png in sorted(png_root.rglob("*.png")):
        if png.is_symlink():
            continue
        rel = png.relative_to(png_root).with_suffix("").as_posix()
        svg = svg_root / (rel + ".svg")
        meta = cap.parse_clipart_rdf(svg.read_text(encoding="utf-8", errors="replace")) if svg.is_file() \
            else cap.ClipartMeta()
        w, h = png_size(png)
        path = svg if w * h > MAX_BITMAP_PIXELS and svg.is_file() else png
        raw.append((rel, path, meta))
    title_count = collections.Counter(meta.title for _, _, meta in raw)
    description_count = collections.Counter(meta.description for _, _, meta in raw)
    stars = [rel for rel, _, meta in raw if meta.title == "gramastar"]
    kept_stars = set(rng.sample(stars, min(stars_kept, len(stars))))
    items = []
    for rel, path, meta in raw:
        if rel.startswith("special/gradients") or any(d in "/" + rel for d in CLIPART_SKIP):
            continue
        if meta.title == "gramastar" and rel not in kept_stars:
            continue
        caption, name = cap.clipart_caption(rel, meta, title_count[meta.title], description_count[meta.description])
        items.append(Item("openclipart", rel, path, caption, subgroup=rel.rsplit("/", 1)[0] if "/" in rel else "",
                          group=name.lower()))
    return items


def tuxpaint_items(pkg: Path) -> list[Item]:
    """Tux Paint stamps (PNG preferred over an SVG twin; mirror/flip variants skipped) with the English
    sentence of each stamp's .txt as caption and its folder's zero-shot class."""
    root = _need(pkg / TUXPAINT_STAMPS, "tuxpaint-stamps-default")
    chosen: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".png", ".svg") or path.stem.endswith(("_mirror", "_flip")) or not path.is_file():
            continue
        if path.suffix == ".svg" and path.with_suffix(".png").is_file():
            continue
        chosen[path.relative_to(root).with_suffix("").as_posix()] = path
    items = []
    for rel in sorted(chosen):
        txt = chosen[rel].with_suffix(".txt")
        sentence = ""
        if txt.is_file():
            with open(txt, encoding="utf-8", errors="replace") as f:
                sentence = f.readline().strip()
        items.append(Item("tuxpaint", rel, chosen[rel], sentence, subgroup=rel.rsplit("/", 1)[0],
                          classname=tuxpaint_class(rel)))
    return items


def hexcode(code: str) -> str:
    """Canonical emoji id: upper-case code points joined by '-', variation selector FE0F dropped."""
    return "-".join(c for c in code.upper().replace("_", "-").split("-") if c and c != "FE0F")


def has_skin_tone(code: str) -> bool:
    """True for an emoji sequence with a Fitzpatrick modifier (U+1F3FB..U+1F3FF)."""
    return any(f"1F3F{t}" in code.upper() for t in "BCDEF")


@dataclass(frozen=True)
class EmojiText:
    name: str
    tags: tuple[str, ...]
    subgroup: str


def emoji_texts(openmoji_pkg: Path) -> dict[str, EmojiText]:
    """hexcode -> CLDR name, CLDR keywords and Unicode subgroup, from OpenMoji's data file."""
    data = json.loads(_need(openmoji_pkg / NPM_ROOT / "data" / "openmoji.json", "openmoji").read_text("utf-8"))
    return {hexcode(e["hexcode"]): EmojiText(e["annotation"], tuple(t.strip() for t in e["tags"].split(",")),
                                             e["subgroups"]) for e in data}


def datasource_items(pkg: Path, style: str, source: str, texts: dict[str, EmojiText]) -> list[Item]:
    """emoji-datasource-{twitter,google}: base emoji (no skin tones, no components), 64 px PNGs."""
    base = pkg / NPM_ROOT
    data = json.loads(_need(base / "emoji.json", f"emoji-datasource-{style}").read_text("utf-8"))
    items = []
    for e in data:
        if e["category"] == "Component":
            continue
        hx = hexcode(e["unified"])
        png = base / "img" / style / "64" / e["image"]
        if not png.is_file():
            continue
        text = texts.get(hx, EmojiText(e["name"].lower(), (), e["subcategory"]))
        items.append(Item(source, hx, png, cap.emoji_caption(text.name, list(text.tags)),
                          subgroup=e["subcategory"], group=text.name.lower(),
                          classname=noto_class(e["subcategory"])))
    return sorted(items, key=lambda it: it.id)


def openmoji_items(pkg: Path) -> list[Item]:
    """OpenMoji colour SVGs without skin tones, components, flags (Twemoji's copy is kept) or brands."""
    base = pkg / NPM_ROOT
    data = json.loads(_need(base / "data" / "openmoji.json", "openmoji").read_text("utf-8"))
    items = []
    for e in data:
        if e["skintone"] or e["group"] == "component" or e["subgroups"] in ("country-flag", "brand"):
            continue
        svg = base / "color" / "svg" / f"{e['hexcode']}.svg"
        if svg.is_file():
            tags = [t for t in (e["tags"] + "," + e["openmoji_tags"]).split(",")]
            items.append(Item("openmoji", hexcode(e["hexcode"]), svg, cap.emoji_caption(e["annotation"], tags),
                              subgroup=e["subgroups"], group=e["annotation"].lower()))
    return sorted(items, key=lambda it: it.id)


def gemojione_items(pkg: Path, texts: dict[str, EmojiText]) -> list[Item]:
    """EmojiOne 64 px PNGs from the gemojione gem, without modifiers, extras, skin tones and flags."""
    gems = sorted(_need(pkg / GEMOJIONE_GEMS, "ruby-gemojione").glob("gemojione-*"))
    if not gems:
        raise DatasetError(f"no gemojione-* folder under {pkg / GEMOJIONE_GEMS}; rerun with --force")
    root = gems[-1]
    index = json.loads(_need(root / "config" / "index.json", "ruby-gemojione").read_text("utf-8"))
    items = []
    for e in index.values():
        code = e["unicode"].upper()
        if e.get("category") in ("modifier", "extras", "flags") or has_skin_tone(code):
            continue
        png = root / "assets" / "png" / f"{code}.png"
        if not png.is_file():
            continue
        hx = hexcode(code)
        text = texts.get(hx, EmojiText(e["name"], tuple(e.get("keywords", [])), ""))
        items.append(Item("emojione", hx, png, cap.emoji_caption(text.name, list(text.tags)),
                          subgroup=text.subgroup, group=text.name.lower()))
    return sorted(items, key=lambda it: it.id)


# Fluent Emoji file-name suffixes of the skin-tone variants; "-default" marks the default tone of such an emoji.
FLUENT_TONES = ("-light", "-medium-light", "-medium", "-medium-dark", "-dark")
FLUENT_STYLES = ("flat", "modern", "high-contrast")
# Subgroups left out of every emoji style but Twemoji's (flags) or left out everywhere (components, brands).
EMOJI_SKIP_SUBGROUPS = ("country-flag", "brand", "skin-tone", "hair-style")


def emoji_name_key(name: str) -> str:
    """A spelling-free key for CLDR names: "A button (blood type)" and "a-button-blood-type" agree, and so do
    "piñata" and "pinata" (accents dropped)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", " ", plain.lower().replace("\u2019", "").replace("'", "")).strip()


def _tone_variant(stem: str, stems: set[str]) -> bool:
    """A skin-tone file: a tone suffix *and* a ``-default`` sibling ("police-car-light" is an emoji itself)."""
    return any(stem.endswith(t) and stem[: -len(t)] + "-default" in stems for t in FLUENT_TONES)


@dataclass
class FluentListing:
    items: list[Item]
    unmatched: list[str]  # file stems whose name is not a CLDR name OpenMoji knows (left out)


def fluent_items(pkg: Path, texts: dict[str, EmojiText], styles: tuple[str, ...]) -> FluentListing:
    """Microsoft's Fluent Emoji (npm ``fluentui-emoji``): one SVG per emoji and style, named by its CLDR name.

    Files carry no code points, so each name is matched to OpenMoji's CLDR data; the caption is then exactly
    the one the other styles give that emoji (so caption groups line up across styles). Skin-tone variants
    are skipped (the ``-default`` file stands for the emoji), as are flags, brands and components.
    """
    by_key: dict[str, str] = {}
    for hx in sorted(texts):
        if not has_skin_tone(hx):
            by_key.setdefault(emoji_name_key(texts[hx].name), hx)
    items, unmatched = [], set()
    for style in styles:
        if style not in FLUENT_STYLES:
            raise DatasetError(f"unknown Fluent Emoji style {style!r}; choose from {', '.join(FLUENT_STYLES)}")
        folder = _need(pkg / NPM_ROOT / "icons" / style, "fluentui-emoji")
        files = sorted(folder.glob("*.svg"))
        stems = {f.stem for f in files}
        for svg in files:
            stem = svg.stem
            if _tone_variant(stem, stems):
                continue
            hx = by_key.get(emoji_name_key(stem.removesuffix("-default")))
            if hx is None:
                unmatched.add(stem)
                continue
            text = texts[hx]
            if text.subgroup in EMOJI_SKIP_SUBGROUPS:
                continue
            items.append(Item("fluent", f"{style}/{hx}", svg, cap.emoji_caption(text.name, list(text.tags)),
                              subgroup=text.subgroup, group=text.name.lower()))
    return FluentListing(sorted(items, key=lambda it: it.id), sorted(unmatched))
