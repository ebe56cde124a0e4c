"""Caption cleaning: turn noisy clip-art metadata and CLDR emoji names into short English captions.

openclipart titles are often boilerplate ("gramastar", "Part of the Flat Icon Collection ...") and its
keywords carry junk (hashes, author names); file stems carry author names and counters. The rules here keep
what describes the picture. Every function is pure, so the tests check them on hand-made examples.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

# Keywords that say nothing about the picture.
JUNK_KEYWORDS = frozenset({
    "hash", "unsorted", "special", "icons", "icon", "theme", "lemon_theme_icon", "united_nations_member",
    "magick", "mapsym", "clip art", "clipart", "media", "signs_and_symbols", "image", "svg", "png",
    "public domain", "externalsource", "mime-types", "mimetypes", "appicon", "remix",
})
# File-stem tokens that are toolkit prefixes or (truncated) author names, not content.
JUNK_STEM_TOKENS = frozenset({
    "gnome", "stock", "gtk", "kde", "fs", "svg", "png", "ganson", "mateya", "nicu", "architetto",
    "francesco", "rollandin", "franc", "fran", "archite", "arch", "aiga", "bb",
})
# Folder names too generic (or too thematic) to serve as tags.
JUNK_FOLDERS = frozenset({
    "unsorted", "special", "icons", "computer", "flat-theme", "lemon-theme", "etiquette-theme", "action",
    "actions", "stock", "europe", "asia", "africa", "america", "historic", "white", "simple", "ornamental",
    "bordered", "cardbacks", "misc", "other", "signs and symbols",
})
BOILERPLATE_PREFIXES = ("part of", "clipart by")
BOILERPLATE_REPEATS = 4  # a title used this often is a collection label, not a description
MAX_TAGS = 4

_CARD_SUIT = {"c": "clubs", "d": "diamonds", "h": "hearts", "s": "spades"}
_CARD_RANK = {"a": "ace", "1": "ace", "j": "jack", "q": "queen", "k": "king"}


@dataclass
class ClipartMeta:
    """Dublin Core metadata of one openclipart SVG."""

    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    creator: str = ""


def _first(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.S)
    return html.unescape(m.group(1)).strip() if m else ""


def parse_clipart_rdf(svg_text: str) -> ClipartMeta:
    """Read title, description, keywords and creator from the ``<cc:Work>`` RDF block of an SVG."""
    m = re.search(r"<cc:Work.*?</cc:Work>", svg_text, re.S)
    work = m.group(0) if m else ""
    # creators, rights holders and publishers nest their own <dc:title> in a <cc:Agent>
    title = _first(r"<dc:title>(.*?)</dc:title>", re.sub(r"<cc:Agent.*?</cc:Agent>", "", work, flags=re.S))
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", work, re.S)
    keywords = [html.unescape(k).strip() for k in re.findall(r"<rdf:li>(.*?)</rdf:li>", subject.group(1), re.S)] \
        if subject else []
    return ClipartMeta(title=title, description=_first(r"<dc:description>(.*?)</dc:description>", work),
                       keywords=[k for k in keywords if k],
                       creator=_first(r"<dc:creator>.*?<dc:title>(.*?)</dc:title>", work))


def mostly_ascii(text: str) -> bool:
    """True for non-empty text that is (almost) plain ASCII: a cheap filter for non-English text."""
    return bool(text) and sum(c.isascii() for c in text) >= 0.97 * len(text)


def words_from_stem(stem: str, creator: str = "") -> str:
    """Readable words from a file stem: drop counters, split camelCase/underscores, drop author tokens."""
    stem = re.sub(r"[_\-]*\d+$", "", stem)
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    tokens = [t for t in re.split(r"[_\-\s.]+", stem.lower()) if t]
    author = [c for c in re.split(r"[\s._\-]+", creator.lower()) if len(c) > 1]
    # Debian truncates stems, so a prefix of an author's name is an author token too.
    keep = [t for t in tokens
            if t not in JUNK_STEM_TOKENS and not any(len(t) >= 2 and a.startswith(t) for a in author)]
    return " ".join(keep)


def clean_title(title: str) -> str:
    """A title without e-mail notes, camelCase, underscores, joining hyphens and trailing counters."""
    title = re.sub(r"\([^)]*@[^)]*\)", "", title)
    title = re.sub(r"([a-z])([A-Z])", r"\1 \2", title)
    title = re.sub(r"_+|(?<=\w)-(?=\w)", " ", title)
    title = re.sub(r"\s*\d+$", "", title)
    return re.sub(r"\s+", " ", title).strip()


def _letters(text: str) -> int:
    return len(re.sub(r"[^a-z]", "", text.lower()))


def clipart_name(rel: str, meta: ClipartMeta, title_count: int) -> str:
    """The name part of an openclipart caption; ``rel`` is the path without extension, e.g.
    ``animals/mammals/a_simple_pig_01``; ``title_count`` is how often its title occurs in the collection."""
    stem = rel.rsplit("/", 1)[-1]
    card = re.match(r"[a-z]+_([cdhs])_([0-9a-z]+)$", stem)
    if "/cards/" in rel and card:
        return f"the {_CARD_RANK.get(card.group(2), card.group(2))} of {_CARD_SUIT[card.group(1)]} playing card"
    if "/cards/" in rel and ("_jk" in stem or "joker" in stem):
        return "a joker playing card"
    if "/cardbacks/" in rel:
        return "the back of a playing card"
    title = meta.title
    if title == "gramastar":
        points = re.match(r"star_(\d+)pt", stem)
        return f"a star polygon with {int(points.group(1))} points" if points else "a star polygon"
    boilerplate = title_count >= BOILERPLATE_REPEATS
    slug = re.match(r"Clipart by [^-]+ - (.*)", title)
    if slug and not boilerplate:
        name = words_from_stem(slug.group(1))
    elif title and not boilerplate and not title.lower().startswith(BOILERPLATE_PREFIXES):
        name = clean_title(title)
    else:
        name = ""
    if _letters(name) < 3:
        name = words_from_stem(stem, meta.creator)
    return name


def _usable_description(description: str, name: str) -> str:
    d = description.strip()
    core = d.lower().rstrip(". ")
    if (not mostly_ascii(d) or not 4 <= len(d) <= 150 or "@" in d or "http" in d or "HASH(" in d
            or "converted" in d.lower() or "inkscape" in d.lower() or core.startswith(name.lower()) or name.lower().startswith(core)):
        return ""
    return d.rstrip(".")


def clipart_tags(rel: str, meta: ClipartMeta, name: str) -> list[str]:
    """Up to MAX_TAGS clean keywords, topped up with curated folder names."""
    creator = meta.creator.lower()
    tags: list[str] = []
    for k in meta.keywords:
        k = k.lower().replace("_", " ").strip()
        if (k in JUNK_KEYWORDS or k.replace(" ", "_") in JUNK_KEYWORDS or "0x" in k or k == creator
                or k in name.lower() or k in tags or not mostly_ascii(k) or len(k) > 25):
            continue
        tags.append(k)
    for folder in reversed(rel.split("/")[:-1]):
        folder = folder.lower().replace("_", " ")
        stems = {t.rstrip("s") for t in tags}
        if len(tags) >= MAX_TAGS:
            break
        if folder not in JUNK_FOLDERS and folder.rstrip("s") not in stems and folder not in name.lower():
            tags.append(folder)
    return tags[:MAX_TAGS]


def join_caption(name: str, description: str = "", tags: list[str] | tuple[str, ...] = ()) -> str:
    """``Name. Description. tag, tag`` with the name capitalised and empty parts left out."""
    caption = name[:1].upper() + name[1:]
    if description:
        caption += ". " + description
    if tags:
        caption += ". " + ", ".join(tags)
    return caption.strip()


def clipart_caption(rel: str, meta: ClipartMeta, title_count: int, description_count: int = 1) -> tuple[str, str]:
    """(caption, name) of an openclipart item; the lower-cased name is also its group for the split.

    ``description_count`` is how often the description occurs: a repeated one describes a collection.
    """
    name = clipart_name(rel, meta, title_count)
    description = _usable_description(meta.description, name) if description_count < BOILERPLATE_REPEATS else ""
    return join_caption(name, description, clipart_tags(rel, meta, name)), name


def emoji_caption(name: str, tags: list[str]) -> str:
    """CLDR name plus up to MAX_TAGS keywords, leaving out region codes and words already in the name."""
    kept: list[str] = []
    for t in tags:
        t = t.strip()
        if t and not re.fullmatch(r"[A-Z]{2}", t) and t.lower() not in name.lower() and t.lower() not in kept:
            kept.append(t.lower())
    return join_caption(name, "", kept[:MAX_TAGS])
