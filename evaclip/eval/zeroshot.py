"""Zero-shot classification: a classifier built from prompts, logits = 100 * image @ classifier^T."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from evaclip.errors import ConfigError
from evaclip.eval.features import encode_image_batches, encode_texts
from evaclip.eval.metrics import classification_metrics, multilabel_metrics

Templates = Sequence[str] | Mapping[str, Sequence[str]]


def format_prompt(template: str, classname: str) -> str:
    """Fill a template's ``{c}`` (CLIP_benchmark) or ``{}`` (CLIP's prompts.md) with the class name."""
    if "{c}" in template:
        return template.replace("{c}", classname)
    if "{}" in template:
        return template.replace("{}", classname)
    raise ConfigError(f"prompt template {template!r} has no {{c}} placeholder for the class name")


def class_prompts(classnames: Sequence[str], templates: Templates) -> list[list[str]]:
    """The prompts of each class: every template filled in, or per-class sentences (CuPL style: a dict
    class name -> prompts)."""
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if c not in templates]
        if missing:
            raise ConfigError(f"the per-class prompt file has no prompts for {missing[:3]} "
                              f"({len(missing)} classes missing)")
        return [list(templates[c]) for c in classnames]
    if not templates:
        raise ConfigError("no prompt templates given; pass --templates FILE (one template per line, {c} = class)")
    return [[format_prompt(t, c) for t in templates] for c in classnames]


@torch.no_grad()
def build_zeroshot_classifier(model, tokenizer, classnames: Sequence[str], templates: Templates,
                              device: torch.device | str = "cpu", amp: bool = False,
                              batch_size: int = 256) -> torch.Tensor:
    """The zero-shot head [C, D]: per class, encode each prompt, L2-normalise, average, renormalise."""
    prompts = class_prompts(classnames, templates)
    flat = [p for ps in prompts for p in ps]
    text = encode_texts(model, tokenizer, flat, device=device, amp=amp, batch_size=batch_size)
    rows, start = [], 0
    for ps in prompts:
        rows.append(text[start:start + len(ps)].mean(0))
        start += len(ps)
    return F.normalize(torch.stack(rows), dim=-1)


def zeroshot_logits(image_features: torch.Tensor, classifier: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """``scale * normalize(image_features) @ classifier^T`` (CLIP's and open_clip's fixed scale of 100)."""
    return scale * F.normalize(image_features.float(), dim=-1) @ classifier.float().T


def evaluate_zeroshot_classification(model, tokenizer, loader: Iterable, classnames: Sequence[str],
                                     templates: Templates, device: torch.device | str = "cpu",
                                     amp: bool = False, image_features: torch.Tensor | None = None,
                                     labels: torch.Tensor | None = None) -> dict[str, float]:
    """``acc1``, ``acc5`` (NaN below 5 classes) and ``mean_per_class_recall`` on a loader of
    ``(images, labels)`` (from :func:`~evaclip.eval.features.image_loader`, files that cannot be decoded are
    left out and counted in ``num_skipped_files``); precomputed ``image_features``/``labels`` skip the image
    pass. Multi-label sets
    (labels [N, C]: 1 present, 0 absent, -1 difficult, e.g. VOC2007) give ``mean_average_precision`` and the
    devkit's ``mean_average_precision_voc07`` (see ``metrics.multilabel_metrics``)."""
    classifier = build_zeroshot_classifier(model, tokenizer, classnames, templates, device=device, amp=amp)
    skipped: list[str] = []
    if image_features is None:
        image_features, labels = encode_image_batches(model, loader, device=device, amp=amp, skipped=skipped)
    if image_features.shape[0] == 0:
        raise ConfigError("the dataset has no images to evaluate")
    logits = zeroshot_logits(image_features, classifier)
    metrics = multilabel_metrics(logits, labels) if labels.ndim == 2 else classification_metrics(logits, labels)
    metrics["num_skipped_files"] = len(skipped)
    return metrics
