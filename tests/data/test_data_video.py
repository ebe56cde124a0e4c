"""Video clips in the training data (evaclip/data/video.py and the pipeline): uniform frame sampling against a
naive reference on real encoded clips, bounded decoding, and clips mixed with images in one order."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_kit import config, loader

from evaclip.data.decode import SkipSample
from evaclip.data.video import decode_video

av = pytest.importorskip("av")
from video_kit import gray_clip, mixed_shard  # noqa: E402

from evaclip.train.recipes.tiny import sample_shards  # noqa: E402


def _indices(frames) -> list[int]:
    return [int(round(np.asarray(f).mean() / 10)) for f in frames]


@pytest.mark.parametrize("n,fps,ext", [(20, 10, "mp4"), (9, 25, "mp4"), (24, 30, "webm"), (17, 7, "avi"),
                                       (8, 24, "mkv"), (25, 12, "mov")])
@pytest.mark.parametrize("num_frames", [1, 8])
def test_frames_are_sampled_uniformly_like_the_naive_reference(n, fps, ext, num_frames):
    got = _indices(decode_video(gray_clip(n, fps, ext), num_frames, 10**6, 60))
    naive = [int((i + 0.5) * n / num_frames) for i in range(num_frames)]  # the centre of each equal segment
    assert got == naive


@pytest.mark.parametrize("data,kwargs,reason", [
    (lambda: gray_clip(5), {}, "short_video"),
    (lambda: gray_clip(20, fps=2), {"max_seconds": 5}, "video_too_long"),
    (lambda: gray_clip(10), {"max_pixels": 100}, "decompression_bomb"),
    (lambda: b"\x00\x00\x00\x18ftypmp42 garbage" * 10, {}, "corrupt_video"),
    (lambda: gray_clip(30)[:700], {}, "corrupt_video"),
    (lambda: b"", {}, "corrupt_video"),
])
def test_unusable_clips_are_skipped_with_their_reason(data, kwargs, reason):
    limits = {"max_pixels": 10**6, "max_seconds": 60} | kwargs
    with pytest.raises(SkipSample) as e:
        decode_video(data(), 8, limits["max_pixels"], limits["max_seconds"])
    assert e.value.reason == reason


def _run(pattern, world, steps, **kw):
    # Epochs (no resampling): every sample, the broken clips too, is met within the first passes.
    loaders = [loader(config(pattern, num_workers=0, global_batch_size=6, canonical_streams=6, video_frames=4,
                             resampled=False, **kw), r, world) for r in range(world)]
    its, out = [iter(ld) for ld in loaders], []
    for _ in range(steps):
        parts = [next(it) for it in its]
        per_sample = {}
        for images, _, info in parts:
            counts = info.get("frames") or [1] * len(info["keys"])
            assert images.shape[0] == sum(counts)
            for p, key, chunk in zip(info["positions"], info["keys"], images.split(counts)):
                per_sample[p] = (key, chunk)
        out.append([per_sample[p] for p in sorted(per_sample)])
    return out, loaders


def test_clips_and_images_share_one_order_on_any_world_size(tmp_path):
    counts = mixed_shard(tmp_path / "mixed.tar", sample_shards("train"), clips=10, images=10, corrupt=2)
    pattern = str(tmp_path / "mixed.tar")
    one, loaders = _run(pattern, 1, 5)
    two, _ = _run(pattern, 2, 5)
    clips = [chunk for step in one for key, chunk in step if key.startswith("clip")]
    assert clips and all(chunk.shape[0] == 4 for chunk in clips)  # 4 frames per clip
    assert all(chunk.shape[0] == 1 for step in one for key, chunk in step if not key.startswith("clip"))
    assert any(not torch.equal(c[0], c[-1]) for c in clips)  # the frames move (a pan), one crop for all
    for a, b in zip(one, two):
        assert [k for k, _ in a] == [k for k, _ in b]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert not any(k.startswith("broken") for step in one for k, _ in step)
    assert counts["corrupt"] <= sum(ld.skip_counts.get("corrupt_video", 0) for ld in loaders) <= 2 * counts["corrupt"]
