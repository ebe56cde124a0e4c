"""The published EVA02-CLIP / EVA01-CLIP recipes (EVA-CLIP README; see the reference note §5).

LAMB with the official default betas (0.9, 0.999) and eps 1e-8 (the scripts pass none), base lr 5e-4 with
vision 4e-4 / text 4e-5 (B/16: 2e-4 / 2e-5), weight decay 0.05, warm-up 2,000 steps, cosine, gradient
clipping 5.0, the official learnable temperature, seed 4096, virtual epochs of 40M samples. Layer decay vision/text: 0.75/0.75 for B and L,
0.85/0.75 for g+, 0.9/0.75 for E and E+; patch dropout 0.5 for g, E and E+, none for B and L. The README
trained with ZeRO-1; FSDP2 full sharding gives the same maths. Vision towers start from the EVA02 / EVA01 MIM
weights and text towers from OpenAI / OpenCLIP models: set model.pretrained_image / pretrained_text.
"""
from __future__ import annotations

from evaclip.data.config import DataConfig, DataSource
from evaclip.train.config import ModelSection, ScheduleSection, TrainConfig
from evaclip.train.optim import OptimConfig
from evaclip.train.recipes import register


def _published(model: str, visual_ld: float, patch_dropout: float, batch_per_gpu: int, steps: int,
               visual_lr: float = 4e-4, text_lr: float = 4e-5) -> TrainConfig:
    return TrainConfig(
        out_dir=f"runs/{model}", steps=steps, seed=4096, strategy="fsdp", precision="amp_bf16",
        checkpoint_every=1000, log_every=10,
        model=ModelSection(name=model, patch_dropout=patch_dropout, grad_checkpointing=True,
                           skip_keys=["head.weight", "head.bias", "text_projection", "logit_scale"]),
        data=DataConfig(sources=[DataSource("/data/laion400m/{00000..41455}.tar", 1.0, "laion400m")],
                        batch_size=batch_per_gpu, num_workers=8, seed=4096),
        optim=OptimConfig(name="lamb", lr=5e-4, visual_lr=visual_lr, text_lr=text_lr,
                          weight_decay=0.05, visual_ld=visual_ld, text_ld=0.75, betas=(0.9, 0.999), eps=1e-8,
                          grad_clip=5.0),
        schedule=ScheduleSection(warmup_steps=2000),
    )


@register("eva02-clip-b-16")
def eva02_clip_b16() -> TrainConfig:
    """EVA02-CLIP-B/16: layer decay 0.75/0.75, no patch dropout."""
    return _published("EVA02-CLIP-B-16", 0.75, 0.0, 2048, 250_000, visual_lr=2e-4, text_lr=2e-5)


@register("eva02-clip-l-14")
def eva02_clip_l14() -> TrainConfig:
    """EVA02-CLIP-L/14: layer decay 0.75/0.75, no patch dropout."""
    return _published("EVA02-CLIP-L-14", 0.75, 0.0, 128, 250_000)


@register("eva02-clip-bige-14-plus")
def eva02_clip_bige14_plus() -> TrainConfig:
    """EVA02-CLIP-E/14+: layer decay 0.9/0.75, patch dropout 0.5."""
    return _published("EVA02-CLIP-bigE-14-plus", 0.9, 0.5, 144, 100_000)


@register("eva01-clip-g-14-plus")
def eva01_clip_g14_plus() -> TrainConfig:
    """EVA01-CLIP-g/14+: layer decay 0.85/0.75, patch dropout 0.5."""
    return _published("EVA01-CLIP-g-14-plus", 0.85, 0.5, 256, 100_000)
