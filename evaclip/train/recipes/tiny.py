"""The ``tiny`` recipe: a 3M-parameter EVA02-style CLIP on the real emoji sample shipped in the package.

It trains in well under a minute on a laptop CPU and is what the tests run. Its batch is global (64 pairs a
step on any number of processes), so one process and N ranks train the same run. The optimizer is the paper's
(LAMB, layer-wise decay, warm-up + cosine) at a learning rate suited to so small a model and batch.
"""
from __future__ import annotations

from pathlib import Path

from evaclip.data.config import DataConfig, DataSource
from evaclip.train.config import ModelSection, ScheduleSection, TrainConfig
from evaclip.train.optim import OptimConfig
from evaclip.train.recipes import register

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"


def sample_shards(split: str = "train") -> str:
    """Path of the shipped sample shard (``train``: 512 Twemoji pairs; ``val``: 128 Noto pairs)."""
    return str(SAMPLE_DIR / f"tiny-{split}-000.tar")


@register("tiny")
def tiny() -> TrainConfig:
    """evaclip-tiny on the shipped 512-pair emoji sample; seconds on a CPU."""
    return TrainConfig(
        out_dir="runs/tiny",
        steps=150,
        seed=0,
        precision="fp32",
        checkpoint_every=50,
        log_every=5,
        model=ModelSection(name="evaclip-tiny"),
        data=DataConfig(sources=[DataSource(sample_shards("train"), 1.0, "emoji-sample")], global_batch_size=64,
                        num_workers=0, resampled=True, seed=0, shuffle_window=64, interleave=1),
        optim=OptimConfig(name="lamb", lr=2e-3, visual_lr=2e-3, text_lr=2e-3, weight_decay=0.05,
                          visual_ld=1.0, text_ld=1.0, betas=(0.9, 0.95), eps=1e-6, grad_clip=5.0),
        schedule=ScheduleSection(warmup_steps=10, kind="cosine"),
    )
