"""Evaluate one demo model on the offline test sets with the shared evaluation code (:mod:`evaclip.eval`).

Zero-shot classification (Tux Paint stamps, Noto emoji): top-1 and mean per-class recall with the sets' own
prompt templates. Retrieval (Tux Paint sentences, held-out openclipart, Noto names): image->text and
text->image recall@1/5/10.
"""
from __future__ import annotations

from pathlib import Path

import torch

ZEROSHOT_SETS = ("tuxpaint", "noto")
RETRIEVAL_SETS = ("tuxpaint_sentences", "openclipart_heldout", "noto_names")


def load_model(weights: str | Path, config: str | Path):
    """The model exactly as a user loads it: ``evaclip.create_model(config_json, pretrained=weights)``."""
    import evaclip
    model = evaclip.create_model(str(config), pretrained=str(weights))
    return model.eval(), evaclip.get_tokenizer(str(config))


def load_named_folders(root: Path, transform):
    """An image folder whose ``classnames.txt`` lists the classes in label order and whose folders are named
    by class: label = the folder name's line in classnames.txt (classes without images stay candidates).

    ``evaclip.eval.datasets.load_classification`` pairs classnames.txt with the *sorted* folders instead, which
    mislabels the offline sets (their classnames.txt is in manifest order), so the demo reads them here."""
    from evaclip.errors import DatasetError
    from evaclip.eval.datasets import IMAGE_EXTENSIONS, ImageListDataset, class_folders, read_lines
    classnames = read_lines(root / "classnames.txt")
    index = {c: i for i, c in enumerate(classnames)}
    items = []
    for folder in class_folders(root):
        if folder.name not in index:
            raise DatasetError(f"{folder} is not a class listed in {root / 'classnames.txt'}")
        items += [(p, index[folder.name]) for p in sorted(folder.iterdir())
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not items:
        raise DatasetError(f"no images under {root}; rebuild the data with `evaclip data prepare --force`")
    templates = read_lines(root / "templates.txt") if (root / "templates.txt").is_file() else ["a picture of a {c}."]
    return ImageListDataset(items, transform), classnames, templates


@torch.no_grad()
def evaluate_model(weights: str | Path, config: str | Path, data_dir: str | Path,
                   batch_size: int = 128) -> dict[str, dict[str, float]]:
    """``{"zeroshot/<set>": {acc1, mean_per_class_recall, ...}, "retrieval/<set>": {..recall@k..}}``."""
    from evaclip.eval.datasets import load_retrieval
    from evaclip.eval.features import image_loader
    from evaclip.eval.retrieval import evaluate_zeroshot_retrieval
    from evaclip.eval.zeroshot import evaluate_zeroshot_classification
    from evaclip.transforms import image_transform

    model, tokenizer = load_model(weights, config)
    transform = image_transform(model.visual.image_size, is_train=False)
    data_dir = Path(data_dir)
    out: dict[str, dict[str, float]] = {}
    for name in ZEROSHOT_SETS:
        dataset, classnames, templates = load_named_folders(data_dir / "zeroshot" / name, transform)
        loader = image_loader(dataset, batch_size=batch_size)
        metrics = evaluate_zeroshot_classification(model, tokenizer, loader, classnames, templates)
        out[f"zeroshot/{name}"] = {k: float(v) for k, v in metrics.items()}
    for name in RETRIEVAL_SETS:
        data = load_retrieval(data_dir / "retrieval" / name, transform)
        metrics = evaluate_zeroshot_retrieval(model, tokenizer, data, batch_size=batch_size)
        out[f"retrieval/{name}"] = {k: float(v) for k, v in metrics.items()}
    return out


def chance_levels(data_dir: str | Path) -> dict[str, float]:
    """Top-1 of a uniform random guess on each zero-shot set: 1 / number of classes."""
    from evaclip.eval.datasets import read_lines
    levels = {}
    for name in ZEROSHOT_SETS:
        root = Path(data_dir) / "zeroshot" / name
        names = read_lines(root / "classnames.txt") if (root / "classnames.txt").is_file() else \
            [d for d in root.iterdir() if d.is_dir()]
        levels[name] = 1.0 / max(1, len(names))
    return levels
