"""Result files and the paper-layout report (tables reproduce numbers computed by hand from the paper)."""
import csv
import json
import os
from pathlib import Path

import pytest

from evaclip.errors import ConfigError

from evaclip.eval.results import load_results, output_path, table_rows, write_report, write_result
from evaclip.eval.runner import rank_share

EVA18B_ROBUST = {"imagenet1k": 0.838, "imagenet-a": 0.873, "imagenet-r": 0.957, "imagenetv2": 0.779,
                 "imagenet_sketch": 0.747, "objectnet": 0.822}


def test_output_path_and_json_format(tmp_path):
    p = output_path(str(tmp_path / "{dataset}_{pretrained}_{model}_{language}_{task}.json"), "wds/cifar10",
                    "EVA02-CLIP-B-16", "/ckpt/eva.pt", "zeroshot_classification")
    assert p.name == "cifar10_eva_EVA02-CLIP-B-16_en_zeroshot_classification.json"  # CLIP_benchmark's slug
    assert output_path("{dataset}|{dataset_cleaned}.json", "wds/vtab/cifar10", "m", None, "t").name == \
        "vtab_cifar10|vtab-cifar10.json"
    v = output_path("r/{dataset}_{task}.json", "ucf101", "m", None, "video_classification", num_frames=8)
    assert str(v) == "r/ucf101_video_classification_8f.json"
    rec = write_result(p, "cifar10", "EVA02-CLIP-B-16", "/ckpt/eva.pt", "zeroshot_classification",
                       {"acc1": 0.5, "acc5": float("nan"), "mean_per_class_recall": 0.4})
    on_disk = json.loads(p.read_text())  # strict JSON: NaN written as null
    assert on_disk["metrics"]["acc5"] is None and on_disk["metrics"]["acc1"] == 0.5
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= on_disk.keys()
    assert rec["dataset"] == "cifar10" and not list(tmp_path.glob("*.tmp"))


def test_report_tables_match_the_paper(tmp_path):
    for name, acc in EVA18B_ROBUST.items():
        by_mode = {"squash": {"acc1": acc}, "shortest": {"acc1": acc - 0.01}}
        write_result(tmp_path / f"{name}.json", name, "EVA-CLIP-18B", None, "zeroshot_classification",
                     {"acc1": acc, "acc5": 0.99, "mean_per_class_recall": acc}, metrics_by_transform=by_mode,
                     transform="squash")
    # Table 3 row of EVA-CLIP-18B: Flickr text 96.7 99.7 100.0, COCO text 73.6 90.9 95.0,
    # Flickr image 83.3 96.3 98.3, COCO image 56.2 78.5 85.6 -> MR 87.8
    ret = {"flickr30k": ([96.7, 99.7, 100.0], [83.3, 96.3, 98.3]), "mscoco_captions": ([73.6, 90.9, 95.0], [56.2, 78.5, 85.6])}
    for name, (text, image) in ret.items():
        m = {f"text_retrieval_recall@{k}": v / 100 for k, v in zip((1, 5, 10), text)}
        m.update({f"image_retrieval_recall@{k}": v / 100 for k, v in zip((1, 5, 10), image)})
        write_result(tmp_path / f"{name}.json", name, "EVA-CLIP-18B", None, "zeroshot_retrieval", m)
    # Table 5 (1 frame): UCF 86.0, K400 72.9, K600 72.9, K700 68.2 -> avg 75.0
    for name, score in {"ucf101": 0.860, "kinetics400": 0.729, "kinetics600": 0.729, "kinetics700": 0.682}.items():
        write_result(tmp_path / f"{name}_v.json", name, "EVA-CLIP-18B", None, "video_classification",
                     {"acc1": score, "acc5": score, "score": score}, num_frames=1)
    write_result(tmp_path / "lp.json", "imagenet1k", "EVA-CLIP-18B", None, "linear_probe",
                 {"acc1": 0.889, "acc5": 0.98, "mean_per_class_recall": 0.889, "weight_decay": 0.01})
    (tmp_path / "unrelated.json").write_text('{"not": "a result"}')
    assert len(load_results(tmp_path)) == 13
    tables = table_rows(load_results(tmp_path))
    header, rows = tables["table6a_robustness"]
    assert rows[0][-2:] == ["0.2", "83.6"]
    header, rows = tables["table3_zeroshot_retrieval"]
    assert rows[0][1:4] == ["96.7", "99.7", "100.0"] and rows[0][-1] == "87.8"
    header, rows = tables["table5_video_classification"]
    assert rows[0][0].endswith("#F1") and rows[0][-1] == "75.0"
    header, rows = tables["table2_zeroshot_classification"]
    assert len(header) == 29 and rows[0][1] == "83.8" and rows[0][-1] == "83.6 (6)"
    assert tables["table7_linear_probe"] == (["model", "ImageNet-1K"], [["EVA-CLIP-18B", "88.9"]])
    header, rows = tables["table14a_transforms"]
    assert [r[0] for r in rows] == ["EVA-CLIP-18B †", "EVA-CLIP-18B *"]
    assert rows[0][-1] == "83.6 (6)" and rows[1][-1] == "82.6 (6)" and rows[1][1] == "82.8"
    files = write_report(tmp_path, tmp_path / "report")
    names = {f.name for f in files}
    assert {"results.csv", "report.md", "report.png", "table2_zeroshot_classification.csv"} <= names
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| EVA-CLIP-18B | 83.8 | 87.3 | 95.7 | 77.9 | 74.7 | 82.2 | 0.2 | 83.6 |" in md
    with open(tmp_path / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and {r["task"] for r in rows} == {"zeroshot_classification", "zeroshot_retrieval",
                                                             "video_classification", "linear_probe"}
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_rank_share_covers_every_job_once():
    jobs = list(range(7))
    shares = [rank_share(jobs, r, 3) for r in range(3)]
    assert sorted(x for s in shares for x in s) == jobs and shares[0] == [0, 3, 6]


def clip_benchmark_build(files: list) -> list[dict]:
    """What `clip_benchmark build` does with each result file: metrics flattened into the row, and the
    model's full name as model + " " + pretrained (a null pretrained raises TypeError there)."""
    rows = []
    for path in files:
        data = json.loads(Path(path).read_text())
        row = {**data["metrics"], **{k: v for k, v in data.items() if k != "metrics"}}
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        rows.append(row)
    return rows


def test_results_without_pretrained_weights_build_in_clip_benchmark(tmp_path):
    write_result(tmp_path / "a.json", "wds/vtab/cifar10", "EVA02-CLIP-B-16", None, "zeroshot_classification",
                 {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.5})
    write_result(tmp_path / "b.json", "vtab/resisc45", "EVA02-CLIP-B-16", "/ckpt/eva.pt", "linear_probe",
                 {"lp_acc1": 0.7, "lp_acc5": 0.95, "lp_mean_per_class_recall": 0.7})
    rows = clip_benchmark_build([tmp_path / "a.json", tmp_path / "b.json"])
    assert [r["model_fullname"] for r in rows] == ["EVA02-CLIP-B-16 none", "EVA02-CLIP-B-16 /ckpt/eva.pt"]
    assert rows[0]["dataset"] == "wds/vtab/cifar10" and rows[1]["lp_acc1"] == 0.7  # CB's own names
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask  # written via evaclip.outputs
    tables = table_rows(load_results(tmp_path))
    header, rows = tables["table2_zeroshot_classification"]
    assert rows == [["EVA02-CLIP-B-16"] + ["50.0" if h == "CIFAR-10" else "-" for h in header[1:-1]] + ["50.0 (1)"]]
    assert tables["table7_linear_probe"] == (["model", "RESISC45"], [["EVA02-CLIP-B-16 (/ckpt/eva.pt)", "70.0"]])


def test_write_result_never_replaces_a_non_regular_file(tmp_path):
    from evaclip.errors import EvaclipError

    (tmp_path / "target.json").write_text("keep me")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    with pytest.raises(EvaclipError, match="symbolic link"):
        write_result(tmp_path / "link.json", "cifar10", "m", None, "zeroshot_classification", {"acc1": 0.1})
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "target.json").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "target.json"]


def test_report_skips_malformed_results_with_one_warning_each(tmp_path):
    write_result(tmp_path / "good.json", "cifar10", "m", None, "zeroshot_classification", {"acc1": 0.25})
    bad = {"null_metrics": {"metrics": None}, "list_metrics": {"metrics": [0.1]},
           "text_metric": {"metrics": {"acc1": "high"}}, "numeric_model": {"model": 3},
           "video_without_frames": {"task": "video_classification", "metrics": {"score": 0.3}},
           "bad_by_transform": {"metrics_by_transform": {"squash": None}}}
    for name, change in bad.items():
        record = {"dataset": "cifar100", "model": "m", "pretrained": "none", "task": "zeroshot_classification",
                  "metrics": {"acc1": 0.5}, "language": "en", **change}
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "truncated.json").write_text('{"dataset": "cifar10", "metr')
    warnings: list[str] = []
    files = write_report(tmp_path, tmp_path / "report", warn=warnings.append)
    assert sorted(w.split(":")[0] for w in warnings) == sorted(f"skipped {tmp_path}/{n}.json"
                                                               for n in [*bad, "truncated"])
    assert all("\n" not in w for w in warnings) and "metrics" in " ".join(warnings)
    with open(tmp_path / "report" / "results.csv") as f:
        assert [r["dataset"] for r in csv.DictReader(f)] == ["cifar10"]
    assert {f.name for f in files} >= {"results.csv", "report.md"}
    (tmp_path / "good.json").unlink()
    warnings.clear()
    with pytest.raises(ConfigError, match=r"no usable result JSON files .*\(7 skipped, e\.g\. .*bad_by_transform"):
        write_report(tmp_path, tmp_path / "report2", warn=warnings.append)
    assert warnings == [] and not (tmp_path / "report2").exists()
