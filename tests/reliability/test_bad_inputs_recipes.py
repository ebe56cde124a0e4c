"""Bad values for the published-recipe features (higher-resolution continuation, the ZeRO-3 trust ratio,
recipe planning), through the real CLI: exit code 2, one line naming the problem, no traceback, nothing
exported."""
from __future__ import annotations

import pytest
from rel_kit import QUIET, assert_clean_error, cli, run_many

from evaclip.train.recipes.tiny import sample_shards

SHORT = ["steps=2", "schedule.warmup_steps=1", "data.batch_size=8", *QUIET]

# name -> (command after `evaclip`, fragments of the error line)
CASES = {
    "trust_ratio_unknown": (["train", "tiny", "optim.trust_ratio=zero2"], ("optim.trust_ratio", "tensor, zero3")),
    "trust_partitions_zero": (["train", "tiny", "optim.trust_partitions=0"], ("optim.trust_partitions", ">= 1")),
    "trust_partitions_fraction": (["train", "tiny", "optim.trust_partitions=2.5"], ("trust_partitions", "integer")),
    "zero3_with_adamw": (["train", "tiny", "optim.trust_ratio=zero3", "optim.name=adamw"], ("LAMB rule",)),
    "hflip_above_one": (["train", "tiny", "mim.hflip=1.5"], ("mim.hflip", "[0, 1]")),
    "image_size_zero": (["train", "tiny", "model.image_size=0"], ("model.image_size", ">= 1")),
    "image_size_off_patch": (["train", "tiny", "model.image_size=30"], ("image_size (30)", "patch_size (8)")),
    "continue_from_missing_file": (["train", "eva-clip-8b-plus", "model.name=evaclip-tiny-18b",
                                    "model.image_size=48", "model.pretrained=/nonexistent/ckpt.pt",
                                    f"data.sources={sample_shards('train')}", "precision=fp32", "data.num_workers=0"],
                                   ("/nonexistent/ckpt.pt",)),
    "plan_recipe_no_gpus": (["plan", "eva-clip-18b-plus", "--gpus", "0", "--gpu-memory", "40"], ("--gpus",)),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_recipes")
    cmds, outs = [], {}
    for name, (args, _) in CASES.items():
        out = root / name
        outs[name] = out
        extra = [f"out_dir={out}", *SHORT] if args[0] == "train" else []
        cmds.append(cli(*args, *extra))
    return {name: (proc, outs[name]) for name, proc in zip(CASES, run_many(cmds))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_recipe_input_is_one_line_and_nothing_is_exported(outcomes, name):
    proc, out = outcomes[name]
    assert_clean_error(proc, *CASES[name][1])
    assert not (out / "final.safetensors").exists()
