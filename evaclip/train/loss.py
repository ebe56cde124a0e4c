"""Contrastive losses over the global batch: InfoNCE (CLIP) and the sigmoid loss (SigLIP).

Gradient convention (what makes 1 and N processes agree). Each rank computes a loss ``L_r`` from its own
rows; the global loss is ``L = mean_r L_r`` (every rank holds the same number of samples). The gather used
here is differentiable and its backward *sums* the gradients that all ranks send to a rank's features, so
after ``L_r.backward()`` a rank's local features hold ``d(sum_r L_r)/df = world_size * dL/df``. DDP then
*averages* parameter gradients over ranks (so does FSDP2's reduce-scatter), which divides that factor away
again: the averaged parameter gradients (logit_scale included) equal the single-process gradient of ``L``.
Log ``all_reduce_mean(loss)`` to report ``L``. tests/train/test_distributed_loss.py checks all of this with
two torchrun processes.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from evaclip.errors import ConfigError
from evaclip.train.distributed import get_rank, get_world_size


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``factor`` in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def gather_features(features: torch.Tensor, *, with_grad: bool, world_size: int, rank: int) -> torch.Tensor:
    """Concatenate ``features`` from every rank along dim 0, in rank order.

    ``with_grad=True`` uses the autograd-aware all_gather (its backward sums gradients from all ranks).
    Otherwise the other ranks' copies are constants and only this rank's own slice, put back in place,
    carries gradient; that is exact only when every rank computes the same full loss, and the slice's
    gradient is scaled by ``world_size`` to keep the convention of the module docstring.
    """
    if world_size == 1:
        return features
    if with_grad:
        return torch.cat(dist_fn.all_gather(features), dim=0)
    parts = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[rank] = _ScaleGrad.apply(features, float(world_size))
    return torch.cat(parts, dim=0)


_HASH_WEIGHTS: dict[int, torch.Tensor] = {}


def caption_ids(tokens: torch.Tensor) -> torch.Tensor:
    """One int64 id per caption, equal for equal token rows and the same on every rank.

    A fixed random linear hash modulo 2**64 (int64 arithmetic wraps, which keeps it deterministic): equal
    rows always agree; unequal rows collide with probability about 2**-38, far below anything a loss notices.
    """
    if tokens.ndim != 2:
        raise ConfigError(f"tokens must be [batch, context_length], got shape {tuple(tokens.shape)}")
    length = tokens.shape[1]
    if length not in _HASH_WEIGHTS:
        g = torch.Generator().manual_seed(0x5EED + length)
        _HASH_WEIGHTS[length] = torch.randint(1, 2**38, (length,), generator=g, dtype=torch.int64)
    return (tokens.long() * _HASH_WEIGHTS[length].to(tokens.device)).sum(dim=1)


def _gather_ids(ids: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(world_size)]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def _duplicate_mask(row_ids: torch.Tensor, col_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True where row i and column j carry the same caption but are different pairs (not the positive)."""
    same = row_ids[:, None] == col_ids[None, :]
    same[torch.arange(len(labels), device=labels.device), labels] = False
    return same


def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ConfigError(
            f"image and text features must both be [batch, dim] with equal shapes, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the global batch (the CLIP / EVA-CLIP loss).

    ``local_loss=True``: each rank scores its local images against all texts and its local texts against
    all images (``b x B`` logits, labels ``arange(b) + b * rank``); the memory-light choice of the official
    recipe. ``local_loss=False``: every rank builds the full ``B x B`` logits. ``gather_with_grad`` selects the
    differentiable gather; ``local_loss=True`` requires it, since without it the gradient through the other
    ranks' logits is silently lost.
    Both gathers give the same gradients (see the module docstring); the differentiable one is cheaper with
    ``local_loss=True`` and is the default.

    ``mask_duplicate_texts=True``: a pair whose caption equals the positive's is left out of the softmax (its
    logit is set to -inf) instead of counting as a negative; ``forward`` then needs the batch's ``tokens``.
    """

    def __init__(self, local_loss: bool = True, gather_with_grad: bool = True,
                 mask_duplicate_texts: bool = False) -> None:
        super().__init__()
        if local_loss and not gather_with_grad:
            raise ConfigError("ClipLoss(local_loss=True) needs gather_with_grad=True for correct gradients")
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.mask_duplicate_texts = mask_duplicate_texts

    def logits(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
        tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(logits_per_image, logits_per_text, labels)`` for this rank."""
        _check_pair(image_features, text_features)
        rank, world_size = get_rank(), get_world_size()
        b = image_features.shape[0]
        all_img = gather_features(image_features, with_grad=self.gather_with_grad, world_size=world_size, rank=rank)
        all_txt = gather_features(text_features, with_grad=self.gather_with_grad, world_size=world_size, rank=rank)
        if self.mask_duplicate_texts:
            if tokens is None or tokens.shape[0] != b:
                raise ConfigError("ClipLoss(mask_duplicate_texts=True) needs the batch's tokens, one row per pair")
            all_ids = _gather_ids(caption_ids(tokens), world_size)
        if self.local_loss:
            logits_per_image = logit_scale * image_features @ all_txt.T
            logits_per_text = logit_scale * text_features @ all_img.T
            labels = torch.arange(b, device=image_features.device) + b * rank
            if self.mask_duplicate_texts:
                mask = _duplicate_mask(all_ids[labels], all_ids, labels)
                logits_per_image = logits_per_image.masked_fill(mask, float("-inf"))
                logits_per_text = logits_per_text.masked_fill(mask, float("-inf"))
        else:
            logits_per_image = logit_scale * all_img @ all_txt.T
            labels = torch.arange(b * world_size, device=image_features.device)
            if self.mask_duplicate_texts:
                mask = _duplicate_mask(all_ids, all_ids, labels)
                logits_per_image = logits_per_image.masked_fill(mask, float("-inf"))
            logits_per_text = logits_per_image.T
        return logits_per_image, logits_per_text, labels

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss for this rank; ``logit_scale`` is the multiplier itself (``exp`` of the parameter)."""
        logits_per_image, logits_per_text, labels = self.logits(image_features, text_features, logit_scale,
                                                                tokens)
        # Cross entropy in fp32 even under autocast: the log-sum-exp over a large global batch needs it.
        return (
            F.cross_entropy(logits_per_image.float(), labels) + F.cross_entropy(logits_per_text.float(), labels)
        ) / 2


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023) over the global batch.

    Every (image, text) pair is a binary problem: positive on the diagonal, negative elsewhere, with logit
    ``logit_scale * <x_i, y_j> + logit_bias``. The loss of a rank is the sum of ``-log sigmoid(+-logit)`` over
    its local images against all texts (gathered with gradient), divided by the local batch size, so the
    global loss is the mean over ranks as for :class:`ClipLoss`. The model owns the learnable bias
    (SigLIP initialises ``logit_bias = -10`` and ``logit_scale = ln 10``, see the class constants).
    """

    init_logit_bias: float = -10.0
    init_logit_scale: float = math.log(10.0)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        logit_bias: torch.Tensor | float,
    ) -> torch.Tensor:
        """Loss for this rank; ``logit_scale`` is the multiplier itself (``exp`` of the parameter)."""
        _check_pair(image_features, text_features)
        rank, world_size = get_rank(), get_world_size()
        b = image_features.shape[0]
        all_txt = gather_features(text_features, with_grad=True, world_size=world_size, rank=rank)
        logits = (logit_scale * image_features @ all_txt.T + logit_bias).float()
        # +1 on this rank's diagonal block, -1 elsewhere.
        signs = -torch.ones_like(logits)
        cols = torch.arange(b, device=logits.device) + b * rank
        signs[torch.arange(b, device=logits.device), cols] = 1.0
        return -F.logsigmoid(signs * logits).sum() / b

