"""Data pipeline throughput per worker vs the trainer's consumption, and the measured data-wait share.

Five measurements, at the demo settings (batch 128, context 32, one loader worker, the train transform at
the model's image size; ``evaclip_demo.recipes``):

1. Pipeline images/s of ONE worker: ``evaclip.data.make_loader`` with ``num_workers=0`` (decode + augment +
   tokenize + collate in this process), on the offline training shards (``data_cache/offline/train``) or,
   when they are absent, the shipped sample shard ``evaclip/data/sample/tiny-train-000.tar``.
1b. The cost of the world-size-independent order: the same worker over the default canonical streams vs one
   stream (the order of one worker before it), alternated in this run; a ratio near 1 means no cost.
1c. Video: clips/s of one worker decoding 8 frames a clip against the trainer's clip rate (its sample rate / 8
   frames): how many workers video data needs. The clips are the offline data's useAnimations clips
   (``data_cache/offline/video/train``, real animations, 16 frames of 64 px) when present, else pan clips
   synthesised from the shard's images.
2. Trainer consumption: samples/s of the training step (forward + backward + AdamW) of the model on
   three distinct pre-loaded real batches (benchmarks/train_step.py's step).
3. End to end: the same step fed by the real loader with ``num_workers=1``, timing how long each
   ``next(loader)`` blocks. data-wait share = blocked time / total time (target < 5%).

The reference for 1 vs 2 is the ratio worker-images/s / trainer-samples/s: above 1, one worker keeps up.
On a 2-core machine the worker and the trainer share the cores, so 3 is the figure that counts.

    .venv/bin/python benchmarks/data_pipeline.py [--model evaclip-small] [--batches 6] [--steps 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning, so process CPU time counts work only (libgomp reads this
# when torch loads it, hence before the import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine_line, median, set_threads, time_repeats  # noqa: E402
from benchmarks.train_step import Batch, make_step  # noqa: E402
from evaclip.data import DataConfig, DataSource, make_loader  # noqa: E402
from evaclip.models.factory import create_model, get_model_config, get_tokenizer, list_models  # noqa: E402
from evaclip.transforms import image_transform  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OFFLINE = REPO / "data_cache" / "offline" / "train"
SAMPLE = REPO / "evaclip" / "data" / "sample" / "tiny-train-000.tar"
DEMO_BATCH, DEMO_CONTEXT = 128, 32


class _Tokenizer:
    """The model's tokenizer at the demo context length, as the loader calls it: ``list[str] -> LongTensor``."""

    def __init__(self, model_name: str, context: int):
        self.tokenizer, self.context = get_tokenizer(model_name), context

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.context)


def shards(path: str | None) -> list[str]:
    if path:
        found = sorted(str(p) for p in Path(path).glob("*.tar")) if Path(path).is_dir() else [path]
    else:
        found = sorted(str(p) for p in OFFLINE.glob("*.tar")) or [str(SAMPLE)]
    if not found:
        raise SystemExit(f"no .tar shards found at {path}")
    return found


def loader_for(urls: list[str], image_size: int, batch: int, workers: int, context: int, tokenizer=None,
               streams: int | None = None):
    cfg = DataConfig(sources=[DataSource(urls, 1.0, "bench")], batch_size=batch, num_workers=workers,
                     resampled=True, seed=0, context_length=context, shuffle_window=64)
    if streams is not None:
        cfg.canonical_streams = streams
    return make_loader(cfg, transform=image_transform(image_size, is_train=True), tokenizer=tokenizer)


def pipeline_rate(urls: list[str], image_size: int, batch: int, batches: int, context: int,
                  tokenizer=None, streams: int | None = None) -> float:
    """Images/s of one worker (the loader runs in this process) in the steady state: after warm-up batches
    that have drawn from every canonical stream (each fills its first shuffle window on first use)."""
    loader = loader_for(urls, image_size, batch, 0, context, tokenizer, streams)
    it = iter(loader)
    for _ in range(1 + -(-loader.cfg.canonical_streams // batch)):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def offline_clips(urls: list[str]) -> list[str]:
    """The offline data's video shards beside its image shards (``OUT/train`` -> ``OUT/video/train``), if built."""
    return sorted(str(p) for p in (Path(urls[0]).parent.parent / "video" / "train").glob("*.tar"))


def video_rate(urls: list[str], image_size: int, frames: int, clips: int = 48, batch: int = 16,
               batches: int = 3) -> tuple[float, str]:
    """Clips/s of ONE worker decoding ``frames`` frames per clip (PyAV, seeking) + the train transform, and what
    the clips were: the offline useAnimations clips when built, else pan clips synthesised from the first
    shard's images (evaclip_demo.offline.clips: the motion is synthetic)."""
    import io
    import tarfile
    import tempfile

    from PIL import Image

    from evaclip.data.tario import TarSampleReader
    from evaclip_demo.offline.clips import pan_clip
    real = offline_clips(urls)
    if real:
        return _clip_rate(real, image_size, frames, batch, batches), "useAnimations clips, 16 frames of 64 px"
    samples = [s for _, s in zip(range(clips), TarSampleReader(urls[0]))]
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "clips.tar"
        with tarfile.open(shard, "w") as tf:
            for i, s in enumerate(samples):
                image = next(s[e] for e in ("png", "jpg", "jpeg", "webp") if e in s)
                clip = pan_clip(Image.open(io.BytesIO(image)), frames=max(frames, 12), size=64)
                for name, data in ((f"{i:05d}.mp4", clip), (f"{i:05d}.txt", s.get("txt", b"a clip"))):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        return _clip_rate([str(shard)], image_size, frames, batch, batches), "64 px pan clips (synthetic motion)"


def _clip_rate(shards: list[str], image_size: int, frames: int, batch: int, batches: int) -> float:
    cfg = DataConfig(sources=[DataSource(shards, 1.0, "clips")], batch_size=batch, num_workers=0,
                     resampled=True, seed=0, video_frames=frames, canonical_streams=8)
    it = iter(make_loader(cfg, transform=image_transform(image_size, is_train=True)))
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batch * batches / (time.perf_counter() - start)


def end_to_end(model, urls: list[str], image_size: int, batch: int, steps: int, context: int,
               tokenizer=None) -> dict:
    """Train ``steps`` steps from the real loader (1 worker); return wait and step times."""
    loader = loader_for(urls, image_size, batch, 1, context, tokenizer)
    it = iter(loader)
    # Worker start-up and every canonical stream's first window are not part of the steady state.
    for _ in range(1 + -(-loader.cfg.canonical_streams // batch)):
        images, tokens, _ = next(it)
    step = make_step(model, Batch(images, tokens))
    step()
    wait = compute = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        images, tokens, _ = next(it)
        t1 = time.perf_counter()
        step(Batch(images, tokens))
        t2 = time.perf_counter()
        wait, compute = wait + (t1 - t0), compute + (t2 - t1)
    return {"wait_s": wait, "compute_s": compute, "share": wait / (wait + compute),
            "samples_per_s": batch * steps / (wait + compute)}


def run(model_name: str, data: str | None, batches: int, steps: int, threads: int, batch: int = DEMO_BATCH,
        verbose: bool = True) -> dict:
    set_threads(threads)
    cfg = get_model_config(model_name)
    size, context = cfg.vision_cfg.image_size, min(DEMO_CONTEXT, cfg.text_cfg.context_length)
    urls = shards(data)
    tokenizer = _Tokenizer(model_name, context)  # the model's own (the demo student has a BERT text tower)
    per_worker = pipeline_rate(urls, size, batch, batches, context, tokenizer)
    # The world-size-independent order (default canonical streams) against one stream, the order of a single
    # worker before it (each worker read its own shards): alternated, best of 3 each.
    single, canonical = [], []
    for _ in range(3):
        single.append(pipeline_rate(urls, size, batch, batches, context, tokenizer, streams=1))
        canonical.append(pipeline_rate(urls, size, batch, batches, context, tokenizer))
    order_ratio = max(canonical) / max(single)
    torch.manual_seed(0)
    model = create_model(model_name)
    # Distinct pre-loaded batches: a frozen Hugging Face text tower caches features, so repeating one batch
    # would flatter the trainer.
    it = iter(loader_for(urls, size, batch, 0, context, tokenizer))
    preloaded = [Batch(*next(it)[:2]) for _ in range(4)]
    step = make_step(model, preloaded[0])
    step()
    consume = batch / median(time_repeats(lambda: [step(b) for b in preloaded[1:]], repeats=1, warmup=0).wall) * 3
    e2e = end_to_end(model, urls, size, batch, steps, context, tokenizer)
    frames = DataConfig().video_frames
    clips_per_s, clip_kind = video_rate(urls, size, frames)
    # A clip costs the trainer about `frames` vision passes (the text tower once): its clip rate is at most
    # its sample rate / frames; the vision tower dominates these models, so that is the estimate used.
    trainer_clips = consume / frames
    out = {"model": model_name, "shards": len(urls), "worker_images_per_s": per_worker,
           "canonical_vs_one_stream": order_ratio, "worker_clips_per_s": clips_per_s, "clips": clip_kind,
           "trainer_clips_per_s": trainer_clips, "video_workers_needed": trainer_clips / clips_per_s,
           "trainer_samples_per_s": consume, "workers_needed": consume / per_worker, "end_to_end": e2e}
    if verbose:
        print(f"data pipeline vs trainer: {model_name} at {size}px, batch {batch}, context {context}, "
              f"{len(urls)} shard(s) ({Path(urls[0]).parent}); {machine_line()}")
        print(f"  pipeline, 1 worker (decode + augment + tokenize): {per_worker:8.1f} images/s")
        print(f"  global order over {DataConfig().canonical_streams} canonical streams vs one stream: "
              f"{max(canonical):.1f} vs {max(single):.1f} images/s, ratio {order_ratio:.3f}")
        print(f"  trainer consumption (pre-loaded real batches):    {consume:8.1f} samples/s")
        print(f"  workers needed to keep up: {consume / per_worker:.2f}")
        print(f"  video: 1 worker decodes {clips_per_s:.1f} clips/s ({frames} frames each, {clip_kind}); the "
              f"trainer takes ~{trainer_clips:.1f} clips/s; workers needed for video: {trainer_clips / clips_per_s:.2f}")
        print(f"  end to end with 1 worker: {e2e['samples_per_s']:.1f} samples/s, data wait "
              f"{e2e['wait_s']:.2f}s of {e2e['wait_s'] + e2e['compute_s']:.2f}s = {e2e['share'] * 100:.1f}% "
              f"(over {steps} steps)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = "demo-student" if "demo-student" in list_models() else "evaclip-small"
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--data", default=None, help="a directory of .tar shards or one shard")
    parser.add_argument("--batch", type=int, default=DEMO_BATCH)
    parser.add_argument("--batches", type=int, default=6, help="batches timed for the pipeline alone")
    parser.add_argument("--steps", type=int, default=8, help="end-to-end training steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run(args.model, args.data, args.batches, args.steps, args.threads, args.batch)


if __name__ == "__main__":
    main()
