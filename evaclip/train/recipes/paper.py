"""The paper's recipes for EVA-CLIP-8B and EVA-CLIP-18B (Tables 12-13 of arXiv 2402.04252).

Both: LAMB (beta 0.9/0.95, eps 1e-6, weight decay 0), peak lr 4e-4 for the vision tower and 4e-5 for the text
tower with layer-wise decay 0.9 / 0.75, 2,000 warm-up steps then cosine to 0, temperature fixed at 0.01,
patch dropout 0.5, RandomResizedCrop scale (0.9, 1), bf16, full sharding (the paper: DeepSpeed ZeRO-3; here
FSDP2), gradient checkpointing. The vision tower starts from the MIM-distilled EVA-8B / EVA-18B weights and
the text tower from EVA02-CLIP-E/14+ (its text projection re-initialised), as the paper does.

Data: the paper's Merged-2B = 1.6B LAION-2B + 0.4B COYO-700M pairs; point ``data.sources`` at your shards,
e.g. ``data.sources=/data/laion2b/{00000..99999}.tar::/data/coyo700m/{00000..19999}.tar data.weights=1.6,0.4``.
"""
from __future__ import annotations

from evaclip.data.config import DataConfig, DataSource
from evaclip.train.config import EvalSection, ModelSection, ScheduleSection, TrainConfig
from evaclip.train.optim import OptimConfig
from evaclip.train.recipes import register

# Samples seen in the paper: 9B for 8B, 6B for 18B.
MERGED_2B = [DataSource("/data/laion2b/{00000..99999}.tar", 1.6, "laion2b"),
             DataSource("/data/coyo700m/{00000..19999}.tar", 0.4, "coyo700m")]


def _paper(model: str, global_batch: int, samples: float, gpus: int, mim: str) -> TrainConfig:
    per_gpu = global_batch // gpus
    return TrainConfig(
        out_dir=f"runs/{model}",
        steps=int(samples // global_batch),
        seed=4096,
        strategy="fsdp",
        precision="amp_bf16",
        checkpoint_every=1000,
        keep_checkpoints=3,
        log_every=10,
        model=ModelSection(name=model, pretrained_image=mim, pretrained_text="EVA02_CLIP_E_psz14_plus_s9B.pt",
                           skip_keys=["text_projection", "logit_scale"], patch_dropout=0.5,
                           grad_checkpointing=True, fixed_temperature=0.01),
        data=DataConfig(sources=[DataSource(s.urls, s.weight, s.name) for s in MERGED_2B], batch_size=per_gpu,
                        num_workers=8, resampled=True, seed=4096),
        optim=OptimConfig(name="lamb", lr=4e-4, visual_lr=4e-4, text_lr=4e-5, weight_decay=0.0,
                          visual_ld=0.9, text_ld=0.75, betas=(0.9, 0.95), eps=1e-6, grad_clip=5.0),
        schedule=ScheduleSection(warmup_steps=2000, kind="cosine"),
        eval=EvalSection(every=0),
    )


@register("eva-clip-8b")
def eva_clip_8b() -> TrainConfig:
    """EVA-CLIP-8B: 9B samples at a 178k global batch on 384 A100-40GB (Tables 12-13)."""
    return _paper("EVA-CLIP-8B", global_batch=178_176, samples=9e9, gpus=384, mim="EVA_8B_psz14.bin")


@register("eva-clip-18b")
def eva_clip_18b() -> TrainConfig:
    """EVA-CLIP-18B: 6B samples at a 108k global batch on 360 A100-40GB (Tables 12-13)."""
    return _paper("EVA-CLIP-18B", global_batch=108_000, samples=6e9, gpus=360, mim="EVA_18B_psz14.fp16.bin")
