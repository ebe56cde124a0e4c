"""Bad CLI use: wrong invocations, each a real `evaclip` process, all run at once. Every one must exit with code
2 and one line on stderr that says what was wrong and what to do, never a traceback."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from rel_kit import as_dict, as_proc, assert_clean_error, cli, listing, once, run_many


QUICK = ["steps=2", "schedule.warmup_steps=1", "progress=false", "tensorboard=false", "data.batch_size=8"]


def _cases(tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (arguments, fragments of the one-line message: what is wrong and what to do)."""
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty_run").mkdir(exist_ok=True)
    with open(tmp / "pickled.pt", "wb") as f:
        pickle.dump({"visual.cls_token": torch.zeros(1), "x": print}, f)  # a global: refused, never called
    (tmp / "texts.txt").write_text("a cat\n")
    out = str(tmp / "out")
    return {
        "unknown_command": (["trian", "tiny"], ("unknown command", "'trian'", "choose one of", "train")),
        "unknown_recipe": (["train", "tinyy"], ("unknown recipe", "tinyy", "choose one of", "tiny")),
        "no_recipe": (["train"], ("no recipe given", "evaclip train RECIPE")),
        "override_without_value": (["train", "tiny", "steps"], ("'steps'", "key=value", "steps=100")),
        "override_not_a_number": (["train", "tiny", "steps=abc"], ("steps", "integer", "'abc'")),
        "unknown_override_key": (["train", "tiny", "nosuch.key=1"], ("unknown config key", "nosuch", "valid:")),
        "unknown_nested_key": (["train", "tiny", "optim.lrr=1e-3"], ("optim.lrr", "valid:", "lr")),
        "negative_steps": (["train", "tiny", "steps=-5"], ("steps must be >= 1", "-5")),
        "wrong_task": (["train", "tiny", "task=segmentation"], ("task must be one of", "clip", "segmentation")),
        "wrong_strategy": (["train", "tiny", "strategy=zero3"], ("strategy must be one of", "fsdp")),
        "warmup_longer_than_run": (["train", "tiny", "steps=10", "schedule.warmup_steps=50"],
                                   ("warmup_steps", "below steps", "e.g.")),
        "unknown_model": (["train", "tiny", *QUICK, "model.name=EVA-CLIP-19B", f"out_dir={out}/m"],
                          ("EVA-CLIP-19B", "evaclip models")),
        "missing_dataset": (["train", "tiny", *QUICK, f"data.sources={tmp}/nowhere/shard-{{000..009}}.tar",
                             f"out_dir={out}/d"], ("none of its 10 shards exists", "check the path")),
        "missing_pretrained": (["train", "tiny", *QUICK, f"model.pretrained={tmp}/nope.safetensors",
                                f"out_dir={out}/p"], ("checkpoint not found", "nope.safetensors")),
        "out_dir_not_writable": (["train", "tiny", *QUICK, f"out_dir={tmp}/a_file/run"],
                                 ("not writable", "choose another out_dir")),
        "resume_without_checkpoints": (["train", "tiny", *QUICK, "resume=latest", f"out_dir={tmp}/empty_run"],
                                       ("resume=latest", "no complete checkpoint", "start without resume")),
        "resume_from_a_non_checkpoint": (["train", "tiny", *QUICK, f"resume={tmp}", f"out_dir={out}/r"],
                                         ("not a complete evaclip checkpoint", "resume=latest")),
        "eval_missing_dataset": (["eval", "--model", "evaclip-tiny", "--dataset", f"{tmp}/no_such_set",
                                  "--output", f"{out}/eval"], ("no_such_set",)),
        "eval_without_dataset": (["eval", "--model", "evaclip-tiny"], ("--dataset",)),
        "eval_wrong_task": (["eval", "--model", "evaclip-tiny", "--dataset", "x", "--task", "segmentation"],
                            ("--task", "invalid choice", "segmentation", "--help")),
        "embed_missing_folder": (["embed", "--model", "evaclip-tiny", "--images", f"{tmp}/no_images",
                                  "--out", f"{out}/e.npy"], ("no_images",)),
        "embed_unknown_model": (["embed", "--model", "nosuch-model", "--texts", f"{tmp}/texts.txt",
                                 "--out", f"{out}/t.npy"], ("nosuch-model", "evaclip models")),
        "convert_missing_file": (["convert", f"{tmp}/missing.pt", f"{out}/c.safetensors"],
                                 ("checkpoint not found", "missing.pt")),
        "convert_pickled_file": (["convert", f"{tmp}/pickled.pt", f"{out}/c2.safetensors"],
                                 ("refusing", "pickled.pt", "safetensors")),
        "plan_unknown_model": (["plan", "EVA-CLIP-19B", "--gpus", "8", "--gpu-memory", "40"], ("EVA-CLIP-19B",)),
        "plan_negative_gpus": (["plan", "EVA-CLIP-18B", "--gpus", "-3", "--gpu-memory", "40"], ("gpus", "-3")),
        "data_prepare_bad_image_size": (["data", "prepare", "--image-size", "-3", "--out", f"{out}/data"],
                                        ("image size -3", "8..1024")),
        "models_unknown_flag": (["models", "--nosuchflag"], ("unrecognized arguments", "--nosuchflag", "--help")),
    }


@pytest.fixture(scope="module")
def misuse(tmp_path_factory):
    def make(tmp: Path) -> dict:
        cases = _cases(tmp)
        procs = run_many([cli(*args) for args, _ in cases.values()], cwd=tmp)
        return {name: as_dict(p) for name, p in zip(cases, procs)}
    tmp, procs = once(tmp_path_factory, "misuse", make)
    return tmp, _cases(tmp), {name: as_proc(d) for name, d in procs.items()}


NAMES = [
    "unknown_command", "unknown_recipe", "no_recipe", "override_without_value", "override_not_a_number",
    "unknown_override_key", "unknown_nested_key", "negative_steps", "wrong_task", "wrong_strategy",
    "warmup_longer_than_run", "unknown_model", "missing_dataset", "missing_pretrained", "out_dir_not_writable",
    "resume_without_checkpoints", "resume_from_a_non_checkpoint", "eval_missing_dataset", "eval_without_dataset",
    "eval_wrong_task", "embed_missing_folder", "embed_unknown_model", "convert_missing_file", "convert_pickled_file",
    "plan_unknown_model", "plan_negative_gpus", "data_prepare_bad_image_size", "models_unknown_flag"]


def test_there_are_at_least_25_invocations(misuse):
    assert list(misuse[1]) == NAMES and len(NAMES) >= 25


@pytest.mark.parametrize("name", NAMES)
def test_wrong_invocation_gives_one_clear_line_and_exit_2(misuse, name):
    tmp, cases, procs = misuse
    assert_clean_error(procs[name], *cases[name][1])


def test_failed_invocations_wrote_nothing(misuse):
    tmp, _, _ = misuse
    # Only folders that the train command makes before failing may exist, and they must be empty.
    written = [p for p in listing(tmp / "out") if (tmp / "out" / p).is_file() and not p.startswith("d/")]
    assert written == []
    assert listing(tmp / "empty_run") == []


def test_a_missing_dataset_is_found_before_anything_is_written(misuse):
    tmp, _, _ = misuse
    assert listing(tmp / "out" / "d") == []
