"""Train the demo's teacher on another build of the offline data and score it on that build's test sets.

A diagnostic, not a recipe search: it answers "what does the shipped teacher recipe give on data prepared
differently?" (e.g. with the Noto look-alike filter off, as the reference prototype built it). Its numbers are
reported beside the demo's, never used to choose the demo's recipe.

    evaclip data prepare --out /tmp/data_noto_kept --keep-noto-lookalikes
    python scripts/demo_teacher_check.py --data /tmp/data_noto_kept --out /tmp/teacher_check --seeds 0,1,2

Writes OUT/seed<k>/ (the run) and OUT/results.json (per seed: the demo's metrics; mean and sd).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEADLINE = ("zeroshot/tuxpaint/acc1", "zeroshot/noto/acc1", "retrieval/openclipart_heldout/text_retrieval_recall@5")


def main() -> None:
    from evaclip_demo.evaluate import evaluate_model
    from evaclip_demo.stages import Budget, _stage_config, run_stage
    from evaclip_demo.recipes import TEACHER_STEPS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="an `evaclip data prepare` output folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    rows = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = args.out / f"seed{seed}"
        cfg = _stage_config("demo-teacher", run, TEACHER_STEPS, seed, args.data, Budget(), progress=False)
        run_stage(f"teacher seed {seed}", cfg)
        metrics = evaluate_model(run / "final.safetensors", run / "model_config.json", args.data)
        flat = {f"{k}/{m}": v for k, d in metrics.items() for m, v in d.items()}
        rows[seed] = {k: flat[k] for k in HEADLINE}
        print(f"seed {seed}: " + "  ".join(f"{k.split('/')[1]} {100 * v:.1f}" for k, v in rows[seed].items()),
              flush=True)
    summary = {k: {"mean": statistics.mean(r[k] for r in rows.values()),
                   "sd": statistics.stdev(r[k] for r in rows.values()) if len(rows) > 1 else 0.0}
               for k in HEADLINE}
    for k, v in summary.items():
        print(f"{k}: {100 * v['mean']:.1f} ± {100 * v['sd']:.1f}")
    (args.out / "results.json").write_text(json.dumps({"data": str(args.data), "per_seed": rows,
                                                       "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
