"""Result files in CLIP_benchmark's format, and reports laid out like the paper's Tables 2, 3, 5, 6a, 7 and 14a.

One JSON per (model, pretrained, dataset, task): ``{"dataset", "model", "pretrained", "task", "metrics",
"language"}`` plus evaclip's extras (``metrics_by_transform``, ``transform``, ``num_frames``).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from evaclip.errors import ConfigError
from evaclip.eval.benchmarks import BENCHMARKS, IMAGE_CLASSIFICATION, RETRIEVAL, ROBUSTNESS, VIDEO_CLASSIFICATION
from evaclip.eval.metrics import mean_recall
from evaclip.eval.robustness import robustness_summary

DEFAULT_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"
TRANSFORM_MARKS = {"squash": "†", "shortest": "*"}  # the paper's marks (Table 14)


def _clean(s: str) -> str:
    return str(s).replace("/", "_").replace(" ", "_")


def output_path(template: str, dataset: str, model: str, pretrained: str | None, task: str,
                language: str = "en", num_frames: int | None = None) -> Path:
    """Fill an output template (CLIP_benchmark's placeholders); video runs get ``_{N}f`` before ``.json``
    so 1-frame and 8-frame results of the same set do not overwrite each other."""
    path = template.format(dataset=_clean(dataset), dataset_cleaned=_clean(dataset), model=_clean(model),
                           pretrained=_clean(Path(pretrained).stem if pretrained else "none"),
                           task=task, language=language)
    if num_frames is not None and task == "video_classification":
        stem = path[:-5] if path.endswith(".json") else path
        path = f"{stem}_{num_frames}f.json"
    return Path(path)


def _jsonable(x: Any) -> Any:
    """NaN is not valid JSON: write it as null (CLIP_benchmark writes NaN, which strict parsers reject)."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_result(path: str | Path, dataset: str, model: str, pretrained: str | None, task: str,
                 metrics: dict[str, float], language: str = "en", **extra: Any) -> dict:
    """Write one result JSON (parents created); returns the dict written."""
    record = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
              "metrics": metrics, "language": language, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    tmp.replace(path)  # atomic: an interrupted sweep never leaves half a file that --skip-existing trusts
    return record


def load_results(results_dir: str | Path) -> list[dict]:
    """Every result JSON under a folder (recursively); other JSON files are ignored."""
    out = []
    for p in sorted(Path(results_dir).rglob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(r, dict) and {"dataset", "model", "task", "metrics"} <= r.keys():
            out.append(r)
    return out


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: float, scale: float = 100.0) -> str:
    return "-" if v is None or math.isnan(v) else f"{v * scale:.1f}"


def _model_name(r: dict) -> str:
    return f"{r['model']} ({r['pretrained']})" if r.get("pretrained") else str(r["model"])


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _by_model(results: list[dict], task: str) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        if r["task"] == task:
            key = _model_name(r) + (f" #F{r['num_frames']}" if task == "video_classification" else "")
            table.setdefault(key, {})[r["dataset"]] = r["metrics"]
    return table


def table_rows(results: list[dict]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The paper's tables as (header, rows of strings), numbers in percent."""
    tables = {}
    # Table 2: zero-shot top-1 on the 27 image sets (+ the average over the sets present)
    header = ["model"] + [b.title for b in IMAGE_CLASSIFICATION] + ["avg. (sets)"]
    rows = []
    for model, sets in _by_model(results, "zeroshot_classification").items():
        vals = [_num(sets.get(b.name, {}).get("acc1")) for b in IMAGE_CLASSIFICATION]
        present = [v for v in vals if not math.isnan(v)]
        avg = sum(present) / len(present) if present else float("nan")
        rows.append([model] + [_fmt(v) for v in vals] + [f"{_fmt(avg)} ({len(present)})"])
    tables["table2_zeroshot_classification"] = (header, rows)
    # Table 3: retrieval, text then image recall@1/5/10 on Flickr30K and COCO, and MR
    header = ["model"] + [f"{d} {b.title} R@{k}" for d in ("text", "image") for b in RETRIEVAL for k in (1, 5, 10)]
    header.append("MR")
    rows = []
    for model, sets in _by_model(results, "zeroshot_retrieval").items():
        vals = [_num(sets.get(b.name, {}).get(f"{d}_retrieval_recall@{k}"))
                for d in ("text", "image") for b in RETRIEVAL for k in (1, 5, 10)]
        rows.append([model] + [_fmt(v) for v in vals] + [_fmt(mean_recall(vals))])
    tables["table3_zeroshot_retrieval"] = (header, rows)
    # Table 5: video (UCF-101 top-1, Kinetics mean(top-1, top-5)) and the average
    header = ["model"] + [b.title for b in VIDEO_CLASSIFICATION] + ["avg."]
    rows = []
    for model, sets in _by_model(results, "video_classification").items():
        vals = [_num(sets.get(b.name, {}).get("score")) for b in VIDEO_CLASSIFICATION]
        avg = sum(vals) / len(vals)
        rows.append([model] + [_fmt(v) for v in vals] + [_fmt(avg)])
    tables["table5_video_classification"] = (header, rows)
    # Table 6a: robustness
    header = ["model"] + [BENCHMARKS[n].title for n in ROBUSTNESS] + ["Δ↓", "avg. acc."]
    rows = []
    for model, sets in _by_model(results, "zeroshot_classification").items():
        acc = {n: _num(sets.get(n, {}).get("acc1")) for n in ROBUSTNESS}
        summary = robustness_summary(acc)
        rows.append([model] + [_fmt(acc[n]) for n in ROBUSTNESS] + [_fmt(summary["delta"]), _fmt(summary["avg"])])
    tables["table6a_robustness"] = (header, rows)
    # Table 14a: zero-shot top-1 per image transform (from runs with --image-transform both)
    header = ["model"] + [b.title for b in IMAGE_CLASSIFICATION] + ["avg. (sets)"]
    rows = []
    per_mode: dict[str, dict[str, float]] = {}
    for r in results:
        if r["task"] == "zeroshot_classification":
            for mode, m in (r.get("metrics_by_transform") or {}).items():
                per_mode.setdefault(f"{_model_name(r)} {TRANSFORM_MARKS.get(mode, mode)}", {})[r["dataset"]] = _num(m.get("acc1"))
    for model, sets in per_mode.items():
        vals = [sets.get(b.name, float("nan")) for b in IMAGE_CLASSIFICATION]
        present = [v for v in vals if not math.isnan(v)]
        avg = sum(present) / len(present) if present else float("nan")
        rows.append([model] + [_fmt(v) for v in vals] + [f"{_fmt(avg)} ({len(present)})"])
    tables["table14a_transforms"] = (header, rows)
    # Table 7: linear probe top-1 (ImageNet-1K in the paper; every probed set here)
    probed = _by_model(results, "linear_probe")
    names = sorted({d for sets in probed.values() for d in sets}, key=lambda d: (d != "imagenet1k", d))
    header = ["model"] + [BENCHMARKS[d].title if d in BENCHMARKS else d for d in names]
    rows = [[model] + [_fmt(_num(sets.get(d, {}).get("acc1"))) for d in names] for model, sets in probed.items()]
    tables["table7_linear_probe"] = (header, rows)
    return tables


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, plot: bool = True) -> list[Path]:
    """Write ``results.csv`` (one row per result, flat metrics), ``report.md`` and one CSV per paper table,
    and ``report.png`` (Table 2 top-1 per dataset and model); returns the files written."""
    if not Path(results_dir).is_dir():
        raise ConfigError(f"results folder {results_dir} does not exist; pass the folder of result JSON files")
    results = load_results(results_dir)
    if not results:
        raise ConfigError(f"no result JSON files (with dataset, model, task, metrics) under {results_dir}")
    out = Path(out_dir or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    metric_names = sorted({k for r in results for k, v in r["metrics"].items() if isinstance(v, (int, float, type(None)))})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model_fullname", "model", "pretrained", "dataset", "task", "num_frames"] + metric_names)
        for r in results:
            w.writerow([_model_name(r), r["model"], r.get("pretrained"), r["dataset"], r["task"], r.get("num_frames", "")]
                       + ["" if r["metrics"].get(m) is None else r["metrics"].get(m) for m in metric_names])
    written.append(out / "results.csv")
    tables = table_rows(results)
    md = [f"# Evaluation report ({len(results)} results from {results_dir})", ""]
    for name, (header, rows) in tables.items():
        with open(out / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        written.append(out / f"{name}.csv")
        md += [f"## {name.replace('_', ' ')}", "", _markdown(header, rows) if rows else "(no results)", ""]
    (out / "report.md").write_text("\n".join(md))
    written.append(out / "report.md")
    if plot and tables["table2_zeroshot_classification"][1]:
        written.append(_plot(tables["table2_zeroshot_classification"], out / "report.png"))
    return written


def _plot(table: tuple[list[str], list[list[str]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, rows = table
    names = header[1:-1]
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.45), 4.5))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        vals = [float(v) if v != "-" else 0.0 for v in row[1:-1]]
        ax.bar([x + i * width for x in range(len(names))], vals, width=width, label=row[0])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_title("Zero-shot image classification (Table 2 layout)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
