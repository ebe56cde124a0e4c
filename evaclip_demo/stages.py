"""``evaclip demo``: the paper's weak-to-strong loop, end to end, on the offline data.

Per seed: prepare data (cached) -> teacher EVA-CLIP -> MIM student distilled from the teacher's vision tower
-> student EVA-CLIP initialised from the MIM student (vision) and the teacher (text) -> control: the student's
architecture trained from scratch with the compute of MIM + student CLIP -> the paper's last phase: the
student continues on image pairs mixed with video clips ("video"), and, as its ablation, on image pairs only
("video_images") -> evaluate all five (zero-shot video with 1 and 8 frames included).

Every stage is a run of the ordinary trainer with a ``demo-*`` recipe (:mod:`evaclip_demo.recipes`)
and writes to ``OUT/runs/seed<k>/<stage>/``. A stage whose outputs exist is skipped, and an interrupted stage
continues from its last checkpoint, so a killed demo resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from safetensors import safe_open
from tqdm import tqdm

from evaclip.errors import ConfigError
from evaclip.models import get_model_config
from evaclip.models.flops import mim_training_flops, model_flops
from evaclip.train.config import apply_overrides
from evaclip.train.recipes import get_recipe
from evaclip.train.run_state import find_latest
from evaclip.train.trainer import train
from evaclip_demo.recipes import (MIM_STEPS, STUDENT_STEPS, TEACHER_STEPS, VIDEO_STEPS, train_sources,
                                  video_sources)

STAGES = ("teacher", "mim", "student", "control", "video", "video_images")
MODELS = ("teacher", "student", "control")
CONTINUED = ("video", "video_images")  # the student after the video stage, and after its image-only ablation


@dataclass(frozen=True)
class Budget:
    """Step budgets (not wall time: the same numbers on any machine give the same result)."""

    batch_size: int = 128
    teacher_steps: int = TEACHER_STEPS
    mim_steps: int = MIM_STEPS
    student_steps: int = STUDENT_STEPS
    video_steps: int = VIDEO_STEPS  # each of the two continuations of the student (video, image-only)
    warmup_steps: int = 50
    patch_dropout: float = 0.5  # on the student and control CLIPs (the paper's 0.5)
    checkpoint_every: int = 100  # lets a killed demo continue inside a stage
    eval_batch_size: int = 128


FULL = Budget()
QUICK = Budget(batch_size=8, teacher_steps=12, mim_steps=6, student_steps=6, video_steps=4, warmup_steps=2,
               checkpoint_every=0, eval_batch_size=64)


@dataclass
class DemoOptions:
    out: Path = Path("demo_out")
    data_dir: Path | None = None  # None: $EVACLIP_DATA or ./data_cache/offline (see evaclip data prepare)
    seeds: list[int] = field(default_factory=lambda: [0])
    quick: bool = False
    budget: Budget | None = None  # None: QUICK or FULL
    progress: bool = True

    def resolved_budget(self) -> Budget:
        return self.budget or (QUICK if self.quick else FULL)


def _say(msg: str) -> None:
    tqdm.write(msg)


# ---------------------------------------------------------------------------------------------- stages
def stage_done(out_dir: Path) -> bool:
    return all((out_dir / f).is_file() for f in ("final.safetensors", "model_config.json", "summary.json"))


def _stage_config(recipe: str, out_dir: Path, steps: int, seed: int, data_dir: Path, budget: Budget,
                  progress: bool, overrides: tuple[str, ...] = (), sources=None):
    """The recipe with the demo's data (``sources``, default the image pairs), budget and seed, then
    ``overrides`` (dotted ``key=value``, the syntax of ``evaclip train``)."""
    cfg = get_recipe(recipe)
    cfg.out_dir = str(out_dir)
    cfg.steps = steps
    cfg.seed = seed
    cfg.progress = progress
    cfg.data.sources = sources or train_sources(data_dir / "train")
    cfg.data.batch_size = budget.batch_size
    cfg.data.seed = seed
    cfg.schedule.warmup_steps = min(cfg.schedule.warmup_steps, budget.warmup_steps, max(0, steps - 1))
    cfg.checkpoint_every = budget.checkpoint_every if budget.checkpoint_every < steps else 0
    return apply_overrides(cfg, list(overrides))


def run_stage(name: str, cfg) -> dict[str, Any]:
    """Train one stage unless its outputs exist; returns the trainer's summary (plus ``wall_s`` summed over
    interrupted attempts)."""
    out = Path(cfg.out_dir)
    if stage_done(out):
        _say(f"[demo] {name}: done already ({out}), skipped")
        return json.loads((out / "summary.json").read_text())
    if find_latest(out).path is not None:
        cfg.resume = "latest"
        _say(f"[demo] {name}: continuing from the last checkpoint in {out}")
    else:
        _say(f"[demo] {name}: training {cfg.steps} steps of {cfg.data.batch_size} ({cfg.model.name}, task "
             f"{cfg.task}) -> {out}")
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "wall_before_resume.json"
    before = json.loads(earlier.read_text())["wall_s"] if earlier.is_file() else 0.0
    started = time.perf_counter()
    try:
        summary = train(cfg)
    except BaseException:
        earlier.write_text(json.dumps({"wall_s": before + time.perf_counter() - started}))
        raise
    summary["wall_s"] = before + summary["wall_s"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.checkpoint_every:  # the exported weights are what is kept; the checkpoints only served resume
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return summary


def mim_flops(student_model: str, teacher_model: str) -> int:
    """Training FLOPs of one image of the MIM stage (:func:`evaclip.models.flops.mim_training_flops`)."""
    student, teacher = get_model_config(student_model), get_model_config(teacher_model)
    return mim_training_flops(student.vision_cfg, teacher.vision_cfg, teacher.embed_dim)


def clip_flops(model: str, patch_dropout: float = 0.0):
    """FLOPs of one image-text pair of a CLIP stage (:func:`evaclip.models.flops.model_flops`)."""
    return model_flops(get_model_config(model), patch_dropout)


def control_steps(budget: Budget, teacher_model: str, student_model: str) -> int:
    """Steps of the from-scratch control with the trained compute of MIM + student CLIP (same batch).

    The frozen text encoder's forward is left out of the match: it is the same fixed feature extractor for
    every model, so counting it would hand the control fewer extra steps (the stricter comparison)."""
    clip = clip_flops(student_model, budget.patch_dropout).training(include_frozen=False)
    mim = mim_flops(student_model, teacher_model)
    return int(round(budget.student_steps + budget.mim_steps * mim / clip))


def run_seed(seed: int, data_dir: Path, out: Path, budget: Budget, progress: bool = True) -> dict[str, Any]:
    """All four stages of one seed, then the evaluations; returns the seed's record for results.json."""
    from evaclip_demo.evaluate import VIDEO_KEYS, evaluate_model
    root = out / "runs" / f"seed{seed}"
    dirs = {s: root / s for s in STAGES}
    teacher_model, student_model = "demo-teacher", "demo-student"

    summaries = {"teacher": run_stage("teacher", _stage_config(
        "demo-teacher", dirs["teacher"], budget.teacher_steps, seed, data_dir, budget, progress))}
    teacher_w, teacher_json = dirs["teacher"] / "final.safetensors", dirs["teacher"] / "model_config.json"
    summaries["mim"] = run_stage("mim", _stage_config(
        "demo-mim", dirs["mim"], budget.mim_steps, seed, data_dir, budget, progress,
        overrides=(f"mim.teacher={teacher_w}", f"mim.teacher_model={teacher_json}")))
    summaries["student"] = run_stage("student", _stage_config(
        "demo-student", dirs["student"], budget.student_steps, seed, data_dir, budget, progress,
        overrides=(f"model.pretrained_image={dirs['mim'] / 'final.safetensors'}",
                   f"model.pretrained_text={teacher_w}", f"model.patch_dropout={budget.patch_dropout}")))
    n_control = control_steps(budget, teacher_model, student_model)
    summaries["control"] = run_stage("control", _stage_config(
        "demo-control", dirs["control"], n_control, seed, data_dir, budget, progress,
        overrides=(f"model.patch_dropout={budget.patch_dropout}",)))
    # The paper's last phase: the student goes on with video clips mixed in; its ablation goes on with images.
    go_on = (f"model.pretrained={dirs['student'] / 'final.safetensors'}", f"model.patch_dropout={budget.patch_dropout}")
    summaries["video"] = run_stage("video", _stage_config(
        "demo-video", dirs["video"], budget.video_steps, seed, data_dir, budget, progress, overrides=go_on,
        sources=video_sources(data_dir)))
    summaries["video_images"] = run_stage("video_images", _stage_config(
        "demo-video-images", dirs["video_images"], budget.video_steps, seed, data_dir, budget, progress,
        overrides=go_on))

    samples = {s: summaries[s]["samples_seen"] for s in STAGES}
    teacher_pair, student_pair = clip_flops(teacher_model), clip_flops(student_model, budget.patch_dropout)
    mim_image = mim_flops(student_model, teacher_model)
    flops = {
        "teacher": samples["teacher"] * teacher_pair.training(),
        "mim": samples["mim"] * mim_image,
        "student_clip": samples["student"] * student_pair.training(),
        "control": samples["control"] * student_pair.training(),
    }
    matched = {  # the trained compute used to size the control (frozen text encoder left out)
        "student": samples["mim"] * mim_image + samples["student"] * student_pair.training(include_frozen=False),
        "control": samples["control"] * student_pair.training(include_frozen=False),
    }
    record: dict[str, Any] = {"seed": seed, "stages": {}}
    for s in STAGES:
        record["stages"][s] = {"steps": summaries[s]["steps"], "samples": samples[s],
                               "video_samples": summaries[s].get("video_samples", 0),
                               "wall_s": summaries[s]["wall_s"], "final_loss": summaries[s].get("final_loss")}
    own_flops = {"teacher": flops["teacher"], "student": flops["mim"] + flops["student_clip"],
                 "control": flops["control"]}
    trained = {"teacher": samples["teacher"] * teacher_pair.training(include_frozen=False), **matched}
    metrics = {}
    for m in MODELS + CONTINUED:
        d = dirs[m]
        cached = d / "eval.json"
        if cached.is_file() and all(k in (known := json.loads(cached.read_text())) for k in VIDEO_KEYS):
            metrics[m] = known
        else:  # (an eval.json without the video sets is from before the demo had them: evaluated again)
            _say(f"[demo] evaluating the {m} (seed {seed})")
            metrics[m] = evaluate_model(d / "final.safetensors", d / "model_config.json", data_dir,
                                        batch_size=budget.eval_batch_size)
            cached.write_text(json.dumps(metrics[m], indent=2) + "\n")
    for m in MODELS:
        d = dirs[m]
        wall = summaries[m]["wall_s"] + (summaries["mim"]["wall_s"] if m == "student" else 0.0)
        record[m] = {"metrics": metrics[m], "parameters": _count_parameters(d / "final.safetensors"),
                     "training_flops": own_flops[m], "trained_flops": trained[m], "wall_s": wall,
                     "weights": str(d / "final.safetensors"), "config": str(d / "model_config.json")}
    # The student's compute including the teacher it learned from (the x position on the scaling plot).
    record["student"]["training_flops_with_teacher"] = own_flops["student"] + own_flops["teacher"]
    record["student"]["trained_flops_with_teacher"] = trained["student"] + trained["teacher"]
    record["matched_flops"] = matched
    # The continuations: same steps, lr and batch; "video" has VIDEO_SHARE of its samples as 8-frame clips.
    record["continued"] = {c: {"metrics": metrics[c], "steps": summaries[c]["steps"],
                               "samples": summaries[c]["samples_seen"],
                               "video_samples": summaries[c].get("video_samples", 0),
                               "wall_s": summaries[c]["wall_s"], "weights": str(dirs[c] / "final.safetensors")}
                           for c in CONTINUED}
    return record


def _count_parameters(weights: Path) -> dict[str, int]:
    """Tensor elements in the file: in all, and in the vision tower (the text encoder is the same frozen
    MiniLM in every model)."""
    counts = {"total": 0, "vision": 0}
    with safe_open(str(weights), framework="pt") as f:
        for k in f.keys():
            n = math.prod(f.get_slice(k).get_shape())
            counts["total"] += n
            counts["vision"] += n if k.startswith("visual.") else 0
    return counts


# ------------------------------------------------------------------------------------------------ demo
@contextlib.contextmanager
def _bars_off(off: bool):
    """``--no-progress`` reaches every tqdm bar, the evaluator's included (tqdm reads TQDM_DISABLE)."""
    saved = os.environ.get("TQDM_DISABLE")
    if off:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved


def prepare_data(options: DemoOptions, prepare_options=None, fetch_fn: Callable | None = None) -> Path:
    """The offline data (built once, then cached) via :func:`evaclip_demo.offline.prepare`."""
    from evaclip_demo.offline import PrepareOptions, prepare
    kwargs: dict[str, Any] = {"progress": options.progress}
    if fetch_fn is not None:
        kwargs["fetch_fn"] = fetch_fn
    result = prepare(options.data_dir, prepare_options or PrepareOptions(), **kwargs)
    _say(f"[demo] data: {result.out} ({'cached' if result.cached else 'built'}; "
         f"{result.manifest['train']['samples']} training pairs)")
    return Path(result.out)


def _video_data(data_dir: Path) -> dict[str, Any]:
    """The data manifest's description of the video clips (source, real or synthetic, split), for the report."""
    video = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8")).get("video", {})
    return {k: v for k, v in video.items() if k != "train"} | {"train_clips": video.get("train", {}).get("clips")}


def export_models(record: dict[str, Any], out: Path) -> dict[str, dict[str, str]]:
    """Copy one seed's three models to ``OUT/<model>.safetensors`` + ``OUT/<model>.json``."""
    files = {}
    for m in MODELS:
        w, c = out / f"{m}.safetensors", out / f"{m}.json"
        shutil.copyfile(record[m]["weights"], w)
        shutil.copyfile(record[m]["config"], c)
        files[m] = {"weights": w.name, "config": c.name}
    return files


def run_demo(options: DemoOptions, prepare_options=None, fetch_fn: Callable | None = None) -> dict[str, Any]:
    """Run the demo for every seed and write ``OUT/results.json``, ``report.md`` and the plots."""
    from evaclip_demo.evaluate import chance_levels
    from evaclip_demo.plots import plot_curves, plot_scaling
    from evaclip_demo.report import summarize, write_report
    if not options.seeds:
        raise ConfigError("no seeds given; pass e.g. --seeds 0 or --seeds 0,1,2")
    budget = options.resolved_budget()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = prepare_data(options, prepare_options, fetch_fn)
    records = []
    with _bars_off(not options.progress):
        for seed in options.seeds:
            _say(f"[demo] ---- seed {seed} ----")
            records.append(run_seed(seed, data_dir, out, budget, options.progress))
    files = export_models(records[0], out)
    results = {
        "quick": options.quick, "budget": asdict(budget), "seeds": options.seeds,
        "data": str(data_dir), "chance": chance_levels(data_dir), "video_data": _video_data(data_dir),
        "models": files, "summary": summarize(records), "per_seed": records,
        "wall_s_total": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plots = [plot_scaling(results, out / "scaling.png")]
    plots += plot_curves(out, options.seeds, out / "curves_clip.png", out / "curves_mim.png")
    write_report(results, out / "report.md", [p.name for p in plots])
    _say(f"[demo] done in {results['wall_s_total'] / 60:.1f} min: {out / 'report.md'}")
    return results
