"""Real video clips for the tests: encoded with PyAV (libx264, lossless), each frame a known gray level or a pan
across a real image (evaclip_demo.offline.clips), packed with images into webdataset shards."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from evaclip_demo.offline.clips import encode_clip as encode
from evaclip_demo.offline.clips import pan_clip


def gray_clip(n: int, fps: int = 10, ext: str = "mp4", step: int = 10, size=(32, 24)) -> bytes:
    """Frame i is gray level i * step: a decoded frame tells its index."""
    return encode([np.full((size[1], size[0], 3), (i * step) % 256, np.uint8) for i in range(n)], fps, ext)


def mixed_shard(path: Path, source_tar: str | Path, clips: int = 12, images: int = 20,
                corrupt: int = 1) -> dict[str, int]:
    """A shard of `images` real image-caption pairs, `clips` mp4 pans made from other pairs of `source_tar`
    (caption kept), and `corrupt` clips of garbage bytes. Returns the counts written."""
    with tarfile.open(source_tar) as tf:
        members = {}
        for m in tf.getmembers():
            key, _, ext = m.name.partition(".")
            members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    keys = sorted(members)[: images + clips]
    out = []
    for i, key in enumerate(keys):
        sample = members[key]
        caption = sample.get("txt", b"an emoji")
        image_ext = next(e for e in ("png", "jpg", "webp") if e in sample)
        if i < images:
            out += [(f"{key}.{image_ext}", sample[image_ext]), (f"{key}.txt", caption)]
        else:
            clip = pan_clip(Image.open(io.BytesIO(sample[image_ext])))
            out += [(f"clip{key}.mp4", clip), (f"clip{key}.txt", caption)]
    for j in range(corrupt):
        out += [(f"broken{j:03d}.mp4", b"\x00\x00\x00\x18ftypmp42 not a real clip" * 8),
                (f"broken{j:03d}.txt", b"a broken clip")]
    with tarfile.open(path, "w") as tf:
        for name, data in out:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return {"images": images, "clips": clips, "corrupt": corrupt}
