"""Exact gradient accumulation for the contrastive loss, by feature caching (GradCache, Gao et al. 2021).

Summing the losses of micro-batches is not the loss of the batch: each image must be contrasted with every
text of the global batch. So the step runs in two passes:

1. forward every micro-batch without autograd and keep only the (small) embeddings; compute the loss of the
   whole batch on them (gathered across ranks as usual) and backpropagate to the embeddings;
2. forward each micro-batch again with autograd and backpropagate those embedding gradients through the
   towers, replaying the RNG state of pass 1 so patch dropout drops the same tokens.

The parameter gradients are those of the full-batch step (up to float rounding); peak activation memory is
that of one micro-batch. The price is one extra forward per step.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from evaclip.models import sample_rng


def _rng_state(device: torch.device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _gradient_sync(model: nn.Module, enabled: bool):
    """Skip the cross-rank gradient reduction on all but the last micro-batch."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not enabled:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def cached_feature_step(model: nn.Module, loss_fn: Callable, images: torch.Tensor, tokens: torch.Tensor,
                        chunks: int, autocast: Callable[[], contextlib.AbstractContextManager],
                        loss_hook: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
                        scale_backward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Forward + backward of one contrastive step in ``chunks`` micro-batches; returns the (detached) loss.

    ``model(images, tokens)`` must return ``(image_features, text_features, logit_scale)`` as a CLIP does.
    ``loss_hook`` may rewrite the loss before backward (the trainer's fault injection uses it).
    ``scale_backward`` (fp16 loss scaling, e.g. ``GradScaler.scale``) multiplies what is backpropagated
    through the towers, where fp16 gradients could underflow; the loss on the fp32 embeddings is not scaled.
    """
    device = images.device
    pieces = list(zip(images.chunk(chunks), tokens.chunk(chunks)))
    # Per-sample keys (sample_rng) follow their samples into the micro-batches.
    keys = sample_rng.current()
    key_pieces = list(keys.chunk(chunks)) if keys is not None else [None] * len(pieces)
    states, img_feats, txt_feats = [], [], []
    with torch.no_grad():
        for (im, tk), key in zip(pieces, key_pieces):
            states.append(_rng_state(device))
            with autocast(), sample_rng.per_sample(key):
                f_img, f_txt, scale = model(im, tk)
            img_feats.append(f_img.float())
            txt_feats.append(f_txt.float())
    img = torch.cat(img_feats).requires_grad_()
    txt = torch.cat(txt_feats).requires_grad_()
    scale = scale.detach().float().requires_grad_()
    loss = loss_hook(loss_fn(img, txt, scale, tokens))
    loss.backward()
    sizes = [f.shape[0] for f in img_feats]
    g_img, g_txt = img.grad.split(sizes), txt.grad.split(sizes)
    after = _rng_state(device)
    for i, (im, tk) in enumerate(pieces):
        _set_rng_state(states[i], device)
        last = i == len(pieces) - 1
        with _gradient_sync(model, last):
            with autocast(), sample_rng.per_sample(key_pieces[i]):
                f_img, f_txt, s = model(im, tk)
            # d(surrogate)/d(params) = the full-batch gradient flowing through this micro-batch. The logit
            # scale is used by every micro-batch: each passes on an equal share of its gradient.
            surrogate = ((f_img.float() * g_img[i]).sum() + (f_txt.float() * g_txt[i]).sum()
                         + (s.float() * scale.grad / len(pieces)).sum())
            (scale_backward(surrogate) if scale_backward is not None else surrogate).backward()
    _set_rng_state(after, device)
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(True)
    return loss.detach()
