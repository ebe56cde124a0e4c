"""The demo's figures: accuracy vs training compute (Figure 1 in miniature) and the training curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLORS = {"teacher": "tab:blue", "student": "tab:red", "control": "tab:gray"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def plot_scaling(results: dict[str, Any], path: Path) -> Path:
    """Zero-shot top-1 (mean ± std over seeds) against trained compute. The student is placed at its own
    compute plus its teacher's, with an arrow from the teacher; the control at the student's own compute."""
    plt = _pyplot()
    s = results["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title, chance) in zip(axes, [("zeroshot/tuxpaint/acc1", "Tux Paint (23 classes)", "tuxpaint"),
                                               ("zeroshot/noto/acc1", "Noto emoji (34 classes)", "noto")]):
        xs = {"teacher": s["teacher"]["trained_flops"]["mean"],
              "student": s["student"]["trained_flops_with_teacher"]["mean"],
              "control": s["control"]["trained_flops"]["mean"]}
        for m, x in xs.items():
            st = s[m]["metrics"][key]
            ax.errorbar([x / 1e12], [st["mean"] * 100], yerr=[st["std"] * 100], fmt="o", capsize=4,
                        color=COLORS[m], label=f"{m} (ViT {s[m]['parameters']['vision'] / 1e6:.1f}M)")
        t, st = s["teacher"]["metrics"][key], s["student"]["metrics"][key]
        ax.annotate("", xy=(xs["student"] / 1e12, st["mean"] * 100), xytext=(xs["teacher"] / 1e12, t["mean"] * 100),
                    arrowprops={"arrowstyle": "->", "color": COLORS["student"], "alpha": 0.5})
        ax.axhline(results["chance"][chance] * 100, ls=":", color="k", lw=1, label="chance")
        ax.set_xlabel("trained compute (TFLOPs, frozen text encoder excluded)")
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = len(results["seeds"])
    fig.suptitle(f"Weak-to-strong at laptop scale ({n} seed{'s' if n > 1 else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(out: Path, seeds: list[int], clip_path: Path, mim_path: Path) -> list[Path]:
    """Contrastive loss of teacher / student / control, and the MIM loss, against samples seen, per seed."""
    plt = _pyplot()
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in ("teacher", "student", "control"):
        for i, seed in enumerate(seeds):
            rows = _read_metrics(out / "runs" / f"seed{seed}" / m / "metrics.jsonl")
            batch = _batch(out / "runs" / f"seed{seed}" / m)
            if rows:
                ax.plot([(r["step"] + 1) * batch for r in rows], [r["loss"] for r in rows], color=COLORS[m],
                        alpha=0.8, lw=1, label=m if i == 0 else None)
    written.append(_save_line_plot(plt, fig, ax, clip_path, "training pairs seen", "contrastive loss", "CLIP training"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed in seeds:
        rows = _read_metrics(out / "runs" / f"seed{seed}" / "mim" / "metrics.jsonl")
        if rows:
            ax.plot([r["step"] + 1 for r in rows], [r["loss"] for r in rows], lw=1, label=f"seed {seed}")
    written.append(_save_line_plot(plt, fig, ax, mim_path, "step", "MIM loss (negative cosine)",
                                   "MIM student distilled from the teacher"))
    return written


def _save_line_plot(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend a curve plot, write it to ``path`` and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _batch(stage_dir: Path) -> int:
    from evaclip.train.trainer import RUN_CONFIG_FILE
    for name in (RUN_CONFIG_FILE, "config.json"):  # config.json: the run config's name in runs before Dec 2026
        try:
            return int(json.loads((stage_dir / name).read_text())["data"]["batch_size"])
        except (OSError, ValueError, KeyError):
            continue
    return 1
