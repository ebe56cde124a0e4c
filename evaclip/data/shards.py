"""Shard URL lists: `;`-joined specs, brace patterns, local paths and fsspec URLs.

A shard spec is what users write on the command line, e.g.
``/data/laion/{00000..23295}.tar;/data/extra/part-{a,b}.tar`` or ``s3://bucket/coyo-{000..999}.tar``.
:func:`expand_urls` turns it into a flat list of URLs; :func:`open_url` opens one for reading.
"""
from __future__ import annotations

import os
from typing import BinaryIO, Iterable

from evaclip.errors import DatasetError


def _matching_brace(text: str, start: int) -> int:
    """Index of the `}` that closes the `{` at `start` (braces may nest), or -1."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top_level(body: str) -> list[str]:
    """Split a brace body on the commas that are not inside nested braces."""
    parts, depth, cur = [], 0, []
    for ch in body:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _expand_range(body: str) -> list[str] | None:
    """`000..099` -> ['000', ..., '099'] (zero padded like the bounds), or None if not a numeric range."""
    lo, sep, hi = body.partition("..")
    if not sep or not lo.lstrip("-").isdigit() or not hi.lstrip("-").isdigit():
        return None
    a, b = int(lo), int(hi)
    # img2dataset writes zero-padded names; keep the padding when a bound carries it.
    width = len(lo) if (lo.startswith("0") and len(lo) > 1) or len(lo) == len(hi) else 0
    step = 1 if b >= a else -1
    return [str(i).zfill(width) for i in range(a, b + step, step)]


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: `a{0..2}b` -> a0b a1b a2b; `x{p,q}` -> xp xq; nests and repeats."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise DatasetError(f"unbalanced '}}' in shard pattern {pattern!r}; check the braces")
        return [pattern]
    end = _matching_brace(pattern, start)
    if end < 0:
        raise DatasetError(f"unbalanced '{{' in shard pattern {pattern!r}; check the braces")
    head, body, tail = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    options = _expand_range(body)
    if options is None:
        options = [o for part in _split_top_level(body) for o in expand_braces(part)]
    tails = expand_braces(tail)
    return [head + o + t for o in options for t in tails]


def expand_urls(spec: str | Iterable[str]) -> list[str]:
    """Turn a shard spec (`;`-joined patterns, or a list of them) into a flat list of URLs, in order."""
    items = spec.split(";") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in items:
        item = str(item).strip()
        if item:
            urls.extend(expand_braces(item))
    if not urls:
        raise DatasetError(f"shard spec {spec!r} names no shard; give paths like /data/shard-{{000..099}}.tar")
    return urls


def is_local(url: str) -> bool:
    """True for plain paths and file:// URLs."""
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def open_url(url: str) -> BinaryIO:
    """Open a shard for binary streaming reads: local files directly, other schemes through fsspec."""
    if url.startswith("pipe:"):
        raise DatasetError(f"pipe: URLs are not supported ({url!r}); use a path or an fsspec URL (s3://, https://)")
    if is_local(url):
        return open(local_path(url), "rb")
    try:
        import fsspec
    except ImportError as e:
        raise DatasetError(f"reading {url!r} needs fsspec; `pip install fsspec` (plus s3fs/gcsfs for cloud)") from e
    return fsspec.open(url, "rb").open()


def check_shards(urls: list[str], source_name: str) -> list[str]:
    """Refuse URLs that can never be read; return the missing local shards (skipped and counted at run time).

    img2dataset often leaves holes in a shard range (failed shards), so a few missing files are normal;
    all of them missing is a wrong path.
    """
    for url in urls:
        if url.startswith("pipe:"):
            raise DatasetError(f"source {source_name!r}: pipe: URLs are not supported ({url!r}); use an fsspec URL")
    remote = [u for u in urls if not is_local(u)]
    if remote:
        try:
            import fsspec  # noqa: F401
        except ImportError:
            raise DatasetError(f"source {source_name!r} has remote shards ({remote[0]!r}); install fsspec") from None
    local = [u for u in urls if is_local(u)]
    missing = [u for u in local if not os.path.isfile(local_path(u))]
    if local and len(missing) == len(local):
        raise DatasetError(
            f"source {source_name!r}: none of its {len(local)} shards exists (first: {local[0]!r}); check the path")
    return missing
