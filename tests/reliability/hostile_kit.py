"""Hostile training shards for the reliability suite: real emoji pairs with ~5% broken samples spread inside."""
from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from data_kit import image_bytes, write_tar
from PIL import Image

from evaclip.train.recipes.tiny import sample_shards

BATCH, GOOD_PER_SHARD = 8, 96


def png_bomb(side: int = 40_000) -> bytes:
    """A real PNG header claiming side x side pixels (1.6 Gpx) over a tiny image stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99)) + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


# (key, members, reason it is skipped for); 10 bad samples among 202, ~5%.
def _bad_samples() -> list[tuple[str, dict[str, bytes], str]]:
    jpeg, png = image_bytes(1, "JPEG", size=(40, 40)), image_bytes(2, "PNG", size=(40, 40))
    return [
        ("bad_truncated_jpeg", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"a cut jpeg"}, "corrupt_image"),
        ("bad_truncated_png", {"png": png[: len(png) - 30], "txt": b"a cut png"}, "corrupt_image"),
        ("bad_text_named_jpg", {"jpg": b"<html>403 Forbidden</html>", "txt": b"wrong extension"}, "corrupt_image"),
        ("bad_zero_bytes", {"jpg": b"", "txt": b"zero-byte image"}, "corrupt_image"),
        ("bad_bomb", {"png": png_bomb(), "txt": b"decompression bomb"}, "decompression_bomb"),
        ("bad_utf8", {"png": png, "txt": b"caf\xe9 \xff\xfe latin-1"}, "invalid_utf8"),
        ("bad_no_caption", {"png": png}, "missing_caption"),
        ("bad_no_image", {"txt": b"a caption without its image"}, "missing_image"),
        ("bad_blank_caption", {"png": png, "txt": b" \n\t "}, "empty_caption"),
        ("bad_json", {"png": png, "json": b"{'caption': 'not json'"}, "invalid_json"),
    ]


def _odd_samples() -> list[tuple[str, dict[str, bytes]]]:
    """Valid samples that naive code chokes on; they must be trained on, not skipped."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8), "RGB")
    sixteen = Image.fromarray((np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16))
    return [
        ("odd_cmyk", {"jpg": _encode(rgb.convert("CMYK"), "JPEG"), "txt": b"a cmyk jpeg"}),
        ("odd_gray16", {"png": _encode(sixteen, "PNG"), "txt": b"a 16-bit grey png"}),
        ("odd_palette", {"png": _encode(rgb.convert("P"), "PNG"), "txt": b"a palette png"}),
        ("odd_png_named_jpg", {"jpg": _encode(rgb, "PNG"), "txt": b"png bytes named jpg"}),
        ("odd_long_caption", {"png": _encode(rgb, "PNG"), "txt": ("very long caption " * 5700).encode()}),
    ]


def emoji_samples(count: int, start: int) -> list[tuple[str, dict[str, bytes]]]:
    with tarfile.open(sample_shards("train")) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    keys = sorted({n.split(".")[0] for n in files})[start:start + count]
    return [(f"emoji_{k}", {"png": files[f"{k}.png"], "txt": files[f"{k}.txt"]}) for k in keys]


def tar_members(samples) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", data) for key, members in samples for ext, data in members.items()]


def hostile_shards(root: Path):
    """Two shards of 96 usable samples each, bad ones spread inside (never first or last, so one pass of the
    usable samples meets every bad one). Returns (pattern, usable keys, expected counts)."""
    bad, odd = _bad_samples(), _odd_samples()
    assert len(odd[-1][1]["txt"]) > 100_000
    shard0 = emoji_samples(GOOD_PER_SHARD - len(odd), 0)
    shard1 = emoji_samples(GOOD_PER_SHARD, 200)
    for i, sample in enumerate(odd):
        shard0.insert(7 + 15 * i, sample)
    for i, (key, members, _) in enumerate(bad):
        (shard0 if i % 2 else shard1).insert(5 + 17 * (i // 2), (key, members))
    root.mkdir(parents=True, exist_ok=True)
    write_tar(root / "h-0.tar", tar_members(shard0))
    write_tar(root / "h-1.tar", tar_members(shard1))
    usable = [k for k, _ in shard0 + shard1 if not k.startswith("bad_")]
    expected = Counter(reason for _, _, reason in bad)
    expected["caption_truncated"] += 1  # the 100 KB caption: cut and trained on, not skipped
    assert len(usable) == 2 * GOOD_PER_SHARD and abs(len(bad) / (len(usable) + len(bad)) - 0.05) < 0.01
    return str(root / "h-{0..1}.tar"), usable, dict(expected)


