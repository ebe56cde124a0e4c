"""Result files and the paper-layout report (tables reproduce numbers computed by hand from the paper)."""
import csv
import json

from evaclip.eval.results import load_results, output_path, table_rows, write_report, write_result
from evaclip.eval.runner import rank_share

EVA18B_ROBUST = {"imagenet1k": 0.838, "imagenet-a": 0.873, "imagenet-r": 0.957, "imagenetv2": 0.779,
                 "imagenet_sketch": 0.747, "objectnet": 0.822}


def test_output_path_and_json_format(tmp_path):
    p = output_path(str(tmp_path / "{dataset}_{pretrained}_{model}_{language}_{task}.json"), "wds/cifar10",
                    "EVA02-CLIP-B-16", "/ckpt/eva.pt", "zeroshot_classification")
    assert p.name == "wds_cifar10_eva_EVA02-CLIP-B-16_en_zeroshot_classification.json"
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
