"""Turning a raw sample (bytes per extension) into a PIL image and a caption, or a reason to skip it.

Web data is full of broken files. Nothing here raises for bad data: :class:`SkipSample` carries one of
:data:`SKIP_REASONS`, which the pipeline counts and reports with each batch.
"""
from __future__ import annotations

import io
import json
import warnings

from PIL import Image

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")  # webdataset members of video samples

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_JSON_FIELDS = ("caption", "text")

# Default pixel limit, checked from the image header before any decoding: Pillow's own MAX_IMAGE_PIXELS
# (~89.5 Mpx, a 9459x9459 image), at which a decoded RGB image takes ~270 MB.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Every reason a sample (or a shard) can be skipped for. The pipeline counts each one.
SKIP_REASONS = (
    "missing_image",        # no image (jpg/jpeg/png/webp) or video member, or the image file is gone
    "corrupt_image",        # not an image, truncated, zero bytes, or Pillow cannot decode it
    "decompression_bomb",   # width*height from the header is over the pixel limit
    "missing_caption",      # no txt member and no usable json caption
    "empty_caption",        # caption is empty or only whitespace
    "invalid_utf8",         # caption bytes are not UTF-8
    "invalid_json",         # json member is not a JSON object (and there is no txt)
    "oversized_member",     # a tar member larger than the per-member byte limit
    "transform_error",      # the train transform raised on a decoded image
    "corrupt_video",        # a clip PyAV cannot open, without a video stream, or a sampled frame that fails
    "short_video",          # fewer frames than data.video_frames
    "video_too_long",       # longer than data.max_video_seconds (checked before decoding)
    "unreadable_shard",     # a shard could not be opened (missing file, permission, network)
    "truncated_tar",        # a shard ended early or is damaged; the samples before the damage are kept
)
# Counted but not skipped: captions cut to the length limit (the tokenizer keeps only 77 tokens anyway).
INFO_COUNTERS = ("caption_truncated",)


class SkipSample(Exception):
    """A sample cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def find_video_bytes(sample: dict) -> bytes | None:
    """The first video member of a sample (by VIDEO_EXTENSIONS order), or None for an image sample."""
    for ext in VIDEO_EXTENSIONS:
        data = sample.get(ext)
        if data is not None:
            return data
    return None


def find_image_bytes(sample: dict) -> bytes:
    """The first image member of a sample, by IMAGE_EXTENSIONS order."""
    for ext in IMAGE_EXTENSIONS:
        data = sample.get(ext)
        if data is not None:
            return data
    raise SkipSample("missing_image")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes fully; the pixel count is checked from the header first, so a bomb costs nothing.

    The format is sniffed from the bytes, not from the file extension (PNG bytes named .jpg decode fine).
    """
    if not data:
        raise SkipSample("corrupt_image", "zero bytes")
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below; Pillow's global one must not raise or warn first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise SkipSample("decompression_bomb", f"{width}x{height} > {max_pixels} pixels")
            image.load()
    except SkipSample:
        raise
    except Image.DecompressionBombError as e:
        raise SkipSample("decompression_bomb", str(e)) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        raise SkipSample("corrupt_image", f"{type(e).__name__}: {e}") from None
    if width <= 0 or height <= 0:
        raise SkipSample("corrupt_image", "empty image")
    return image


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SkipSample("invalid_utf8") from None


def decode_caption(sample: dict, max_chars: int) -> tuple[str, bool]:
    """The caption from `txt`, else from the "caption"/"text" field of `json`; returns (caption, truncated).

    Captions longer than `max_chars` are cut, not skipped: the tokenizer keeps only the first tokens anyway,
    and the cut keeps tokenizing cheap on hostile 100 KB captions.
    """
    if sample.get("txt") is not None:
        caption = _text(sample["txt"])
    elif sample.get("json") is not None:
        try:
            meta = json.loads(_text(sample["json"]))
        except json.JSONDecodeError:
            raise SkipSample("invalid_json") from None
        if not isinstance(meta, dict):
            raise SkipSample("invalid_json", "not an object")
        fields = [meta[k] for k in CAPTION_JSON_FIELDS if isinstance(meta.get(k), str)]
        if not fields:
            raise SkipSample("missing_caption", "json has no caption/text field")
        caption = fields[0]
    else:
        raise SkipSample("missing_caption")
    caption = caption.strip()
    if not caption:
        raise SkipSample("empty_caption")
    if len(caption) > max_chars:
        return caption[:max_chars], True
    return caption, False
