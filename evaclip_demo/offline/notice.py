"""NOTICE.md: the attributions and licence terms of every part of the prepared data."""
from __future__ import annotations

from evaclip_demo.offline.packages import PACKAGES, SOURCES

_TERMS = {
    "public-domain": "no conditions.",
    "CC-BY-4.0": "Creative Commons Attribution 4.0: credit the authors (this file) when you share the images.",
    "CC-BY-SA-4.0": "Creative Commons Attribution-ShareAlike 4.0: credit the authors, and share images or "
                    "data sets derived from them under CC-BY-SA-4.0 too.",
    "GPL-2.0-or-later": "GNU GPL version 2 or later: redistributions must offer the source (the Debian "
                        "package tuxpaint-stamps-default) under the same licence.",
    "Apache-2.0": "Apache License 2.0: keep this notice with redistributed copies.",
    "MIT": "MIT licence: keep the copyright lines and the MIT permission notice (both in this file) with copies.",
}

_WHERE = {
    "openclipart": "train/openclipart-*.tar, retrieval/openclipart_heldout/",
    "twemoji": "train/twemoji-*.tar",
    "openmoji": "train/openmoji-*.tar (captions of all emoji also use OpenMoji's CLDR data)",
    "emojione": "train/emojione-*.tar",
    "fluent": "train/fluent-*.tar (style/code point in each sample's id)",
    "tuxpaint": "zeroshot/tuxpaint/, retrieval/tuxpaint_sentences/",
    "noto": "zeroshot/noto/, retrieval/noto_names/",
    "useanimations": "video/train/useanimations-*.tar, video/zeroshot/useanimations/ (clips rendered from the "
                     "package's Lottie animations)",
}


# The MIT licence asks that its permission notice travel with copies, not just the copyright line.
_MIT_TEXT = [
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated "
    "documentation files (the \"Software\"), to deal in the Software without restriction, including without "
    "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the "
    "Software, and to permit persons to whom the Software is furnished to do so, subject to the following "
    "conditions:",
    "",
    "The above copyright notice and this permission notice shall be included in all copies or substantial "
    "portions of the Software.",
    "",
    "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT "
    "LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO "
    "EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN "
    "AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE "
    "OR OTHER DEALINGS IN THE SOFTWARE.",
]


def notice_text(versions: dict[str, str]) -> str:
    """The NOTICE.md text for the packages fetched at ``versions`` (package name -> version); only those."""
    by_name = {p.name: p for p in PACKAGES}
    lines = [
        "# NOTICE: offline evaclip data",
        "",
        "These images, clips and captions were extracted from registry packages by `evaclip data prepare`.",
        "They keep their original licences; the evaclip code licence does not apply to them.",
        "Each training sample's `.json` names its `source` and `licence`.",
        "",
        "## Parts, licences and where they are",
        "",
    ]
    for source, (package, licence) in SOURCES.items():
        if package not in versions:  # a source left out of this build (e.g. no Fluent Emoji style asked for)
            continue
        lines.append(f"- **{source}** ({_WHERE[source]}): {licence}. {_TERMS[licence]}")
    lines += ["", "The training shards as a whole contain CC-BY-SA-4.0 images (OpenMoji, EmojiOne): a data set "
              "derived from them must stay under CC-BY-SA-4.0. The Tux Paint sets are GPL-2.0-or-later.",
              "", "## Packages and attributions", ""]
    for p in PACKAGES:
        if p.name not in versions:
            continue
        version = versions[p.name]
        lines.append(f"- `{p.name}` {version} ({p.registry}): {by_name[p.name].licence}. {p.attribution} "
                     f"Used for: {p.used_for}.")
    if any(p.licence == "MIT" and p.name in versions for p in PACKAGES):
        lines += ["", "## MIT licence (the parts marked MIT above)", "", *_MIT_TEXT]
    return "\n".join(lines) + "\n"
