"""Result files in CLIP_benchmark's format, and reports laid out like the paper's Tables 2, 3, 5, 6a, 7 and 14a.

One JSON per (model, pretrained, dataset, task): ``{"dataset", "model", "pretrained", "task", "metrics",
"language"}`` plus evaclip's extras (``metrics_by_transform``, ``transform``, ``num_frames``). ``dataset`` keeps
CLIP_benchmark's ``wds/`` / ``vtab/`` prefixes and ``pretrained`` is always a string (``"none"`` for a model
without weights), as ``clip_benchmark build`` needs; the paper's tables match datasets by their canonical names.
"""
from __future__ import annotations

import csv
import io
import json
import math
import string
import sys
from pathlib import Path
from typing import Any, Callable

from evaclip.errors import ConfigError
from evaclip.eval.catalog import (BENCHMARKS, IMAGE_CLASSIFICATION, RETRIEVAL, ROBUSTNESS, VIDEO_CLASSIFICATION,
                                     canonical_name)
from evaclip.eval.metrics import mean_recall
from evaclip.eval.robustness import robustness_summary
from evaclip.outputs import atomic_write, atomic_write_text, check_output

DEFAULT_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}.json"
TRANSFORM_MARKS = {"squash": "†", "shortest": "*"}  # the paper's marks (Table 14)
NO_PRETRAINED = "none"  # the "pretrained" of a model evaluated without weights (file names use it too)


def _clean(s: str) -> str:
    return str(s).replace("/", "_").replace(" ", "_")


# the fields output_path fills (the CLI checks a --output template against them before any work)
OUTPUT_PLACEHOLDERS = ("dataset", "dataset_cleaned", "model", "pretrained", "task", "language")


def check_output_template(template: str) -> None:
    """An --output template must name only known placeholders: str.format would otherwise fail (KeyError,
    ValueError) only after the model is built, or leave a literal brace."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"--output {template!r} is not a valid template ({e}); use placeholders "
                          f"{', '.join('{%s}' % p for p in OUTPUT_PLACEHOLDERS)} and write a literal brace "
                          f"as {{{{ or }}}}") from None
    unknown = [f for f in fields if f not in OUTPUT_PLACEHOLDERS]
    if unknown:
        raise ConfigError(f"--output {template!r} has the unknown placeholder {{{unknown[0]}}}; use "
                          f"{', '.join('{%s}' % p for p in OUTPUT_PLACEHOLDERS)}")


def output_path(template: str, dataset: str, model: str, pretrained: str | None, task: str,
                language: str = "en", num_frames: int | None = None) -> Path:
    """Fill an output template (CLIP_benchmark's placeholders: ``{dataset}`` is the name without ``wds/`` and
    ``/`` as ``_``, ``{dataset_cleaned}`` with ``/`` as ``-``); video runs get ``_{N}f`` before ``.json`` so
    1-frame and 8-frame results of the same set do not overwrite each other."""
    plain = dataset.strip().removeprefix("wds/")
    path = template.format(dataset=_clean(plain), dataset_cleaned=_clean(plain.replace("/", "-")),
                           model=_clean(model),
                           pretrained=_clean(Path(pretrained).stem if pretrained else NO_PRETRAINED),
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
    """Write one result JSON atomically (parents created; an interrupted sweep never leaves half a file that
    --skip-existing trusts); returns the dict written."""
    record = {"dataset": dataset, "model": model, "pretrained": pretrained or NO_PRETRAINED, "task": task,
              "metrics": metrics, "language": language, **extra}
    atomic_write_text(path, json.dumps(_jsonable(record), indent=2) + "\n", what="result file")
    return record


RESULT_KEYS = {"dataset", "model", "task", "metrics"}


def _problem(r: dict) -> str | None:
    """Why a result file (a dict with RESULT_KEYS) cannot be tabulated, or None."""
    for key in ("dataset", "model", "task"):
        if not isinstance(r[key], str):
            return f'"{key}" is {json.dumps(r[key])[:40]}, not a string'
    if r.get("pretrained") is not None and not isinstance(r["pretrained"], str):
        return '"pretrained" is not a string'

    def numbers(m: Any, where: str) -> str | None:
        if not isinstance(m, dict):
            return f'"{where}" is {json.dumps(m)[:40]}, not an object of numbers'
        bad = [k for k, v in m.items() if not (v is None or isinstance(v, (int, float)))]
        return f'"{where}.{bad[0]}" is not a number' if bad else None
    why = numbers(r["metrics"], "metrics")
    if why is None and r.get("metrics_by_transform") is not None:
        by = r["metrics_by_transform"]
        if not isinstance(by, dict):
            return '"metrics_by_transform" is not an object'
        why = next((w for mode, m in by.items() if (w := numbers(m, f"metrics_by_transform.{mode}"))), None)
    if why is None and r["task"] == "video_classification" and not isinstance(r.get("num_frames"), int):
        return 'a video result needs an integer "num_frames"'
    return why


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_results(results_dir: str | Path, skipped: list[str] | None = None) -> list[dict]:
    """Every result JSON under a folder (recursively). JSON files that are not results are ignored; a result
    that cannot be read or tabulated (e.g. ``"metrics": null``) is left out, with a line naming the file and
    the reason appended to ``skipped``."""
    out, skipped = [], [] if skipped is None else skipped
    for p in sorted(Path(results_dir).rglob("*.json")):
        try:
            r = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append(f"{p}: not readable JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            continue
        if not (isinstance(r, dict) and RESULT_KEYS <= r.keys()):
            continue
        why = _problem(r)
        if why:
            skipped.append(f"{p}: {why}")
            continue
        out.append(r)
    return out


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: float, scale: float = 100.0) -> str:
    return "-" if v is None or math.isnan(v) else f"{v * scale:.1f}"


def _model_name(r: dict) -> str:
    pretrained = r.get("pretrained")
    return f"{r['model']} ({pretrained})" if pretrained and pretrained != NO_PRETRAINED else str(r["model"])


def _probe_acc1(metrics: dict) -> float:
    """Linear-probe top-1: CLIP_benchmark's ``lp_acc1`` (older evaclip results wrote ``acc1``)."""
    return _num(metrics.get("lp_acc1", metrics.get("acc1")))


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _by_model(results: list[dict], task: str) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {}
    for r in results:
        if r["task"] == task:
            key = _model_name(r) + (f" #F{r['num_frames']}" if task == "video_classification" else "")
            table.setdefault(key, {})[canonical_name(r["dataset"])] = r["metrics"]
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
                per_mode.setdefault(f"{_model_name(r)} {TRANSFORM_MARKS.get(mode, mode)}", {})[
                    canonical_name(r["dataset"])] = _num(m.get("acc1"))
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
    rows = [[model] + [_fmt(_probe_acc1(sets.get(d, {}))) for d in names] for model, sets in probed.items()]
    tables["table7_linear_probe"] = (header, rows)
    return tables


def _csv_text(rows: list[list]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def write_report(results_dir: str | Path, out_dir: str | Path | None = None, plot: bool = True,
                 warn: Callable[[str], None] = _stderr_warning) -> list[Path]:
    """Write ``results.csv`` (one row per result, flat metrics), ``report.md`` and one CSV per paper table,
    and ``report.png`` (Table 2 top-1 per dataset and model); returns the files written. Result files that
    cannot be tabulated are skipped with a ``warn`` line each; if none is left, that is the error."""
    if not Path(results_dir).is_dir():
        raise ConfigError(f"results folder {results_dir} does not exist; pass the folder of result JSON files")
    skipped: list[str] = []
    results = load_results(results_dir, skipped)
    if not results:
        first = f" ({len(skipped)} skipped, e.g. {skipped[0]})" if skipped else ""
        raise ConfigError(f"no usable result JSON files (with dataset, model, task, metrics) under "
                          f"{results_dir}{first}; fix or remove them")
    for line in skipped:
        warn(f"skipped {line}")
    out = Path(out_dir or results_dir)
    tables = table_rows(results)
    files = ["results.csv", *(f"{name}.csv" for name in tables), "report.md"]
    if plot and tables["table2_zeroshot_classification"][1]:
        files.append("report.png")
    for name in files:  # every target checked before anything is written
        check_output(out / name, overwrite=True, what="report file")
    metric_names = sorted({k for r in results for k in r["metrics"]})
    rows = [["model_fullname", "model", "pretrained", "dataset", "task", "num_frames"] + metric_names]
    rows += [[_model_name(r), r["model"], r.get("pretrained"), r["dataset"], r["task"], r.get("num_frames", "")]
             + ["" if r["metrics"].get(m) is None else r["metrics"][m] for m in metric_names] for r in results]
    atomic_write_text(out / "results.csv", _csv_text(rows), what="report file")
    md = [f"# Evaluation report ({len(results)} results from {results_dir})", ""]
    for name, (header, rows) in tables.items():
        atomic_write_text(out / f"{name}.csv", _csv_text([header, *rows]), what="report file")
        md += [f"## {name.replace('_', ' ')}", "", _markdown(header, rows) if rows else "(no results)", ""]
    atomic_write_text(out / "report.md", "\n".join(md), what="report file")
    if "report.png" in files:
        atomic_write(out / "report.png", lambda tmp: _plot(tables["table2_zeroshot_classification"], tmp),
                     what="report file")
    return [out / name for name in files]


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
    fig.savefig(path, dpi=100, format="png")  # format given: ``path`` may be a temporary name
    plt.close(fig)
    return path
