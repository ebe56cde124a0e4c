"""Zero-shot image-text retrieval (Table 3): recall@k both ways with several captions per image."""
from __future__ import annotations

from typing import Iterable

import torch

from evaclip.eval.datasets import RetrievalData
from evaclip.eval.features import encode_image_batches, encode_texts, image_loader
from evaclip.eval.metrics import retrieval_recall


def evaluate_zeroshot_retrieval(model, tokenizer, data: RetrievalData, device: torch.device | str = "cpu",
                                amp: bool = False, batch_size: int = 64, workers: int = 0,
                                ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """``image_retrieval_recall@k`` (text -> image) and ``text_retrieval_recall@k`` (image -> text).

    An image that cannot be decoded is left out with its captions (``num_skipped_files`` counts them)."""
    skipped: list[str] = []
    loader = image_loader(data.dataset, batch_size=batch_size, workers=workers)
    image_features, image_index = encode_image_batches(model, loader, device=device, amp=amp, skipped=skipped)
    # The loader yields images in index order, minus skipped ones: renumber the kept images 0..n-1 and keep
    # only the captions of those.
    order = torch.argsort(image_index)
    kept = image_index[order]
    new_index = torch.full((len(data.dataset),), -1, dtype=torch.long)
    new_index[kept] = torch.arange(len(kept))
    owner = new_index[torch.as_tensor(data.text_to_image, dtype=torch.long)]
    captions = [c for c, o in zip(data.captions, owner.tolist()) if o >= 0]
    text_features = encode_texts(model, tokenizer, captions, device=device, amp=amp)
    metrics = retrieval_recall(image_features[order].to(device), text_features.to(device), owner[owner >= 0], ks=ks)
    metrics["num_skipped_files"] = len(skipped)
    return metrics
