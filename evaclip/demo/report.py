"""results.json's summary over seeds, and report.md: the tables, what they mean, and the paper's claim."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

MODELS = ("teacher", "student", "control")
HEADLINE = ("zeroshot/tuxpaint/acc1", "zeroshot/noto/acc1")
RETRIEVAL = ("tuxpaint_sentences", "openclipart_heldout", "noto_names")


def flatten(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"zeroshot/noto": {"acc1": x}}`` -> ``{"zeroshot/noto/acc1": x}``."""
    return {f"{group}/{k}": v for group, values in metrics.items() for k, v in values.items()}


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean / sample std / min / max over seeds of every metric, FLOPs, parameters, wall time;
    and the per-seed wins of the student over the teacher and the control on the headline metrics."""
    out: dict[str, Any] = {}
    for m in MODELS:
        flat = [flatten(r[m]["metrics"]) for r in records]
        out[m] = {"metrics": {k: _stats([f[k] for f in flat]) for k in flat[0]},
                  "parameters": records[0][m]["parameters"],
                  "training_flops": _stats([r[m]["training_flops"] for r in records]),
                  "trained_flops": _stats([r[m]["trained_flops"] for r in records]),
                  "wall_s": _stats([r[m]["wall_s"] for r in records])}
    for key in ("training_flops_with_teacher", "trained_flops_with_teacher"):
        out["student"][key] = _stats([r["student"][key] for r in records])
    wins = {}
    for other in ("teacher", "control"):
        for key in HEADLINE:
            diffs = [flatten(r["student"]["metrics"])[key] - flatten(r[other]["metrics"])[key] for r in records]
            wins[f"student-{other}/{key}"] = {**_stats(diffs), "seeds_won": sum(d > 0 for d in diffs)}
    out["student_minus"] = wins
    return out


def _pm(s: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    if s["n"] > 1:
        return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _verdict(summary: dict[str, Any], n_seeds: int) -> list[str]:
    lines = []
    for other in ("teacher", "control"):
        parts = []
        for key, label in zip(HEADLINE, ("Tux Paint", "Noto")):
            w = summary["student_minus"][f"student-{other}/{key}"]
            parts.append(f"{label} {w['mean'] * 100:+.1f} points (won {w['seeds_won']}/{n_seeds} seeds)")
        beat = all(summary["student_minus"][f"student-{other}/{k}"]["seeds_won"] == n_seeds for k in HEADLINE)
        verdict = "beats" if beat else "does not consistently beat"
        lines.append(f"- Student vs {other}: the student {verdict} the {other}: " + "; ".join(parts) + ".")
    return lines


# The demo issue's reference: a w128 L4 plain-ViT CLIP with the frozen MiniLM tower, one seed, and the bar
# it set for the teacher (zero-shot top-1, %).
REFERENCE = {"tuxpaint": 17.6, "noto": 24.5, "openclipart_r5": 12.5}
TEACHER_BAR = {"tuxpaint": 15.0, "noto": 20.0}


def _teacher_vs_reference(summary: dict[str, Any]) -> str:
    m = summary["teacher"]["metrics"]
    tux, noto = m["zeroshot/tuxpaint/acc1"], m["zeroshot/noto/acc1"]
    r5 = m["retrieval/openclipart_heldout/text_retrieval_recall@5"]
    met = [f"{name} {_pm(v)} ({'meets' if v['mean'] * 100 >= TEACHER_BAR[key] else 'below'} the bar of "
           f"{TEACHER_BAR[key]:.0f})" for name, key, v in (("Tux Paint", "tuxpaint", tux), ("Noto", "noto", noto))]
    return (f"- Teacher vs the demo issue's reference (Tux Paint {REFERENCE['tuxpaint']} / Noto {REFERENCE['noto']} / "
            f"openclipart image→text R@5 {REFERENCE['openclipart_r5']}, one seed): " + "; ".join(met)
            + f"; openclipart R@5 {_pm(r5)}.")


def write_report(results: dict[str, Any], path: Path, plots: list[str]) -> Path:
    s, chance, n = results["summary"], results["chance"], len(results["seeds"])
    b = results["budget"]
    ms = {m: s[m]["metrics"] for m in MODELS}
    zs_rows = [[m, f"{s[m]['parameters']['vision'] / 1e6:.2f}M / {s[m]['parameters']['total'] / 1e6:.1f}M", f"{s[m]['trained_flops']['mean'] / 1e12:.1f} / {s[m]['training_flops']['mean'] / 1e12:.1f}",
                f"{s[m]['wall_s']['mean'] / 60:.1f}",
                _pm(ms[m]["zeroshot/tuxpaint/acc1"]), _pm(ms[m]["zeroshot/tuxpaint/mean_per_class_recall"]),
                _pm(ms[m]["zeroshot/noto/acc1"]), _pm(ms[m]["zeroshot/noto/mean_per_class_recall"])]
               for m in MODELS]
    zs_rows.append(["chance", "", "", "", f"{chance['tuxpaint'] * 100:.1f}", f"{chance['tuxpaint'] * 100:.1f}",
                    f"{chance['noto'] * 100:.1f}", f"{chance['noto'] * 100:.1f}"])
    ret_rows = []
    for m in MODELS:
        for name in RETRIEVAL:
            row = [m, name]
            for direction in ("text_retrieval", "image_retrieval"):
                row += [_pm(ms[m][f"retrieval/{name}/{direction}_recall@{k}"]) for k in (1, 5, 10)]
            ret_rows.append(row)
    spread = "mean ± sample standard deviation over seeds " + ", ".join(map(str, results["seeds"])) if n > 1 \
        else f"one seed ({results['seeds'][0]}); run `evaclip demo --seeds 0,1,2` for the spread"
    text = [
        "# evaclip demo: weak-to-strong EVA-CLIP at laptop scale",
        "",
        "The paper (EVA-CLIP-18B, arXiv 2402.04252, Figure 1 and section 2) scales EVA-CLIP *weak-to-strong*: "
        "a smaller EVA-CLIP teaches a larger EVA vision model by masked image modeling (MIM), and that model "
        "initialises a larger EVA-CLIP, which then beats its teacher. This demo runs the same loop on ~8k "
        "offline image-text pairs on a CPU and checks the claim against a control: the student's architecture "
        "trained from scratch with the same trained compute (MIM + student CLIP FLOPs).",
        "",
        f"{'QUICK SMOKE RUN: tiny step counts, the numbers mean nothing. ' if results['quick'] else ''}"
        f"Numbers: {spread}. Batch {b['batch_size']}; steps: teacher {b['teacher_steps']}, MIM {b['mim_steps']}, "
        f"student CLIP {b['student_steps']}, control "
        f"{results['per_seed'][0]['stages']['control']['steps']} (patch dropout {b['patch_dropout']} on the "
        "student and control CLIPs).",
        "",
        "## Zero-shot classification (top-1 and mean per-class recall, %)",
        "",
        _table(["model", "params vision / all", "TFLOPs trained / all", "wall min", "Tux Paint top-1", "Tux Paint mean recall",
                "Noto top-1", "Noto mean recall"], zs_rows),
        "",
        "Chance is a uniform guess: 1/23 classes for Tux Paint stamps, 1/34 for Noto emoji. FLOPs: "
        "*trained* = 3x the forward of the trained parts (ViT, projections; for MIM also the frozen teacher's "
        "forward), the compute the control is matched on; *all* adds the frozen MiniLM encoder's forward per "
        "caption (the same fixed feature extractor for every model, cached in practice). The student's "
        "include its MIM stage; with its teacher's training the student cost "
        f"{s['student']['trained_flops_with_teacher']['mean'] / 1e12:.1f} trained TFLOPs. Wall time is noisy "
        "(shared CPU); the budgets are fixed in steps.",
        "",
        "## Retrieval (recall@k, %)",
        "",
        _table(["model", "set", "image→text R@1", "R@5", "R@10", "text→image R@1", "R@5", "R@10"], ret_rows),
        "",
        "## What the numbers say",
        "",
        *_verdict(s, n),
        _teacher_vs_reference(s),
        "",
        "The paper's claim is that the student (larger, initialised weak-to-strong) is better than the teacher "
        "that taught it, and that this initialisation is a better use of compute than training the larger "
        "model from scratch. At this scale the data are tiny (a few thousand pairs, 32-pixel images), so the "
        "larger model gains little from its size and much depends on how long each stage trains; read the "
        "differences against the spread over seeds.",
        "",
        "## How the recipe was chosen (what was tried)",
        "",
        "- A w256 L6 student distilled for ~50 MIM steps from a w128 L4 teacher scored below both its teacher "
        "and a from-scratch control: too little MIM compute, a large scale-up on tiny data. Hence a smaller "
        "scale-up (w128 -> w192), 250 MIM steps (the loss is still falling slowly by then: about -1.55), the teacher's class token in the MIM "
        "target, patch dropout 0.5 on the larger CLIPs, and a control matched on trained FLOPs.",
        "- The first recipe trained every contrastive stage at lr 1e-3 (3 seeds, Tux Paint / Noto top-1: "
        "teacher 12.3 ± 2.3 / 22.8 ± 0.1, student 12.4 ± 0.8 / 23.6 ± 2.5, control 13.5 ± 1.0 / 19.5 ± 2.4). "
        "Its training loss sat near chance (ln 128 = 4.85) for hundreds of steps, so the lr was lowered to "
        "3e-4, chosen on the teacher's training loss only (2.7 vs 3.3 at step 850). With it: teacher "
        "13.6 ± 2.0 / 24.5 ± 2.2, student 15.4 ± 1.4 / 22.0 ± 1.1, control 14.2 ± 1.7 / 21.3 ± 1.3.",
        "- Then pairs with identical captions were masked out of each other's softmax "
        "(`loss.mask_duplicate_texts`): the three emoji styles share names (about 5.7k unique captions for "
        "8.4k pairs), and the plain loss treats a repeated caption as a negative. This is a correction of the loss for "
        "this data (the data notes ask for it), applied to every contrastive stage alike; it was made after "
        "the numbers above were seen, which is why they are all listed here. With it (teacher 1000 steps): "
        "teacher 13.7 ± 2.3 / 23.4 ± 2.2, student 16.8 ± 3.2 / 21.8 ± 1.8, control 14.6 ± 1.4 / 22.1 ± 0.7.",
        "- That teacher was below the issue's reference (Tux Paint 17.6 / Noto 24.5, one seed), so its recipe was "
        "searched once more, this time on a validation split of the *training* pairs, never on the test sets: "
        "8% of the caption groups held out (439 pairs; `scripts/demo_recipe_search.py`), candidates ranked by "
        "mean image↔text R@5 there (every row: docs/demo/recipe_search.md in the repository). Seed 0: as shipped (1000 steps) 38.8; the reference's plain ViT block "
        "(LayerNorm, GELU, learned positions) 30.5; batch 256 for 500 steps 35.8; weight decay 0.2 39.2; "
        "2000 steps 41.8. On top of 2000 steps: 3000 steps 41.0, crops of 50-100% area 41.0, an MLP text "
        "projection 40.9. Seed 1, to check the choice: 1000 steps 38.6, 2000 steps 40.1. The teacher now trains 2000 steps; nothing else changed, and the "
        "student and control budgets are as before.",
        "- A check made after that choice, not used for it: the reference's plain ViT block as the teacher "
        "(same recipe, 2000 steps, 3 seeds) scored Tux Paint 13.5 ± 0.8 / Noto 23.5 ± 3.5 / openclipart "
        "image→text R@5 7.4 ± 0.7 on the test sets, no better than the EVA02 block, so the gap to the "
        "reference's 17.6 is not the block. What else differed in that one-seed measurement is not known.",
        "- More training pairs, judged the same way (same validation pairs): Microsoft's Fluent Emoji "
        "(`evaclip data prepare --fluent-styles`, up to 4,515 more pairs in three styles) gave validation R@5 "
        "40.2-40.8 at 2000 steps and 41.1-41.7 at 3000, against 41.8 without it, so it is not in the demo's "
        "data (it stays an option). No test set was looked at for it.",
        "- A second check, not used for any choice: the training data as the reference prototype built it (Noto "
        "look-alikes kept, `evaclip data prepare --keep-noto-lookalikes`, 8,646 pairs; same test sets), the shipped "
        "teacher recipe, 3 seeds (`scripts/demo_teacher_check.py`): Tux Paint 14.2 ± 2.2 (seeds 13.3 / 12.6 / "
        "16.7), Noto 24.2 ± 0.7 (higher, as the look-alikes leak Noto's drawings into training), openclipart "
        "R@5 13.1 ± 0.6. On that data the teacher matches the reference on Noto (24.5) and retrieval (12.5), and "
        "its Tux Paint spread across seeds (12.6-16.7) suggests the reference's one-seed 17.6 sits at the lucky end; "
        "the stricter leakage filter does not explain the Tux Paint gap.",
        "",
        "## Plots",
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "Files: `teacher|student|control.safetensors` with a config JSON each "
        "(`evaclip.create_model('student.json', pretrained='student.safetensors')`), `results.json` "
        "(per model and seed: metrics, parameters, training FLOPs, wall time), the runs under `runs/`.",
        "",
    ]
    path.write_text("\n".join(text), encoding="utf-8")
    return path
