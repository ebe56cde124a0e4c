"""Shard URL lists: `;`-joined specs, brace patterns, local paths and fsspec URLs.

A shard spec is what users write on the command line, e.g.
``/data/laion/{00000..23295}.tar;/data/extra/part-{a,b}.tar`` or ``s3://bucket/coyo-{000..999}.tar``.
:func:`expand_urls` turns it into a flat list of URLs; :func:`open_url` opens one for reading.
"""
from __future__ import annotations

import os
from typing import BinaryIO, Iterable

from evaclip.errors import DatasetError

# More shard names than any real dataset has (LAION-5B is ~500k shards of 10k pairs): a pattern beyond this is a
# typo such as one digit too many, and expanding it would build the whole list in memory before anything else
# looks at it. Patterns are counted before they are expanded.
MAX_SHARDS = 1_000_000


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


def _range_bounds(body: str) -> tuple[int, int, int] | None:
    """`000..099` -> (0, 99, pad width), or None if `body` is not a numeric range."""
    lo, sep, hi = body.partition("..")
    if not sep or not lo.lstrip("-").isdigit() or not hi.lstrip("-").isdigit():
        return None
    # img2dataset writes zero-padded names; keep the padding when a bound carries it.
    width = len(lo) if (lo.startswith("0") and len(lo) > 1) or len(lo) == len(hi) else 0
    return int(lo), int(hi), width


def _expand_range(body: str) -> list[str] | None:
    """`000..099` -> ['000', ..., '099'] (zero padded like the bounds), or None if not a numeric range."""
    bounds = _range_bounds(body)
    if bounds is None:
        return None
    a, b, width = bounds
    step = 1 if b >= a else -1
    return [str(i).zfill(width) for i in range(a, b + step, step)]


def _split_pattern(pattern: str) -> tuple[str, str, str] | None:
    """(head, brace body, tail) of the first brace group, None without braces; unbalanced braces raise."""
    start = pattern.find("{")
    if start < 0:
        if "}" in pattern:
            raise DatasetError(f"unbalanced '}}' in shard pattern {pattern!r}; check the braces")
        return None
    end = _matching_brace(pattern, start)
    if end < 0:
        raise DatasetError(f"unbalanced '{{' in shard pattern {pattern!r}; check the braces")
    return pattern[:start], pattern[start + 1:end], pattern[end + 1:]


def count_names(pattern: str) -> int:
    """How many names ``expand_braces(pattern)`` gives, computed without building them."""
    parts = _split_pattern(pattern)
    if parts is None:
        return 1
    _, body, tail = parts
    bounds = _range_bounds(body)
    options = abs(bounds[1] - bounds[0]) + 1 if bounds else sum(count_names(p) for p in _split_top_level(body))
    return options * count_names(tail)


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: `a{0..2}b` -> a0b a1b a2b; `x{p,q}` -> xp xq; nests and repeats.

    At most :data:`MAX_SHARDS` names: a larger pattern is refused before anything is built."""
    _check_count(count_names(pattern), pattern)
    return _expand(pattern)


def _check_count(n: int, spec) -> None:
    if n > MAX_SHARDS:
        shown = repr(spec) if len(repr(spec)) <= 200 else repr(spec)[:197] + "..."
        raise DatasetError(f"shard spec {shown} names {n:,} shards, more than the {MAX_SHARDS:,} evaclip accepts; "
                           "check the brace ranges (one digit too many?) or split the data into several sources")


def _expand(pattern: str) -> list[str]:
    parts = _split_pattern(pattern)
    if parts is None:
        return [pattern]
    head, body, tail = parts
    options = _expand_range(body)
    if options is None:
        options = [o for part in _split_top_level(body) for o in _expand(part)]
    tails = _expand(tail)
    return [head + o + t for o in options for t in tails]


def expand_urls(spec: str | Iterable[str]) -> list[str]:
    """Turn a shard spec (`;`-joined patterns, or a list of them) into a flat list of URLs, in order."""
    items = [str(item).strip() for item in (spec.split(";") if isinstance(spec, str) else list(spec))]
    items = [item for item in items if item]
    _check_count(sum(count_names(item) for item in items), spec)
    urls: list[str] = []
    for item in items:
        urls.extend(_expand(item))
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
