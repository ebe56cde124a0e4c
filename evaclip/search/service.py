"""A loaded index: vector search, metadata, image bytes and thumbnails, and batched, cached text embedding.

Everything the HTTP layer (:mod:`evaclip.search.app`) needs, without HTTP, so it can be tested and used directly::

    from evaclip.search import SearchIndex
    index = SearchIndex("idx")
    index.search_text("a red circle", k=10)      # [{"id", "path", "score", "caption", ...}, ...] best first
"""
from __future__ import annotations

import asyncio
import io
import os
import tarfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from evaclip.data.decode import IMAGE_EXTENSIONS
from evaclip.data.tario import split_member_name
from evaclip.errors import EvaclipError
from evaclip.search import store
from evaclip.search.encoder import Encoder, load_recorded
from evaclip.search.sources import inside

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
        "TIFF": "image/tiff", "PPM": "image/x-portable-pixmap"}
THUMB_SIZE = 256


class NotInIndex(LookupError):
    """An image id the index does not have, or whose file is gone or lies outside the indexed root."""


class LRU:
    """A small thread-safe LRU map."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        return None

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class MicroBatcher:
    """Coalesces concurrent single-item calls into batched calls of ``fn(list) -> list``.

    A call waits for the end of the current event-loop tick, so requests that arrive together go in one
    batch; while a batch runs (on one worker thread), new calls queue up and go together in the next one.
    Under no load a request pays no added wait; under load the batch grows to ``max_batch``.
    """

    def __init__(self, fn: Callable[[list], Sequence], max_batch: int = 64):
        self.fn = fn
        self.max_batch = max_batch
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="evaclip-batch")
        self.pending: list = []
        self.busy = False
        self.scheduled = False
        self.batches = 0
        self.items = 0

    async def __call__(self, item):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((item, future))
        if not self.busy and not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self.scheduled = False
        if self.busy or not self.pending:
            return
        batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
        self.busy = True
        asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        except Exception as e:  # noqa: BLE001 - handed to every waiter, which reports it
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        finally:
            self.busy = False
            if self.pending:
                self._start()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class SearchIndex:
    """An index folder opened for search; the model is rebuilt from the manifest and checked (see encoder)."""

    def __init__(self, index_dir: str | Path, *, pretrained: str | None = None, device: str = "cpu",
                 nprobe: int | None = None, encoder: Encoder | None = None, text_cache: int = 4096,
                 thumb_cache: int = 2048, max_pixels: int = 40_000_000):
        self.dir = Path(index_dir)
        where = f"index {self.dir}"
        manifest = store.read_manifest(self.dir)
        if not manifest.get("complete"):
            raise store.IndexFormatError(f"{where} is incomplete (an `evaclip index` run was interrupted); run "
                                         "the same command again to finish it")
        parts = store.list_parts(self.dir)
        if [p.name for p in parts] != list(manifest.get("parts", [])):
            raise store.IndexFormatError(f"{where}: its parts changed after it was built (or an index run is "
                                         "going on); run `evaclip index` again to finish it")
        columns = {c: [] for c in ("image_path", "caption", "width", "height", "shard", "key")}
        for part in parts:
            _, table, _ = store.read_part(part, embeddings=False)
            for c in columns:
                columns[c].extend(table.column(c).to_pylist())
        self.meta = columns
        self.count = len(columns["image_path"])
        self.faiss = store.read_faiss(self.dir)
        self.manifest = manifest
        self.model_record = manifest["model"]
        dim = int(self.model_record["embed_dim"])
        if self.faiss.ntotal != self.count or manifest.get("count") != self.count or self.faiss.d != dim:
            raise store.IndexFormatError(
                f"{where}: the FAISS index has {self.faiss.ntotal} {self.faiss.d}-d vectors but the metadata "
                f"{self.count} rows of {dim}-d; run `evaclip index` again to rebuild it")
        if nprobe is not None:
            if nprobe < 1:
                raise EvaclipError(f"--nprobe must be >= 1, got {nprobe}")
            if hasattr(self.faiss, "nprobe"):
                self.faiss.nprobe = nprobe
        self.root = Path(manifest["source"]["root"])
        self.root_real = os.path.realpath(self.root)
        self.encoder = encoder if encoder is not None else load_recorded(
            self.model_record, where, pretrained=pretrained, device=device)
        self.max_pixels = max_pixels
        self.text_cache = LRU(text_cache)
        self.thumbs = LRU(thumb_cache)
        self._tar_members = LRU(16)
        self.text_batcher = MicroBatcher(self.encoder.encode_texts)
        self.image_batcher = MicroBatcher(self.encoder.encode_images, max_batch=32)
        self.cache_hits = 0

    # -- embeddings -------------------------------------------------------------------------------------------
    def embed_texts_sync(self, texts: list[str]) -> np.ndarray:
        """Text embeddings through the cache (for use outside an event loop)."""
        missing = [t for t in dict.fromkeys(texts) if self.text_cache.get(t) is None]
        if missing:
            for t, v in zip(missing, self.encoder.encode_texts(missing)):
                self.text_cache.put(t, v)
        return np.stack([self.text_cache.get(t) for t in texts])

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Text embeddings through the cache; the misses of concurrent requests are batched together."""
        out: dict[str, np.ndarray] = {}
        missing = []
        for t in dict.fromkeys(texts):
            v = self.text_cache.get(t)
            if v is None:
                missing.append(t)
            else:
                out[t] = v
                self.cache_hits += 1
        if missing:
            vectors = await asyncio.gather(*(self.text_batcher(t) for t in missing))
            for t, v in zip(missing, vectors):
                self.text_cache.put(t, v)
                out[t] = v
        return np.stack([out[t] for t in texts])

    async def embed_image(self, image: Image.Image) -> np.ndarray:
        return await self.image_batcher(image)

    # -- search -----------------------------------------------------------------------------------------------
    def search_vector(self, query: np.ndarray, k: int) -> list[dict]:
        """The k nearest rows to one query vector (inner product = cosine), best first."""
        if self.count == 0:
            return []
        q = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
        scores, ids = self.faiss.search(q, min(k, self.count))
        return [self.result(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def search_text(self, text: str, k: int = 10) -> list[dict]:
        return self.search_vector(self.embed_texts_sync([text])[0], k)

    def result(self, i: int, score: float) -> dict:
        m = self.meta
        return {"id": i, "path": m["image_path"][i], "score": score, "url": f"/images/{i}",
                "thumbnail": f"/thumbs/{i}", "caption": m["caption"][i], "width": m["width"][i],
                "height": m["height"][i]}

    # -- images -----------------------------------------------------------------------------------------------
    def image_bytes(self, i: int) -> bytes:
        """The stored bytes of image `i`, read only from inside the indexed root; NotInIndex otherwise."""
        if not 0 <= i < self.count:
            raise NotInIndex(i)
        shard = self.meta["shard"][i]
        if shard is None:
            path = os.path.join(self.root, self.meta["image_path"][i])
            return self._read_inside(path, i)
        return self._read_member(os.path.join(self.root, shard), self.meta["key"][i], i)

    def _read_inside(self, path: str, i: int) -> bytes:
        # Checked at every request: a file swapped for a symlink after indexing must not lead out of the root.
        if not inside(path, self.root_real) or not os.path.isfile(path):
            raise NotInIndex(i)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            raise NotInIndex(i) from None

    def _read_member(self, shard: str, key: str, i: int) -> bytes:
        if not inside(shard, self.root_real) or not os.path.isfile(shard):
            raise NotInIndex(i)
        stamp = os.stat(shard).st_mtime_ns
        members = self._tar_members.get((shard, stamp))
        try:
            if members is None:
                members = {}
                with tarfile.open(shard, "r:*") as tf:
                    for m in tf.getmembers():
                        parts = split_member_name(m.name) if m.isfile() else None
                        # The same key and image-extension rule as the training reader that indexed it.
                        if parts is not None and parts[1] in IMAGE_EXTENSIONS and parts[0] not in members:
                            members[parts[0]] = m.name
                self._tar_members.put((shard, stamp), members)
            name = members.get(key)
            if name is None:
                raise NotInIndex(i)
            with tarfile.open(shard, "r:*") as tf:
                f = tf.extractfile(name)
                return f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError):
            raise NotInIndex(i) from None

    def image(self, i: int) -> tuple[bytes, str]:
        """(bytes, content type) of image `i`; the type is sniffed from the bytes, never taken from the name."""
        data = self.image_bytes(i)
        try:
            with Image.open(io.BytesIO(data)) as im:
                mime = MIME.get(im.format or "")
        except (OSError, ValueError, SyntaxError):
            mime = None
        if mime is None:
            raise NotInIndex(i)
        return data, mime

    def thumbnail(self, i: int) -> bytes:
        """A JPEG of image `i` at most THUMB_SIZE pixels on a side (cached)."""
        cached = self.thumbs.get(i)
        if cached is not None:
            return cached
        from evaclip.data.decode import SkipSample, decode_image
        from evaclip.transforms import to_rgb
        try:
            image = decode_image(self.image_bytes(i), self.max_pixels)
        except SkipSample:
            raise NotInIndex(i) from None
        image = to_rgb(image)
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        self.thumbs.put(i, data)
        return data

    def health(self) -> dict:
        return {"status": "ok", "count": self.count, "model": self.model_record.get("name"),
                "embed_dim": self.model_record.get("embed_dim"), "index": self.manifest.get("index", {}),
                "text_batches": self.text_batcher.batches, "text_batched_items": self.text_batcher.items,
                "text_cache_hits": self.cache_hits}

    def close(self) -> None:
        self.text_batcher.close()
        self.image_batcher.close()
