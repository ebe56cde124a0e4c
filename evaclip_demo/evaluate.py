"""Evaluate one demo model on the offline test sets with the shared evaluation code (:mod:`evaclip.eval`).

Zero-shot classification (Tux Paint stamps, Noto emoji): top-1 and mean per-class recall with the sets' own
prompt templates. Retrieval (Tux Paint sentences, held-out openclipart, Noto names): image->text and
text->image recall@1/5/10. Zero-shot video classification (held-out useAnimations renders): top-1 etc. with
the middle frame and with the mean of 8 frames' features, as the paper's Table 9 compares them.
"""
from __future__ import annotations

from pathlib import Path

import torch

ZEROSHOT_SETS = ("tuxpaint", "noto")
RETRIEVAL_SETS = ("tuxpaint_sentences", "openclipart_heldout", "noto_names")
VIDEO_SETS = ("useanimations",)
VIDEO_FRAMES = (1, 8)
VIDEO_KEYS = tuple(f"video/{name}@{frames}" for name in VIDEO_SETS for frames in VIDEO_FRAMES)


def load_model(weights: str | Path, config: str | Path):
    """The model exactly as a user loads it: ``evaclip.create_model(config_json, pretrained=weights)``."""
    import evaclip
    model = evaclip.create_model(str(config), pretrained=str(weights))
    return model.eval(), evaclip.get_tokenizer(str(config))


@torch.no_grad()
def evaluate_model(weights: str | Path, config: str | Path, data_dir: str | Path,
                   batch_size: int = 128) -> dict[str, dict[str, float]]:
    """``{"zeroshot/<set>": {acc1, mean_per_class_recall, ...}, "retrieval/<set>": {..recall@k..}}``, each
    computed as ``evaclip eval --dataset DATA_DIR/<kind>/<set>`` computes it."""
    from evaclip.eval.runner import EvalOptions, run_task
    from evaclip.transforms import image_transform

    model, tokenizer = load_model(weights, config)
    transform = image_transform(model.visual.image_size, is_train=False)
    opts = EvalOptions(batch_size=batch_size, workers=0)
    data_dir = Path(data_dir)
    out: dict[str, dict[str, float]] = {}
    for kind, task, names in (("zeroshot", "zeroshot_classification", ZEROSHOT_SETS),
                              ("retrieval", "zeroshot_retrieval", RETRIEVAL_SETS)):
        for name in names:
            metrics = run_task(model, tokenizer, task, name, data_dir / kind / name, transform, opts)
            out[f"{kind}/{name}"] = {k: float(v) for k, v in metrics.items()}
    for name in VIDEO_SETS:
        root = data_dir / "video" / "zeroshot" / name
        for frames in VIDEO_FRAMES:
            video_opts = EvalOptions(batch_size=batch_size, workers=0, num_frames=frames)  # the set's own prompts
            metrics = run_task(model, tokenizer, "video_classification", name, root, transform, video_opts)
            out[f"video/{name}@{frames}"] = {k: float(v) for k, v in metrics.items()}
    return out


def chance_levels(data_dir: str | Path) -> dict[str, float]:
    """Top-1 of a uniform random guess on each zero-shot set: 1 / number of classes (video sets as
    ``video/<name>``)."""
    from evaclip.eval.datasets import read_lines
    levels = {}
    for name, rel in [(n, f"zeroshot/{n}") for n in ZEROSHOT_SETS] + [(f"video/{n}", f"video/zeroshot/{n}")
                                                                       for n in VIDEO_SETS]:
        root = Path(data_dir) / rel
        names = read_lines(root / "classnames.txt") if (root / "classnames.txt").is_file() else \
            [d for d in root.iterdir() if d.is_dir()]
        levels[name] = 1.0 / max(1, len(names))
    return levels
