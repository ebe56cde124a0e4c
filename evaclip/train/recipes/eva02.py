"""The published EVA02-CLIP / EVA01-CLIP recipes: the training commands of the official EVA-CLIP README
(baaivision/EVA, ``EVA-CLIP/README.md``, "Pre-training"), field by field.

All commands: LAMB with the official default betas (0.9, 0.999) and eps 1e-8 (they pass none), base lr 5e-4,
weight decay 0.05, warm-up 2,000 steps then cosine to 0, gradient clipping 5.0, the learnable temperature,
seed 4096, 8 data workers, resampled shards, virtual epochs of ``--train-num-samples 40000000``, DeepSpeed
ZeRO-1 (FSDP2 full sharding gives the same maths). Per command (``--batch-size`` is per GPU):

=========================  ==========  ========  =====  ======  ===========  =========  ======  =========
recipe                     data        batch     GPUs   epochs  lr vis/text  ld v/t     pd      precision
=========================  ==========  ========  =====  ======  ===========  =========  ======  =========
eva02-clip-b-16            Merged-2B   2048      64     200     2e-4/2e-5    0.75/0.75  0       fp16
eva02-clip-l-14            Merged-2B   1024      128    100     4e-4/4e-5    0.85/0.75  0       fp16
eva02-clip-l-14-336        Merged-2B   480       128    50      4e-4/4e-5    0.75/0.65  0       fp16
eva02-clip-bige-14         LAION-2B    800       144    100     4e-4/4e-5    0.9/0.75   0.5     fp16
eva02-clip-bige-14-plus    LAION-2B    1000      144    100     4e-4/4e-5    0.9/0.75   0.5     bf16
eva01-clip-g-14-plus       Merged-2B   1024      112    100     4e-4/4e-5    0.85/0.75  0.5     fp16
=========================  ==========  ========  =====  ======  ===========  =========  ======  =========

GPUs are the commands' node counts x 8 (the README tables' "gpus for training" agree). Precision: the
commands pass no ``--precision``, so DeepSpeed runs fp16 with a dynamic loss scale; the README's table says
bf16 for E/14+ only, which we follow. fp16 here is ``amp_fp16`` (autocast with loss scaling, fp32 weights),
evaclip's nearest mode.

Steps are the official schedule's: ``epochs x num_batches``, where ``get_wds_dataset`` makes each dataset's
virtual epoch ``ceil(ceil(n / global_batch) / workers) * workers`` batches. Merged-2B is passed as a
``--train-data-list`` of two webdatasets, LAION-2B and COYO-700M; without ``--train-num-samples-list`` the
``MixingDataLoader`` gives each 20M samples an epoch and takes whole batches from them in turn, so the
commands trained on LAION-2B and COYO-700M 1:1, not 1.6:0.4 as Merged-2B's composition would suggest. The
recipes use weights 1:1 (evaclip mixes per sample, not per batch). Samples seen: B 8.4B, L 4.2B, L-336 2.0B
(after the 224 px L's 4.2B), E 4.1B, E+ 4.0B, g+ 4.0B. The model names' "s9B" (E+) and "s11B" (g+), and Table
1's 9B / 11B, are larger than what these commands run; the recipes follow the commands.

Initialisation (set it on the command line): vision towers from the MIM weights (``EVA02_B_psz14to16.pt``,
``EVA02_L_psz14.pt``, ``EVA02_E_psz14.pt``, ``EVA01_g_psz14.pt``: ``model.pretrained_image``), text towers
from OpenAI CLIP-B/16 / L/14 (B, L) or OpenCLIP-H/14 (E, g+) or bigG/14 (E+): ``model.pretrained_text``. The
L-336 stage continues the whole 224 px model (``model.pretrained=EVA02_CLIP_L_psz14_224to336.pt``; a 224 px
file works too, its position embedding is interpolated on load).
"""
from __future__ import annotations

import math

from evaclip.data.config import DataConfig, DataSource
from evaclip.models.checkpoint import WEAK_TO_STRONG_SKIP
from evaclip.train.config import ModelSection, ScheduleSection, TrainConfig
from evaclip.train.optim import OptimConfig
from evaclip.train.recipes import register

VIRTUAL_EPOCH = 40_000_000  # --train-num-samples
WORKERS = 8  # --workers
SOURCE = "official EVA-CLIP README command"
LAION_2B = "/data/laion2b/{000000..164090}.tar"
COYO_700M = "/data/coyo700m/{000000..047435}.tar"


def merged_2b() -> list[DataSource]:
    # The command's round-robin over the two lists: equal shares (see the module docstring).
    return [DataSource(LAION_2B, 1.0, "laion2b"), DataSource(COYO_700M, 1.0, "coyo700m")]


def laion_2b() -> list[DataSource]:
    return [DataSource(LAION_2B, 1.0, "laion2b")]


def official_steps(epochs: int, batch_per_gpu: int, gpus: int, datasets: int) -> int:
    """The official schedule's length: ``epochs`` x the batches of a virtual epoch, summed over datasets."""
    per_dataset = VIRTUAL_EPOCH // datasets
    batches = math.ceil(per_dataset / (batch_per_gpu * gpus))
    return epochs * datasets * math.ceil(batches / WORKERS) * WORKERS


def _published(model: str, *, sources: list[DataSource], batch_per_gpu: int, gpus: int, epochs: int,
               visual_lr: float, text_lr: float, visual_ld: float, text_ld: float, patch_dropout: float,
               precision: str) -> TrainConfig:
    return TrainConfig(
        out_dir=f"runs/{model}", steps=official_steps(epochs, batch_per_gpu, gpus, len(sources)), seed=4096,
        strategy="fsdp", precision=precision, checkpoint_every=1000, log_every=10,
        model=ModelSection(name=model, patch_dropout=patch_dropout, grad_checkpointing=True,
                           skip_keys=list(WEAK_TO_STRONG_SKIP)),
        data=DataConfig(sources=sources, batch_size=batch_per_gpu, num_workers=WORKERS, resampled=True,
                        seed=4096),
        optim=OptimConfig(name="lamb", lr=5e-4, visual_lr=visual_lr, text_lr=text_lr,
                          weight_decay=0.05, visual_ld=visual_ld, text_ld=text_ld, betas=(0.9, 0.999), eps=1e-8,
                          grad_clip=5.0),
        schedule=ScheduleSection(warmup_steps=2000),
    )


@register("eva02-clip-b-16", source=SOURCE, gpus=64)
def eva02_clip_b16() -> TrainConfig:
    """EVA02-CLIP-B/16 (s8B): Merged-2B, 131k batch, lr 2e-4/2e-5, layer decay 0.75/0.75, fp16."""
    return _published("EVA02-CLIP-B-16", sources=merged_2b(), batch_per_gpu=2048, gpus=64, epochs=200,
                      visual_lr=2e-4, text_lr=2e-5, visual_ld=0.75, text_ld=0.75, patch_dropout=0.0,
                      precision="amp_fp16")


@register("eva02-clip-l-14", source=SOURCE, gpus=128)
def eva02_clip_l14() -> TrainConfig:
    """EVA02-CLIP-L/14 (s4B): Merged-2B, 131k batch, layer decay 0.85/0.75, fp16."""
    return _published("EVA02-CLIP-L-14", sources=merged_2b(), batch_per_gpu=1024, gpus=128, epochs=100,
                      visual_lr=4e-4, text_lr=4e-5, visual_ld=0.85, text_ld=0.75, patch_dropout=0.0,
                      precision="amp_fp16")


@register("eva02-clip-l-14-336", source=SOURCE, gpus=128)
def eva02_clip_l14_336() -> TrainConfig:
    """EVA02-CLIP-L/14 at 336 px (s6B): the 224 px model continued, 61k batch, layer decay 0.75/0.65, fp16."""
    cfg = _published("EVA02-CLIP-L-14-336", sources=merged_2b(), batch_per_gpu=480, gpus=128, epochs=50,
                     visual_lr=4e-4, text_lr=4e-5, visual_ld=0.75, text_ld=0.65, patch_dropout=0.0,
                     precision="amp_fp16")
    # --pretrained loads the whole model; the official loader applies its skip list only to tower inits.
    cfg.model.pretrained = "EVA02_CLIP_L_psz14_224to336.pt"
    cfg.model.skip_keys = []
    return cfg


@register("eva02-clip-bige-14", source=SOURCE, gpus=144)
def eva02_clip_bige14() -> TrainConfig:
    """EVA02-CLIP-E/14 (s4B): LAION-2B, 115k batch, layer decay 0.9/0.75, patch dropout 0.5, fp16."""
    return _published("EVA02-CLIP-bigE-14", sources=laion_2b(), batch_per_gpu=800, gpus=144, epochs=100,
                      visual_lr=4e-4, text_lr=4e-5, visual_ld=0.9, text_ld=0.75, patch_dropout=0.5,
                      precision="amp_fp16")


@register("eva02-clip-bige-14-plus", source=SOURCE, gpus=144)
def eva02_clip_bige14_plus() -> TrainConfig:
    """EVA02-CLIP-E/14+ (s9B): LAION-2B, 144k batch, layer decay 0.9/0.75, patch dropout 0.5, bf16."""
    return _published("EVA02-CLIP-bigE-14-plus", sources=laion_2b(), batch_per_gpu=1000, gpus=144, epochs=100,
                      visual_lr=4e-4, text_lr=4e-5, visual_ld=0.9, text_ld=0.75, patch_dropout=0.5,
                      precision="amp_bf16")


@register("eva01-clip-g-14-plus", source=SOURCE, gpus=112)
def eva01_clip_g14_plus() -> TrainConfig:
    """EVA01-CLIP-g/14+ (s11B): Merged-2B, 114k batch, layer decay 0.85/0.75, patch dropout 0.5, fp16."""
    return _published("EVA01-CLIP-g-14-plus", sources=merged_2b(), batch_per_gpu=1024, gpus=112, epochs=100,
                      visual_lr=4e-4, text_lr=4e-5, visual_ld=0.85, text_ld=0.75, patch_dropout=0.5,
                      precision="amp_fp16")
