"""Every published recipe against the published values: the official EVA-CLIP README commands (baaivision/EVA,
EVA-CLIP/README.md) and the paper's Tables 1, 10, 12 and 13, transcribed here by hand."""

import json
import math
import subprocess
import sys

import pytest

from evaclip.train.recipes import get_recipe, recipe_table

# From the commands: --batch-size, nodes x 8, --epochs, --visual-lr, --text-lr, --visual-ld, --text-ld,
# --force-patch-dropout, the README table's precision and training data, and the model names' sample counts.
COMMANDS = {
    #                        model                      batch gpus ep   vlr   tlr   vld   tld   pd   prec     data
    "eva02-clip-b-16": ("EVA02-CLIP-B-16", 2048, 64, 200, 2e-4, 2e-5, 0.75, 0.75, 0.0, "fp16", "merged"),
    "eva02-clip-l-14": ("EVA02-CLIP-L-14", 1024, 128, 100, 4e-4, 4e-5, 0.85, 0.75, 0.0, "fp16", "merged"),
    "eva02-clip-l-14-336": ("EVA02-CLIP-L-14-336", 480, 128, 50, 4e-4, 4e-5, 0.75, 0.65, 0.0, "fp16", "merged"),
    "eva02-clip-bige-14": ("EVA02-CLIP-bigE-14", 800, 144, 100, 4e-4, 4e-5, 0.9, 0.75, 0.5, "fp16", "laion"),
    "eva02-clip-bige-14-plus": ("EVA02-CLIP-bigE-14-plus", 1000, 144, 100, 4e-4, 4e-5, 0.9, 0.75, 0.5, "bf16",
                                "laion"),
    "eva01-clip-g-14-plus": ("EVA01-CLIP-g-14-plus", 1024, 112, 100, 4e-4, 4e-5, 0.85, 0.75, 0.5, "fp16", "merged"),
}
# The README tables' "training batch size" (thousands, rounded down: 114,688 is "114K").
README_BATCH_K = {"eva02-clip-b-16": 131, "eva02-clip-l-14": 131, "eva02-clip-l-14-336": 61, "eva02-clip-bige-14": 115,
                  "eva02-clip-bige-14-plus": 144, "eva01-clip-g-14-plus": 114}


def official_num_batches(samples: int, global_batch: int, workers: int = 8) -> int:
    """get_wds_dataset (EVA-CLIP/rei/training/data.py), is_train, floor=False."""
    num_batches = math.ceil(samples / global_batch)
    return math.ceil(num_batches / workers) * workers


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_eva02_recipes_are_the_official_commands(name):
    model, batch, gpus, epochs, vlr, tlr, vld, tld, pd, prec, data = COMMANDS[name]
    cfg = get_recipe(name)
    o = cfg.optim
    assert cfg.model.name == model
    assert cfg.data.batch_size == batch
    assert (o.name, o.lr, o.visual_lr, o.text_lr, o.weight_decay) == ("lamb", 5e-4, vlr, tlr, 0.05)
    assert (o.visual_ld, o.text_ld, o.betas, o.eps, o.grad_clip) == (vld, tld, (0.9, 0.999), 1e-8, 5.0)
    assert cfg.model.patch_dropout == pd and cfg.model.grad_checkpointing
    assert cfg.precision == {"fp16": "amp_fp16", "bf16": "amp_bf16"}[prec]
    assert (cfg.seed, cfg.schedule.warmup_steps, cfg.schedule.kind, cfg.schedule.min_lr_ratio) == (4096, 2000,
                                                                                                   "cosine", 0.0)
    assert cfg.data.resampled and cfg.data.num_workers == 8
    names = [s.name for s in cfg.data.sources]
    if data == "merged":  # --train-data-list of two lists, no --train-num-samples-list: 20M each, round robin
        assert names == ["laion2b", "coyo700m"] and [s.weight for s in cfg.data.sources] == [1.0, 1.0]
        per_epoch = 2 * official_num_batches(20_000_000, batch * gpus)
    else:
        assert names == ["laion2b"]
        per_epoch = official_num_batches(40_000_000, batch * gpus)
    assert cfg.steps == epochs * per_epoch  # total_steps = num_batches * epochs
    row = next(r for r in recipe_table() if r["recipe"] == name)
    assert row["gpus"] == gpus and row["global_batch"] // 1000 == README_BATCH_K[name]
    # samples seen: epochs x 40M, rounded up to whole batches per worker
    assert 1.0 <= row["samples_seen"] / (epochs * 40e6) < 1.05


# Paper Tables 12-13 (main / "+" columns) and Table 10's resolutions.
PAPER = {
    #                 model           px   batch    gpus samples vlr   tlr   vld   pd
    "eva-clip-8b": ("EVA-CLIP-8B", 224, 178_176, 384, 9e9, 4e-4, 4e-5, 0.9, 0.5),
    "eva-clip-8b-plus": ("EVA-CLIP-8B", 448, 24_576, 384, 800e6, 2e-4, 2e-5, 0.85, 0.0),
    "eva-clip-18b": ("EVA-CLIP-18B", 224, 108_000, 360, 6e9, 4e-4, 4e-5, 0.9, 0.5),
    "eva-clip-18b-plus": ("EVA-CLIP-18B", 336, 23_040, 360, 400e6, 2e-4, 2e-5, 0.85, 0.0),
}


PAPER_BATCH_K = {"eva-clip-8b": 178, "eva-clip-8b-plus": 24, "eva-clip-18b": 108, "eva-clip-18b-plus": 23}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_are_tables_12_and_13(name):
    from evaclip.train.tasks import ClipTask

    model, px, batch, gpus, samples, vlr, tlr, vld, pd = PAPER[name]
    cfg = get_recipe(name)
    o = cfg.optim
    assert cfg.model.name == model and cfg.data.batch_size * gpus == batch
    assert ClipTask(cfg).model_cfg.vision_cfg.image_size == px
    assert (o.visual_lr, o.text_lr, o.visual_ld, o.text_ld) == (vlr, tlr, vld, 0.75)
    assert (o.name, o.betas, o.eps, o.weight_decay, o.trust_ratio) == ("lamb", (0.9, 0.95), 1e-6, 0.0, "tensor")
    assert cfg.model.patch_dropout == pd and cfg.model.fixed_temperature == 0.01
    assert (cfg.precision, cfg.strategy, cfg.data.crop_scale) == ("amp_bf16", "fsdp", (0.9, 1.0))
    if cfg.phases:  # EVA-CLIP-18B's three phases: 5.4B + 0.62B + 24M samples, about the 6B of Table 13
        assert cfg.steps == sum(p.steps for p in cfg.phases)
        assert abs(cfg.steps * batch - samples) / samples < 0.01
    else:
        assert cfg.steps == int(samples // batch)
    assert batch // 1000 == PAPER_BATCH_K[name]  # the tables' "178k", "24k", "108k", "23k"
    if name.endswith("-plus"):  # continued from the 224 px EVA-CLIP, whole model, nothing re-initialised
        base = get_recipe(name[: -len("-plus")])
        assert cfg.model.pretrained and not cfg.model.pretrained_image and not cfg.model.skip_keys
        assert cfg.model.image_size == px and base.model.image_size is None
        assert ClipTask(base).model_cfg.vision_cfg.image_size == 224


def test_train_list_and_print_config_show_the_new_recipes():
    run = lambda *a: subprocess.run([sys.executable, "-m", "evaclip", "train", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    listing = run("--list")
    assert listing.returncode == 0, listing.stderr
    lines = {ln.split()[0]: ln for ln in listing.stdout.splitlines()[1:]}
    assert "paper Tables 10, 12 (8B+)" in lines["eva-clip-8b-plus"] and "0.80B" in lines["eva-clip-8b-plus"]
    assert "0.40B" in lines["eva-clip-18b-plus"] and "8.39B" in lines["eva02-clip-b-16"]
    shown = run("eva-clip-18b-plus", "--print-config")
    assert shown.returncode == 0, shown.stderr
    cfg = json.loads(shown.stdout)
    assert cfg["model"]["image_size"] == 336 and cfg["data"]["batch_size"] == 64
