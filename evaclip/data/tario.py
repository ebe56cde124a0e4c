"""Streaming reader for webdataset tar shards: members grouped into samples by key.

A shard holds consecutive members `{key}.{ext}` (e.g. `000123.jpg`, `000123.txt`, `000123.json`), as img2dataset
writes them. The key is the member path up to the first dot of its file name, as in webdataset; the extension
(lower-cased) is everything after that dot. The tar is read once, front to back (`tarfile` stream mode), so the
same code reads local files, fsspec streams and compressed tars.

A truncated or unreadable shard never raises: the samples read before the damage are yielded, the sample being
read when the damage was hit is dropped, and :attr:`TarSampleReader.error` says what went wrong.

With fewer shards than canonical streams, several streams read their own stride of one shard, each passing over
the others' samples: every one of them would parse the whole shard. So the first complete stride read of a clean
local ``.tar`` records where each sample's members lie (a layout: offsets and sizes, no data), and later readers of
the same unchanged file in this process seek to their members instead. They yield exactly what a full read does.
"""
from __future__ import annotations

import os
import tarfile
import zlib
from collections import OrderedDict
from typing import Iterator

from evaclip.data.shards import is_local, local_path, open_url
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


# A clean local tar's samples: (key, [(ext, offset of the data, size), ...]) in shard order, every file member.
# Keyed by path; valid while the file's (size, mtime, inode) are unchanged.
Layout = list[tuple[str, list[tuple[str, int, int]]]]
_LAYOUTS: OrderedDict[str, tuple[tuple[int, int, int], Layout]] = OrderedDict()
_MAX_LAYOUTS = 512  # shards; a layout holds a few numbers per member, not the data


def _signature(url: str) -> tuple[str, tuple[int, int, int]] | None:
    """(path, (size, mtime_ns, inode)) of an uncompressed local tar, the only kind a layout can seek in."""
    if not is_local(url) or not url.endswith(".tar"):
        return None
    path = local_path(url)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, (st.st_size, st.st_mtime_ns, st.st_ino)


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

    def _wanted(self, i: int) -> bool:
        return i >= self.skip and (i - self.skip) % self.stride == 0

    def _keep(self, sample: dict, ext: str, size: int) -> bool:
        """Whether to read a member into ``sample``: not a duplicate (the first is kept), not oversized (marked)."""
        if ext in sample:
            return False
        if size > self.max_member_bytes:
            sample["__skip__"] = "oversized_member"
            return False
        return True

    def __iter__(self) -> Iterator[dict]:
        local = _signature(self.url)
        known = _LAYOUTS.get(local[0]) if local else None
        if known is not None and known[0] == local[1]:
            _LAYOUTS.move_to_end(local[0])
            yield from self._replay(local[0], known[1])
            return
        try:
            fileobj = open_url(self.url)
        except (OSError, ValueError, DatasetError) as e:
            self.error, self.error_detail = "unreadable_shard", f"{type(e).__name__}: {e}"
            return
        # Only a shard shared by several streams (read in strides) is read again by this process soon.
        layout: Layout | None = [] if local and self.stride > 1 else None
        with fileobj:
            yield from self._read(fileobj, layout)
        if layout is not None and self.error is None:  # read to the end, clean: later readers may seek
            _LAYOUTS[local[0]] = (local[1], layout)
            while len(_LAYOUTS) > _MAX_LAYOUTS:
                _LAYOUTS.popitem(last=False)

    def _replay(self, path: str, layout: Layout) -> Iterator[dict]:
        """The samples a full read yields, read by seeking to the wanted samples' members."""
        self.samples = len(layout)
        try:
            with open(path, "rb") as f:
                for index, (key, members) in enumerate(layout):
                    if not self._wanted(index):
                        continue
                    sample: dict = {"__key__": key, "__url__": self.url}
                    for ext, offset, size in members:
                        if self._keep(sample, ext, size):
                            f.seek(offset)
                            sample[ext] = f.read(size)
                    yield sample
        except OSError as e:  # the file vanished or became unreadable since its layout was taken
            self.error, self.error_detail = "truncated_tar", f"{type(e).__name__}: {e}"

    def _read(self, fileobj, layout: Layout | None = None) -> Iterator[dict]:
        current: dict | None = None
        index = 0  # index of `current` among the shard's samples
        wanted = self._wanted
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
                        if layout is not None:
                            layout.append((key, []))
                    if layout is not None:
                        layout[-1][1].append((ext, member.offset_data, member.size))
                    if wanted(index) and self._keep(current, ext, member.size):
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
