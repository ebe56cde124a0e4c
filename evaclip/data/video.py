"""Video clips for training and evaluation: uniform frame sampling and bounded PyAV decoding.

The paper (section 4, Table 9) samples 8 frames uniformly over a clip and represents the clip by the mean of
their embeddings; training and zero-shot evaluation share :func:`frame_indices` here and the feature pooling in
:func:`evaclip.models.clip.video_features`. Decoding seeks to each sampled frame instead of decoding the whole
clip, and refuses oversized input before decoding (like the image decompression-bomb guard): frame pixels over
``max_pixels``, a clip longer than ``max_seconds``. Failures raise :class:`~evaclip.data.decode.SkipSample`
with a counted reason.
"""
from __future__ import annotations

import io
from fractions import Fraction

from PIL import Image

from evaclip.errors import DatasetError


def frame_indices(total: int, num_frames: int) -> list[int]:
    """Uniform sampling: the centre frame of each of ``num_frames`` equal segments (1 -> the middle frame)."""
    if total <= 0:
        return []
    return [min(total - 1, int((i + 0.5) * total / num_frames)) for i in range(num_frames)]


def decode_video(data: bytes, num_frames: int, max_pixels: int, max_seconds: float) -> list[Image.Image]:
    """``num_frames`` RGB frames sampled uniformly over the clip in ``data`` (:func:`frame_indices`).

    Raises SkipSample: ``corrupt_video`` (unreadable, no video stream, a sampled frame that cannot be decoded),
    ``decompression_bomb`` (frames over ``max_pixels``), ``video_too_long`` (over ``max_seconds``),
    ``short_video`` (fewer frames than ``num_frames``). A missing PyAV is a DatasetError, not a skip.
    """
    from evaclip.data.decode import SkipSample
    try:
        import av
    except ImportError:
        raise DatasetError("the training data has video clips; decoding them needs PyAV: pip install av") from None
    failures = (av.error.FFmpegError, OSError, ValueError, EOFError, IndexError, ZeroDivisionError)
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except failures as e:
        raise SkipSample("corrupt_video", f"{type(e).__name__}: {e}") from None
    with container:
        if not container.streams.video:
            raise SkipSample("corrupt_video", "no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise SkipSample("decompression_bomb", f"{width}x{height} video frames")
        fps = stream.average_rate or stream.guessed_rate
        if not width or not height or not fps:
            raise SkipSample("corrupt_video", "no frame size or frame rate")
        fps = Fraction(fps)
        if stream.duration is not None:
            seconds = Fraction(stream.duration) * stream.time_base
        elif container.duration is not None:
            seconds = Fraction(container.duration, 1_000_000)
        else:
            raise SkipSample("corrupt_video", "no duration")
        if seconds > max_seconds:
            raise SkipSample("video_too_long", f"{float(seconds):.0f} s")
        total = stream.frames or int(seconds * fps)
        if total < num_frames:
            raise SkipSample("short_video", f"{total} frames, {num_frames} wanted")
        wanted = frame_indices(total, num_frames)
        start = Fraction(stream.start_time or 0) * stream.time_base
        picked: dict[int, Image.Image] = {}
        try:
            for index in sorted(set(wanted)):
                at = start + Fraction(index) / fps  # this frame's time; frames from half a frame before count
                container.seek(int((at - start) / stream.time_base + (stream.start_time or 0)), stream=stream,
                               backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is not None and Fraction(frame.pts) * stream.time_base >= at - 1 / (2 * fps):
                        picked[index] = frame.to_image()
                        break
                if index not in picked:
                    raise SkipSample("corrupt_video", f"frame {index} of {total} cannot be decoded")
        except failures as e:
            raise SkipSample("corrupt_video", f"{type(e).__name__}: {e}") from None
    return [picked[i].convert("RGB") for i in wanted]
