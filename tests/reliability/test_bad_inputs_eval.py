"""Bad input to `evaclip eval` and `evaclip embed`, each a real process, all run at once. Every one
exits with code 2 and one line that says what was wrong and what to do, no traceback, and writes nothing."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rel_kit import as_dict, as_proc, assert_clean_error, cli, listing, once, run_many

MODEL = ["--model", "evaclip-tiny"]


def _make_inputs(tmp: Path) -> None:
    if (tmp / "shapes").exists():
        return
    rng = np.random.default_rng(0)
    for c in ("red", "green"):
        (tmp / "shapes" / c).mkdir(parents=True)
        (tmp / "broken" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp / "shapes" / c / f"{i}.png")
            (tmp / "broken" / c / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp / "texts.txt").write_text("a cat\n")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "target.json").write_text("keep me")
    os.symlink(tmp / "target.json", tmp / "link.json")
    os.symlink(tmp / "target.json", tmp / "link.npy")
    os.mkfifo(tmp / "fifo.json")
    os.mkfifo(tmp / "fifo.npy")
    import evaclip
    state = evaclip.create_model("evaclip-tiny").state_dict()
    state["visual.patch_embed.proj.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp / "nan.pt")


def _cases(tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (arguments, fragments of the one-line message: what is wrong and what to do)."""
    out = tmp / "out"
    data = ["--dataset", str(tmp / "shapes"), "--workers", "0"]
    ev = ["eval", *MODEL, *data, "--output", f"{out}/r.json"]
    no_cuda = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    embed = ["embed", *MODEL, "--texts", str(tmp / "texts.txt")]
    return {
        "eval_device_without_cuda": ([*ev, "--device", no_cuda], ("--device", "cuda", "use --device cpu")
                                     if no_cuda == "cuda" else ("--device", "CUDA device(s)")),
        "eval_device_not_a_device": ([*ev, "--device", "gpu0"], ("--device", "gpu0", "cpu, cuda or cuda:N")),
        "eval_negative_lp_lr": ([*ev, "--task", "linear_probe", "--lp-lr", "-1"], ("--lp-lr", "-1", "> 0")),
        "eval_nan_lp_lr": ([*ev, "--task", "linear_probe", "--lp-lr", "nan"], ("--lp-lr", "finite")),
        "eval_zero_lp_epochs": ([*ev, "--task", "linear_probe", "--lp-epochs", "0"], ("--lp-epochs 0", "at least 1")),
        "eval_bad_recall_k": ([*ev, "--task", "zeroshot_retrieval", "--recall-k", "0", "-3"],
                              ("--recall-k 0 -3", ">= 1")),
        "eval_val_proportion_above_1": ([*ev, "--task", "linear_probe", "--val-proportion", "1.5"],
                                        ("--val-proportion 1.5", "between 0 and 1")),
        "eval_train_fraction_1": ([*ev, "--task", "linear_probe", "--lp-train-fraction", "1"],
                                  ("--lp-train-fraction", "between 0 and 1")),
        "eval_precision_unknown": ([*ev, "--precision", "fp8"], ("--precision", "invalid choice", "fp8")),
        "eval_output_unknown_placeholder": (["eval", *MODEL, *data, "--output", f"{out}/{{dataset}}_{{foo}}.json"],
                                            ("unknown placeholder {foo}", "{dataset}", "{task}")),
        "eval_output_unclosed_brace": (["eval", *MODEL, *data, "--output", f"{out}/{{dataset.json"],
                                       ("not a valid template", "{dataset}")),
        "eval_output_symlink": (["eval", *MODEL, *data, "--output", str(tmp / "link.json"), "--overwrite"],
                                ("symbolic link", "choose another path")),
        "eval_output_fifo": (["eval", *MODEL, *data, "--output", str(tmp / "fifo.json"), "--overwrite"],
                             ("FIFO", "choose another path")),
        "eval_output_under_a_file": (["eval", *MODEL, *data, "--output", str(tmp / "a_file" / "r.json")],
                                     ("a_file", "not a folder")),
        "eval_linear_probe_without_train_split": ([*ev, "--task", "linear_probe"],
                                                  ("no 'train' split", "test set", "--lp-train-fraction")),
        "eval_all_images_broken": (["eval", *MODEL, "--dataset", str(tmp / "broken"), "--workers", "0",
                                    "--output", f"{out}/b.json"], ("none of the 4 images", "could be decoded")),
        "eval_nan_checkpoint": ([*ev, "--pretrained", str(tmp / "nan.pt")], ("non-finite", "nan.pt")),
        "embed_device_without_cuda": ([*embed, "--out", f"{out}/e.npy", "--device", no_cuda], ("--device", "cuda")),
        "embed_out_symlink": ([*embed, "--out", str(tmp / "link.npy")], ("symbolic link", "choose another path")),
        "embed_out_fifo": ([*embed, "--out", str(tmp / "fifo.npy")], ("FIFO", "choose another path")),
        "embed_out_under_a_file": ([*embed, "--out", str(tmp / "a_file" / "e.npy")], ("a_file", "not a folder")),
    }


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    def make(tmp: Path) -> dict:
        _make_inputs(tmp)
        cases = _cases(tmp)
        procs = run_many([cli(*args) for args, _ in cases.values()], cwd=tmp)
        return {name: as_dict(p) for name, p in zip(cases, procs)}
    tmp, procs = once(tmp_path_factory, "bad_inputs_eval", make)
    return tmp, _cases(tmp), {name: as_proc(d) for name, d in procs.items()}


NAMES = [
    "eval_device_without_cuda", "eval_device_not_a_device", "eval_negative_lp_lr", "eval_nan_lp_lr",
    "eval_zero_lp_epochs", "eval_bad_recall_k", "eval_val_proportion_above_1", "eval_train_fraction_1",
    "eval_precision_unknown", "eval_output_unknown_placeholder", "eval_output_unclosed_brace", "eval_output_symlink",
    "eval_output_fifo", "eval_output_under_a_file", "eval_linear_probe_without_train_split",
    "eval_all_images_broken", "eval_nan_checkpoint", "embed_device_without_cuda", "embed_out_symlink",
    "embed_out_fifo", "embed_out_under_a_file"]


def test_every_case_is_listed(bad_inputs):
    assert list(bad_inputs[1]) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_gives_one_clear_line_and_exit_2(bad_inputs, name):
    _, cases, procs = bad_inputs
    assert_clean_error(procs[name], *cases[name][1])


def test_bad_inputs_wrote_nothing(bad_inputs):
    tmp, _, _ = bad_inputs
    assert listing(tmp / "out") == []
    assert (tmp / "target.json").read_text() == "keep me"
    assert os.path.islink(tmp / "link.json") and os.path.islink(tmp / "link.npy")
    assert listing(tmp / "a_file") == [] and (tmp / "a_file").read_text() == "not a folder"
    assert not list(tmp.glob(".*.tmp")) and not list(tmp.glob("*.txt.tmp"))
    assert sorted(p.name for p in tmp.iterdir() if p.is_fifo()) == ["fifo.json", "fifo.npy"]
