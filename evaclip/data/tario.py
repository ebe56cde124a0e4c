"""Streaming reader for webdataset tar shards: members grouped into samples by key.

A shard holds consecutive members `{key}.{ext}` (e.g. `000123.jpg`, `000123.txt`, `000123.json`), as img2dataset
writes them. The key is the member path up to the first dot of its file name, as in webdataset; the extension
(lower-cased) is everything after that dot. The tar is read once, front to back (`tarfile` stream mode), so the
same code reads local files, fsspec streams and compressed tars.

A truncated or unreadable shard never raises: the samples read before the damage are yielded, the sample being
read when the damage was hit is dropped, and :attr:`TarSampleReader.error` says what went wrong.
"""
from __future__ import annotations

import tarfile
import zlib
from typing import Iterator

from evaclip.data.shards import open_url
from evaclip.errors import DatasetError

# Errors a damaged tar (or its gzip layer, or a vanished file) can raise while being read.
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


def split_member_name(name: str) -> tuple[str, str] | None:
    """`dir/000123.jpg` -> (`dir/000123`, `jpg`); `dir/000123.seg.png` -> (`dir/000123`, `seg.png`); no dot -> None."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{head}/{stem}" if head else stem), ext.lower()


class TarSampleReader:
    """Iterate the samples (dicts `{"__key__", "__url__", ext: bytes, ...}`) of one tar shard.

    `skip` samples are passed over without reading their data (used to resume inside a shard); after them, every
    `stride`-th sample is yielded and the others are passed over too (a shard shared by several streams, each
    reading its own stride of it). Members larger
    than `max_member_bytes` are not read; their sample carries `"__skip__": "oversized_member"`.
    After iteration, `error` is None for a clean shard, or one of "unreadable_shard" (could not be opened)
    and "truncated_tar" (damaged or cut short while reading).
    """

    def __init__(self, url: str, skip: int = 0, max_member_bytes: int = 256 << 20, stride: int = 1):
        self.url = url
        self.skip = skip
        self.stride = stride
        self.max_member_bytes = max_member_bytes
        self.error: str | None = None
        self.error_detail = ""
        self.samples = 0  # samples in the shard (all of them, also those passed over), known once it has been read

    def __iter__(self) -> Iterator[dict]:
        try:
            fileobj = open_url(self.url)
        except (OSError, ValueError, DatasetError) as e:
            self.error, self.error_detail = "unreadable_shard", f"{type(e).__name__}: {e}"
            return
        with fileobj:
            yield from self._read(fileobj)

    def _read(self, fileobj) -> Iterator[dict]:
        current: dict | None = None
        index = 0  # index of `current` among the shard's samples

        def wanted(i: int) -> bool:
            return i >= self.skip and (i - self.skip) % self.stride == 0
        try:
            with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
                for member in tf:
                    parts = split_member_name(member.name) if member.isfile() else None
                    if parts is None:
                        continue
                    key, ext = parts
                    if current is None or current["__key__"] != key:
                        if current is not None:
                            if wanted(index):
                                yield current
                            index += 1
                        current = {"__key__": key, "__url__": self.url}
                        self.samples = index + 1
                    if not wanted(index) or ext in current:
                        continue  # passed over, or a duplicate member: keep the first
                    if member.size > self.max_member_bytes:
                        current["__skip__"] = "oversized_member"
                        continue
                    current[ext] = tf.extractfile(member).read()
                if _ended_without_marker(tf):
                    # The stream stopped inside a header (or with no end-of-archive block): the last
                    # sample may be missing members, so drop it.
                    self.error, self.error_detail = "truncated_tar", "no end-of-archive marker"
                    return
        except _READ_ERRORS as e:
            self.error, self.error_detail = "truncated_tar", f"{type(e).__name__}: {e}"
            return
        if current is not None and wanted(index):
            yield current


def _ended_without_marker(tf: tarfile.TarFile) -> bool:
    """A complete tar ends with zero blocks after its last member; a cut one ends with less than a block.

    `tarfile` in stream mode silently treats a short header as the end of the archive, so compare how far it
    read (`fileobj.pos`, decompressed bytes) with the end of the last member (`offset`).
    """
    pos, offset = getattr(tf.fileobj, "pos", None), getattr(tf, "offset", None)
    if not isinstance(pos, int) or not isinstance(offset, int):
        return False
    return pos - offset < tarfile.BLOCKSIZE
