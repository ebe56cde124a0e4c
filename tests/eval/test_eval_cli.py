"""`evaclip eval` end to end with the evaclip-tiny model on real image / video files made in the test."""
import csv
import json

import pytest
import torch

import evaclip
from evaclip.cli.main import main
from evaclip.eval.catalog import default_templates
from evaclip.eval.datasets import load_classification
from evaclip.eval.features import image_loader
from evaclip.eval.zeroshot import evaluate_zeroshot_classification

from eval_helpers import shapes
from proc_kit import run_bounded

import evaclip.transforms as transforms  # noqa: E402

CLASSES = ("red", "green", "blue")


def image_folder(root, n=2, seed=0):
    for i, (y, img) in enumerate(shapes(n, seed=seed)):
        (root / CLASSES[y]).mkdir(parents=True, exist_ok=True)
        img.save(root / CLASSES[y] / f"{i}.png")
    return root


def run_cli(*argv):
    return main(["eval", *map(str, argv)])


def test_zeroshot_classification_cli_matches_api_and_resumes(tmp_path, capsys):
    data_dir = image_folder(tmp_path / "shapes")
    out = tmp_path / "res" / "{dataset}_{model}_{task}.json"
    model = evaclip.create_model("evaclip-tiny").eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")  # the CLI loads these very weights
    assert run_cli("--model", "evaclip-tiny", "--pretrained", tmp_path / "tiny.pt", "--dataset", data_dir,
                   "--output", out, "--workers", 0, "--batch-size", 4) == 0
    path = tmp_path / "res" / "shapes_evaclip-tiny_zeroshot_classification.json"
    result = json.loads(path.read_text())
    assert result["task"] == "zeroshot_classification" and result["dataset"] == "shapes"
    assert set(result["metrics_by_transform"]) == {"squash", "shortest"}
    assert result["metrics"]["acc5"] is None  # 3 classes
    best = max(result["metrics_by_transform"].values(), key=lambda m: m["acc1"])
    assert result["metrics"]["acc1"] == best["acc1"]
    # the same numbers straight from the Python API with the same model and transform
    tok = evaclip.get_tokenizer("evaclip-tiny")
    for mode, metrics in result["metrics_by_transform"].items():
        data = load_classification(data_dir, transforms.image_transform(model.visual.image_size, False, resize_mode=mode))
        ref = evaluate_zeroshot_classification(model, tok, image_loader(data.dataset, 3), data.classnames,
                                               default_templates("imagenet1k"))
        assert metrics["acc1"] == pytest.approx(ref["acc1"])
        assert metrics["mean_per_class_recall"] == pytest.approx(ref["mean_per_class_recall"])
    # resumable: a second run skips the existing file
    mtime = path.stat().st_mtime_ns
    assert run_cli("--model", "evaclip-tiny", "--pretrained", tmp_path / "tiny.pt", "--dataset", data_dir,
                   "--output", out) == 0
    assert path.stat().st_mtime_ns == mtime and "skip shapes" in capsys.readouterr().err


def test_retrieval_linear_probe_and_report_cli(tmp_path):
    root = tmp_path / "caps"
    root.mkdir()
    rows = [("image", "caption")]
    for i, (y, img) in enumerate(shapes(1)):
        img.save(root / f"{i}.png")
        rows += [(f"{i}.png", f"a {CLASSES[y]} shape"), (f"{i}.png", f"image {i}")]
    with open(root / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    res = tmp_path / "res"
    assert run_cli("--model", "evaclip-tiny", "--task", "zeroshot_retrieval", "--dataset", "caps",
                   "--dataset-root", tmp_path, "--output", res / "{dataset}_{task}.json", "--workers", 0) == 0
    r = json.loads((res / "caps_zeroshot_retrieval.json").read_text())
    assert set(r["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)} | {
        "num_nonfinite_scores", "num_skipped_files"}
    assert r["metrics"]["num_nonfinite_scores"] == 0 and r["metrics"]["num_skipped_files"] == 0
    assert r["metrics"]["text_retrieval_recall@5"] == 1.0  # 3 images, 6 captions: top-5 texts include one
    lp = tmp_path / "lp"
    image_folder(lp / "train", n=4, seed=1)
    image_folder(lp / "test", n=2, seed=2)
    assert run_cli("--model", "evaclip-tiny", "--task", "linear_probe", "--dataset", lp, "--workers", 0,
                   "--output", res / "{dataset}_{task}.json", "--lp-epochs", 2, "--feature-cache", tmp_path / "fc") == 0
    r = json.loads((res / "lp_linear_probe.json").read_text())
    assert 0 <= r["metrics"]["lp_acc1"] <= 1 and "acc1" not in r["metrics"]  # CLIP_benchmark's names
    assert {k: r["metrics"][k] for k in ("lr", "epochs", "batch_size", "weight_decay")} == {
        "lr": 0.1, "epochs": 2, "batch_size": 64, "weight_decay": 0.0}  # CLIP_benchmark's protocol
    assert len(list((tmp_path / "fc").glob("*.pt"))) == 2
    assert run_cli("report", res) == 0
    assert (res / "report.md").exists() and (res / "results.csv").exists()


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert run_cli("--model", "evaclip-tiny", "--dataset", tmp_path / "missing") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an existing path" in err
    (tmp_path / "empty").mkdir()
    assert run_cli("--model", "evaclip-tiny", "--dataset", tmp_path / "empty", "--output",
                   tmp_path / "x.json") == 2
    assert "expected a folder of class folders" in capsys.readouterr().err
    assert run_cli("--dataset", "x") == 2
    assert run_cli("report") == 2
    assert run_cli("report", tmp_path / "no_results_here") == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no_results_here").exists()
    assert run_cli("report", tmp_path / "empty") == 2
    assert "result JSON files" in capsys.readouterr().err


def test_video_cli(tmp_path):
    import av  # noqa: F401  (make test installs PyAV; a missing one must fail, not skip)
    from test_eval_video import write_video
    from eval_helpers import COLORS
    for name in ("red", "blue"):
        (tmp_path / "vids" / name).mkdir(parents=True)
        write_video(tmp_path / "vids" / name / "a.mp4", [COLORS[name]] * 6)
    res = tmp_path / "res" / "{dataset}_{task}.json"
    assert run_cli("--model", "evaclip-tiny", "--task", "video_classification", "--dataset", tmp_path / "vids",
                   "--num-frames", 2, "--image-transform", "squash", "--workers", 0, "--output", res) == 0
    r = json.loads((tmp_path / "res" / "vids_video_classification_2f.json").read_text())
    assert r["num_frames"] == 2 and r["transform"] == "squash" and r["metrics"]["acc1"] in (0.0, 0.5, 1.0)


def test_ranks_share_a_sweep_under_torchrun(tmp_path):
    import os
    import sys
    for name in ("a", "b", "c"):
        image_folder(tmp_path / name, n=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "evaclip.cli.main", "eval", "--model", "evaclip-tiny", "--workers", "0",
           "--image-transform", "squash", "--dataset", "a", "b", "c", "--dataset-root", str(tmp_path),
           "--output", str(tmp_path / "res" / "{dataset}.json")]
    proc = run_bounded(cmd, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "res").glob("*.json")) == ["a.json", "b.json", "c.json"]
