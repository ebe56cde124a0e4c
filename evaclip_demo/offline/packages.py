"""The registry packages the offline data is built from, with their licences.

One table, so that fetching, the manifest and the NOTICE all agree on names, pinned versions and
attributions. apt versions are those of Debian 12 (bookworm); npm versions are pinned exactly.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    """A registry package: ``registry`` is ``"apt"`` (``apt-get download`` + ``dpkg -x``) or ``"npm"``."""

    name: str
    registry: str
    version: str  # pinned version requested from the registry; "" = whatever apt offers
    licence: str
    attribution: str  # one line for NOTICE.md
    used_for: str


PACKAGES: tuple[Package, ...] = (
    Package("openclipart-png", "apt", "", "Public Domain (Open Clip Art Library)",
            "Open Clip Art Library artists, dedicated to the public domain; Debian package openclipart.",
            "training pairs and the held-out openclipart retrieval set (images)"),
    Package("openclipart-svg", "apt", "", "Public Domain (Open Clip Art Library)",
            "Open Clip Art Library artists, dedicated to the public domain; Debian package openclipart.",
            "titles, descriptions and keywords (RDF metadata) of the openclipart images"),
    Package("tuxpaint-stamps-default", "apt", "", "GPL-2.0-or-later",
            "Tux Paint stamps, (c) Tux Paint contributors (New Breed Software and others), GPL-2.0-or-later.",
            "Tux Paint zero-shot classes and sentence retrieval set"),
    Package("ruby-gemojione", "apt", "", "CC-BY-SA-4.0 (art); MIT (code)",
            "Emoji artwork by EmojiOne (Ranks.com), CC-BY-SA-4.0, via the gemojione gem.",
            "training pairs (EmojiOne style)"),
    Package("emoji-datasource-twitter", "npm", "16.0.0", "CC-BY-4.0 (art); MIT (data)",
            "Twemoji graphics (c) Twitter, Inc and other contributors, CC-BY-4.0; emoji-datasource by iamcal, MIT.",
            "training pairs (Twemoji style)"),
    Package("emoji-datasource-google", "npm", "16.0.0", "Apache-2.0 (art); MIT (data)",
            "Noto Emoji graphics (c) Google Inc., Apache-2.0; emoji-datasource by iamcal, MIT.",
            "Noto zero-shot classes and Noto name retrieval set (a style held out of training)"),
    Package("openmoji", "npm", "17.0.0", "CC-BY-SA-4.0",
            "OpenMoji, the open-source emoji and icon project, CC-BY-SA-4.0 (openmoji.org).",
            "training pairs (OpenMoji style) and CLDR names/keywords for every emoji caption"),
    Package("fluentui-emoji", "npm", "1.3.0", "MIT",
            "Fluent Emoji graphics (c) Microsoft Corporation, MIT; npm packaging (c) 2022 Mohammad Abu Mattar, MIT.",
            "training pairs (Fluent Emoji styles)"),
    Package("react-useanimations", "npm", "2.10.0", "MIT",
            "useAnimations icons (c) Tuan Phung and Marek Feikus (useanimations.com), MIT.",
            "video-text clips (its Lottie animations rendered with rlottie) and the zero-shot video set"),
)

PACKAGES_BY_NAME: dict[str, Package] = {p.name: p for p in PACKAGES}

# Image source -> (package it comes from, SPDX-style licence of its images). Written into every sample.
SOURCES: dict[str, tuple[str, str]] = {
    "openclipart": ("openclipart-png", "public-domain"),
    "twemoji": ("emoji-datasource-twitter", "CC-BY-4.0"),
    "openmoji": ("openmoji", "CC-BY-SA-4.0"),
    "emojione": ("ruby-gemojione", "CC-BY-SA-4.0"),
    "fluent": ("fluentui-emoji", "MIT"),
    "tuxpaint": ("tuxpaint-stamps-default", "GPL-2.0-or-later"),
    "noto": ("emoji-datasource-google", "Apache-2.0"),
    "useanimations": ("react-useanimations", "MIT"),  # video clips, not images (offline/animations.py)
}
TRAIN_SOURCES: tuple[str, ...] = ("openclipart", "twemoji", "openmoji", "emojione", "fluent")
