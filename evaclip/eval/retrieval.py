"""Zero-shot image-text retrieval (Table 3): recall@k both ways with several captions per image."""
from __future__ import annotations

from typing import Iterable

import torch

from evaclip.eval.datasets import RetrievalData, make_loader
from evaclip.eval.features import encode_image_batches, encode_texts
from evaclip.eval.metrics import retrieval_recall


def evaluate_zeroshot_retrieval(model, tokenizer, data: RetrievalData, device: torch.device | str = "cpu",
                                amp: bool = False, batch_size: int = 64, workers: int = 0,
                                ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """``image_retrieval_recall@k`` (text -> image) and ``text_retrieval_recall@k`` (image -> text)."""
    loader = make_loader(data.dataset, batch_size=batch_size, workers=workers)
    image_features, image_index = encode_image_batches(model, loader, device=device, amp=amp)
    # The loader yields images in index order; keep the mapping explicit all the same.
    order = torch.argsort(image_index)
    text_features = encode_texts(model, tokenizer, data.captions, device=device, amp=amp)
    return retrieval_recall(image_features[order].to(device), text_features.to(device),
                            torch.as_tensor(data.text_to_image), ks=ks)
