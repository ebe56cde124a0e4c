"""The paper's recipes for EVA-CLIP-8B and EVA-CLIP-18B (Tables 12-13 of arXiv 2402.04252).

Both: LAMB (beta 0.9/0.95, eps 1e-6, weight decay 0), peak lr 4e-4 for the vision tower and 4e-5 for the text
tower with layer-wise decay 0.9 / 0.75, 2,000 warm-up steps then cosine to 0, temperature fixed at 0.01,
patch dropout 0.5, RandomResizedCrop scale (0.9, 1), bf16, full sharding (the paper: DeepSpeed ZeRO-3; here
FSDP2), gradient checkpointing. The vision tower starts from the MIM-distilled EVA-8B / EVA-18B weights and
the text tower from EVA02-CLIP-E/14+ (its text projection re-initialised), as the paper does.

Data: the paper's Merged-2B = 1.6B LAION-2B + 0.4B COYO-700M pairs; point ``data.sources`` at your shards,
e.g. ``data.sources=/data/laion2b/{00000..99999}.tar::/data/coyo700m/{00000..19999}.tar data.weights=1.6,0.4``.

The "+" stages (EVA-CLIP-8B+ at 448 px, EVA-CLIP-18B+ at 336 px; Tables 10, 12, 13, right-hand columns)
continue the whole 224 px EVA-CLIP (``model.pretrained``) at ``model.image_size``: the position embedding is
interpolated on load (bicubic, as the official ``resize_evaclip_pos_embed``); 8B and 18B have no RoPE. Peak lr
2e-4 / 2e-5, vision layer decay 0.85, no patch dropout, 800M / 400M samples at global batches "24k" / "23k".
The paper gives no GPU count for them: 64 pairs per GPU on the main stages' 384 / 360 GPUs gives 24,576 and
23,040, both rounding to the published figures, and that is what these recipes use. Everything else is the
main stage's (Tables 12-13 list one value for both columns).

The trust ratio stays per tensor (``optim.trust_ratio=tensor``), the LAMB paper's rule, as before. The
official runs computed it per ZeRO-3 flat partition (docs/lamb_under_sharding.md);
``optim.trust_ratio=zero3 optim.trust_partitions=384`` (8B) or ``360`` (18B) reproduces that exactly.
"""
from __future__ import annotations

from evaclip.data.config import DataConfig, DataSource
from evaclip.models.checkpoint import WEAK_TO_STRONG_SKIP
from evaclip.errors import ConfigError
from evaclip.train.config import EvalSection, ModelSection, PhaseSection, ScheduleSection, TrainConfig
from evaclip.train.optim import OptimConfig
from evaclip.train.recipes import register

# Samples seen in the paper: 9B for 8B, 6B for 18B.
MERGED_2B = [DataSource("/data/laion2b/{00000..99999}.tar", 1.6, "laion2b"),
             DataSource("/data/coyo700m/{00000..19999}.tar", 0.4, "coyo700m")]


def _paper(model: str, global_batch: int, samples: float, gpus: int, mim: str) -> TrainConfig:
    if global_batch % gpus:
        raise ConfigError(f"global batch {global_batch} is not a multiple of {gpus} GPUs")
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
                           skip_keys=list(WEAK_TO_STRONG_SKIP), patch_dropout=0.5,
                           grad_checkpointing=True, fixed_temperature=0.01),
        data=DataConfig(sources=[DataSource(s.urls, s.weight, s.name) for s in MERGED_2B], batch_size=per_gpu,
                        num_workers=8, resampled=True, seed=4096),
        optim=OptimConfig(name="lamb", lr=4e-4, visual_lr=4e-4, text_lr=4e-5, weight_decay=0.0,
                          visual_ld=0.9, text_ld=0.75, betas=(0.9, 0.95), eps=1e-6, grad_clip=5.0),
        schedule=ScheduleSection(warmup_steps=2000, kind="cosine"),
        eval=EvalSection(every=0),
    )


GPUS_8B, GPUS_18B = 384, 360


@register("eva-clip-8b", source="paper Tables 1, 12", gpus=GPUS_8B)
def eva_clip_8b() -> TrainConfig:
    """EVA-CLIP-8B: 9B samples at a 178k global batch on 384 A100-40GB (Tables 12-13)."""
    return _paper("EVA-CLIP-8B", global_batch=178_176, samples=9e9, gpus=GPUS_8B, mim="EVA_8B_psz14.bin")


# The paper's three phases of EVA-CLIP-18B (section 3): 5.4B samples of Merged-2B at patch dropout 0.5; 0.6B of
# Merged-2B plus 20M of LAION-COCO without patch dropout; 24M of Merged-Video (VideoCC, InternVid, WebVid-10M;
# 8 frames a clip, the mean of their features) at patch dropout 0.5, "included at the end of the training
# process". One warm-up + cosine schedule spans all three (Table 13: 6B samples seen).
LAION_COCO = "/data/laion-coco/{00000..01999}.tar"
MERGED_VIDEO = "/data/videocc/{0000..0999}.tar::/data/internvid/{0000..0999}.tar::/data/webvid10m/{0000..0999}.tar"
PHASES_18B = (("merged-2b", 5.4e9, []),
              ("merged-2b+laion-coco, no patch dropout", 0.62e9,
               [f"data.sources={MERGED_2B[0].urls}::{MERGED_2B[1].urls}::{LAION_COCO}",
                "data.weights=0.48,0.12,0.02", "model.patch_dropout=0.0"]),
              ("merged-video", 24e6, [f"data.sources={MERGED_VIDEO}", "data.weights=1,1,1", "data.video_frames=8"]))


@register("eva-clip-18b", source="paper Tables 1, 13; section 3 (three phases)", gpus=GPUS_18B)
def eva_clip_18b() -> TrainConfig:
    """EVA-CLIP-18B: 6B samples at a 108k global batch on 360 A100-40GB in the paper's three phases."""
    cfg = _paper("EVA-CLIP-18B", global_batch=108_000, samples=6e9, gpus=GPUS_18B, mim="EVA_18B_psz14.fp16.bin")
    global_batch = cfg.data.batch_size * GPUS_18B
    cfg.phases = [PhaseSection(name=name, steps=round(samples / global_batch), overrides=list(overrides),
                               video_share=1.0 if name == "merged-video" else 0.0)
                  for name, samples, overrides in PHASES_18B]
    cfg.steps = sum(p.steps for p in cfg.phases)
    return cfg


def _plus(main: TrainConfig, image_size: int, global_batch: int, samples: float, gpus: int,
          start: str) -> TrainConfig:
    """The main stage's recipe continued from its own result at a higher resolution (Tables 12-13, right)."""
    cfg = main
    cfg.phases = []  # one phase: the main stage's later phases are not repeated at the higher resolution
    cfg.out_dir += f"-{image_size}"
    cfg.steps = int(samples // global_batch)
    cfg.data.batch_size = global_batch // gpus
    # The whole 224 px EVA-CLIP is the start: both towers and the (fixed) temperature, nothing re-initialised.
    cfg.model.pretrained, cfg.model.pretrained_image, cfg.model.pretrained_text = start, None, None
    cfg.model.skip_keys = []
    cfg.model.image_size = image_size
    cfg.model.patch_dropout = 0.0
    cfg.optim.lr = cfg.optim.visual_lr = 2e-4
    cfg.optim.text_lr = 2e-5
    cfg.optim.visual_ld = 0.85
    return cfg


@register("eva-clip-8b-plus", source="paper Tables 10, 12 (8B+)", gpus=GPUS_8B)
def eva_clip_8b_plus() -> TrainConfig:
    """EVA-CLIP-8B+: EVA-CLIP-8B continued at 448 px, 800M samples at a 24k global batch (Tables 10, 12)."""
    return _plus(eva_clip_8b(), 448, global_batch=64 * GPUS_8B, samples=800e6, gpus=GPUS_8B,
                 start="EVA_CLIP_8B_psz14_s9B.pt")


@register("eva-clip-18b-plus", source="paper Tables 10, 13 (18B+)", gpus=GPUS_18B)
def eva_clip_18b_plus() -> TrainConfig:
    """EVA-CLIP-18B+: EVA-CLIP-18B continued at 336 px, 400M samples at a 23k global batch (Tables 10, 13)."""
    cfg = _plus(eva_clip_18b(), 336, global_batch=64 * GPUS_18B, samples=400e6, gpus=GPUS_18B,
                start="EVA_CLIP_18B_psz14_s6B.fp16.pt")
    # Merged-2B+ (the paper, section 4): Merged-2B plus 20M LAION-COCO pairs, weighted by size here. Its other
    # addition, 23M video-frame pairs (VideoCC, InternVid, WebVid-10M) "included at the end of the training
    # process", is a schedule, not a weight: add it as a source for the last steps if you have it.
    cfg.data.sources.append(DataSource("/data/laion-coco/{00000..01999}.tar", 0.02, "laion-coco"))
    return cfg
