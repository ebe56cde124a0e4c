"""Hostile data: every kind of broken sample is skipped and counted per reason; the run goes on."""
from __future__ import annotations

import io
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from data_kit import config, image_bytes, keys_of, loader, take, to_rgb, write_tar
from PIL import Image

from evaclip.data.decode import SKIP_REASONS, SkipSample, decode_caption, decode_image, find_image_bytes
from evaclip.data.tario import TarSampleReader

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header claiming width x height pixels, with a tiny (wrong-sized) image stream behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def odd_but_valid_images() -> dict[str, bytes]:
    rgb = Image.fromarray(np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3), "RGB")
    sixteen = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)  # mode I;16
    return {
        "cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "gray16.png": _encode(sixteen, "PNG"),
        "palette.png": _encode(rgb.convert("P"), "PNG"),
        "rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "la.png": _encode(rgb.convert("LA"), "PNG"),
        "bilevel.png": _encode(rgb.convert("1"), "PNG"),
        "pngnamed.jpg": image_bytes(3, "PNG"),     # wrong extension but real image bytes: fine
        "photo.webp": _encode(rgb, "WEBP"),
    }


# (members of one bad sample, the reason it must be counted under)
BAD_SAMPLES = [
    ({"jpg": image_bytes(1, "JPEG")[:200], "txt": b"broken jpeg"}, "corrupt_image"),
    ({"jpg": b"", "txt": b"zero bytes"}, "corrupt_image"),
    ({"jpg": b"this is text, not an image", "txt": b"text named jpg"}, "corrupt_image"),
    ({"png": bomb_png(), "txt": b"a bomb"}, "decompression_bomb"),
    ({"png": image_bytes(2), "txt": b"   \n"}, "empty_caption"),
    ({"png": image_bytes(2), "txt": b"caf\xe9 latin-1"}, "invalid_utf8"),
    ({"png": image_bytes(2)}, "missing_caption"),
    ({"txt": b"caption without image"}, "missing_image"),
    ({"png": image_bytes(2), "json": b"{not json"}, "invalid_json"),
]


def _sample(key: str, members: dict) -> list[tuple[str, bytes]]:
    return [(f"{key}.{ext}", data) for ext, data in members.items()]


def _good(key: str, i: int) -> list[tuple[str, bytes]]:
    return _sample(key, {"jpg": image_bytes(i, "JPEG"), "txt": f"good {key}".encode()})


def hostile_shards(root):
    """Shards where every bad kind occurs once, each shard starting and ending with a good sample.

    Returns (pattern, number of good samples in one pass, expected skip counts for one pass).
    """
    root.mkdir(parents=True, exist_ok=True)
    good = 0
    expected = Counter()
    # Shard 0: the bad samples. Shard 1: odd-but-valid images, a JSON caption and a 100 KB caption.
    members = _good("s0_first", 0)
    for i, (sample, reason) in enumerate(BAD_SAMPLES):
        members += _sample(f"s0_bad{i}", sample)
        expected[reason] += 1
    members += _good("s0_last", 1)
    good += 2
    write_tar(root / "h-0.tar", members)
    members = _good("s1_first", 2)
    for name, data in odd_but_valid_images().items():
        stem, ext = name.split(".")
        members += _sample(f"s1_{stem}", {ext: data, "txt": f"odd {stem}".encode()})
    members += _sample("s1_json", {"png": image_bytes(4), "json": b'{"caption": "from json", "url": "x"}'})
    members += _sample("s1_long", {"png": image_bytes(5), "txt": ("word " * 20_000).encode()})
    expected["caption_truncated"] += 1
    members += _good("s1_last", 6)
    good += len(odd_but_valid_images()) + 4
    write_tar(root / "h-1.tar", members)
    # Shard 2: truncated in the middle of its data. Shard 3 is missing (a hole in the range).
    members = [m for i in range(6) for m in _good(f"s2_{i}", 10 + i)]
    raw = write_tar(root / "h-2.tar", members).read_bytes()
    (root / "h-2.tar").write_bytes(raw[: len(raw) // 2 + 100])
    good += len(list(TarSampleReader(str(root / "h-2.tar"))))
    expected["truncated_tar"] += 1
    expected["unreadable_shard"] += 1
    return str(root / "h-{0..3}.tar"), good, expected


@pytest.mark.parametrize("data,reason", BAD_SAMPLES, ids=[r for _, r in BAD_SAMPLES])
def test_each_bad_sample_is_refused_with_its_reason(data, reason):
    with pytest.raises(SkipSample) as err:
        decode_caption(data, 1000)  # the pipeline's order: caption first, then the image
        decode_image(find_image_bytes(data))
    assert err.value.reason == reason
    assert reason in SKIP_REASONS


@pytest.mark.parametrize("name", sorted(odd_but_valid_images()))
def test_odd_images_decode_to_rgb(name):
    image = to_rgb(decode_image(odd_but_valid_images()[name]))
    assert image.mode == "RGB" and image.size == (12, 10)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(SkipSample) as err:
        decode_image(image_bytes(0, size=(12, 10)), max_pixels=119)
    assert err.value.reason == "decompression_bomb"
    assert decode_image(image_bytes(0, size=(12, 10)), max_pixels=120).size == (12, 10)


def test_long_caption_is_cut_not_skipped():
    caption, cut = decode_caption({"txt": b"x" * 100_000}, 4096)
    assert cut and caption == "x" * 4096


def test_one_pass_over_hostile_shards_counts_every_skip(tmp_path):
    pattern, good, expected = hostile_shards(tmp_path)
    cfg = config(pattern, resampled=False, batch_size=1, interleave=1, shuffle_window=1, canonical_streams=1)
    ld = loader(cfg)
    # One pass gives `good` batches; the batch after it also flushes the end of the last shard of the pass.
    batches = take(ld, good + 1)
    keys = keys_of(batches[:good])
    assert len(set(keys)) == good and not any("bad" in k for k in keys)
    assert dict(ld.skip_counts) == dict(expected)
    long = next(tok for _, tok, info in batches if info["keys"] == ["s1_long"])
    assert long.shape == (1, 24)


def test_run_with_workers_over_hostile_shards_completes(tmp_path):
    pattern, _, expected = hostile_shards(tmp_path)
    ld = loader(config(pattern, num_workers=2, resampled=True, batch_size=8, timeout_s=60.0))
    batches = take(ld, 40)
    ld.close()
    assert len(batches) == 40 and all(b[0].shape == (8, 3, 8, 8) for b in batches)
    assert set(ld.skip_counts) == set(expected)  # every kind met and reported
    assert sum(sum(info["skips"].values()) for _, _, info in batches) == sum(ld.skip_counts.values())
