"""Short video clips synthesised from still images (a pan across the image), encoded with PyAV.

Used for the tests' mixed image/clip shards and, when the offline data (whose clips are real animations,
``animations.py``) is not built, by the video benchmark. The motion is synthetic (a sliding crop); whatever
uses these clips says so. :func:`encode_clip` also encodes the offline data's rendered animations.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# container extension -> (PyAV format, codec); libx264 at qp 0 is lossless, mpeg4 near it.
CODECS = {"mp4": ("mp4", "libx264"), "webm": ("webm", "libvpx"), "mkv": ("matroska", "libx264"),
          "avi": ("avi", "mpeg4"), "mov": ("mov", "libx264")}


def encode_clip(frames: list[np.ndarray], fps: int = 10, ext: str = "mp4") -> bytes:
    """RGB uint8 frames [H, W, 3] (even sizes) -> the bytes of a clip in the container of ``ext``."""
    import av
    fmt, codec = CODECS[ext]
    buf = io.BytesIO()
    h, w = frames[0].shape[:2]
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"qp": "0", "g": "5"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "1"}
        for a in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def pan_clip(image: Image.Image, frames: int = 12, fps: int = 8, size: int = 32) -> bytes:
    """A clip of ``frames`` frames sliding a ``size`` px window diagonally across ``image`` (resized to 2x)."""
    a = np.asarray(image.convert("RGB").resize((size * 2, size * 2)))
    return encode_clip([a[i * size // frames: i * size // frames + size, i * size // frames: i * size // frames + size]
                        .copy() for i in range(frames)], fps)
