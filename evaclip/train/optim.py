"""Optimizers (LAMB, AdamW) and the official EVA-CLIP parameter groups.

``param_groups`` follows the official recipe: the vision tower (``visual.*``) and text tower (``text.*``)
each have their own peak lr and layer-wise lr decay, everything else (``logit_scale``) uses the base lr;
1-D tensors, biases, position embeddings, the cls token and ``logit_scale`` get no weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evaclip.errors import ConfigError
from evaclip.models.parallel import unwrap

OPTIMIZERS = ("lamb", "adamw")
TRUST_RATIOS = ("tensor", "zero3")
TOWERS = ("visual", "text")
MAX_RATE = 1e30  # bound on lr, weight decay and eps


@dataclass
class OptimConfig:
    """Optimizer settings; the defaults are the paper's 8B/18B recipe (Table 12).

    What each lr does (peak values; the schedule multiplies all of them by the same warm-up/cosine factor):

    - ``visual_lr``: the vision tower's top layer; lower layers get ``visual_lr * visual_ld ** depth``.
    - ``text_lr``: the same for the text tower with ``text_ld``.
    - ``lr``: everything outside the towers (the logit scale/bias), and either tower whose own lr is None.

    On the command line ``optim.lr=X`` means "train at X": it scales the recipe's ``visual_lr`` and
    ``text_lr`` by ``X / lr`` too (they keep their ratio to ``lr``), unless they are set on the same command
    line; ``optim.visual_lr`` / ``optim.text_lr`` alone change one tower. ``*_ld`` is the layer-wise lr decay
    (1.0 = none).
    """

    name: str = "lamb"
    lr: float = 4e-4
    visual_lr: float | None = 4e-4
    text_lr: float | None = 4e-5
    weight_decay: float = 0.0
    visual_ld: float = 0.9
    text_ld: float = 0.75
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    grad_clip: float | None = 5.0
    # LAMB's trust ratio: "tensor" (the LAMB paper's rule: one ratio per tensor) or "zero3", the rule the
    # official runs applied (DeepSpeed FusedLamb over ZeRO-3 flat partitions: one ratio per data-parallel rank
    # r of trust_partitions = W, over the r-th 1/W slice of every tensor of a parameter group). W is the
    # official run's rank count (384 for EVA-CLIP-8B, 360 for 18B), not this run's. docs/lamb_under_sharding.md.
    trust_ratio: str = "tensor"
    trust_partitions: int = 1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        for key in ("lr", "visual_lr", "text_lr", "weight_decay", "eps"):
            value = getattr(self, key)
            if value is not None and not value >= 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {value}")
            # The optimizers apply step sizes as float32 scalars, which overflow near 3.4e38.
            if value is not None and value > MAX_RATE:
                raise ConfigError(f"optim.{key}={value:g} is beyond any usable value; use at most {MAX_RATE:g}")
        for key in ("visual_ld", "text_ld"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(f"optim.{key} must lie in (0, 1], got {getattr(self, key)}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # JSON/CLI overrides give lists
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.trust_ratio not in TRUST_RATIOS:
            raise ConfigError(f"optim.trust_ratio must be one of {', '.join(TRUST_RATIOS)}, got {self.trust_ratio!r}")
        if isinstance(self.trust_partitions, bool) or not isinstance(self.trust_partitions, int) \
                or self.trust_partitions < 1:
            raise ConfigError(f"optim.trust_partitions must be an integer >= 1 (the official run's data-parallel "
                              f"ranks, e.g. 360), got {self.trust_partitions!r}")
        if self.trust_ratio != "tensor" and self.name != "lamb":
            raise ConfigError(f"optim.trust_ratio={self.trust_ratio} is a LAMB rule; {self.name} has no trust ratio "
                              "(use optim.name=lamb or leave optim.trust_ratio=tensor)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip must be > 0 (or None to disable), got {self.grad_clip}")


def _tower_settings(model: nn.Module, tower: str, cfg: OptimConfig) -> tuple[nn.Module | None, float, float]:
    lr = getattr(cfg, f"{tower}_lr")
    return getattr(model, tower, None), cfg.lr if lr is None else lr, getattr(cfg, f"{tower}_ld")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split the trainable parameters of an (unwrapped) CLIP model into optimizer groups.

    One group per (tower, layer id, decay or not). Each group carries ``params``, ``param_names``, ``name``
    (e.g. ``"visual.layer3.decay"``, ``"other.no_decay"``), ``tower``, ``layer_id``, ``weight_decay``,
    ``base_lr`` (the tower's peak lr), ``lr_scale`` (``ld ** (L + 1 - layer_id)``, 1 for "other") and
    ``lr = base_lr * lr_scale``. Frozen parameters are left out. DDP and torch.compile wrappers are looked
    through (their ``module.`` / ``_orig_mod.`` prefixes would hide the towers); FSDP2 keeps the names.
    """
    model = unwrap(model)
    model_no_wd = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    towers = {t: _tower_settings(model, t, cfg) for t in TOWERS}
    no_wd = {"logit_scale", "logit_bias"} | model_no_wd
    for tower, (module, _, _) in towers.items():
        if module is not None and hasattr(module, "no_weight_decay"):
            no_wd |= {f"{tower}.{n}" for n in module.no_weight_decay()}

    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tower = next((t for t in TOWERS if name.startswith(t + ".") and towers[t][0] is not None), "other")
        if tower == "other":
            base_lr, layer_id, scale = cfg.lr, 0, 1.0
        else:
            module, base_lr, ld = towers[tower]
            num_layers = int(module.num_layers)
            layer_id = int(module.layer_id(name[len(tower) + 1 :]))
            if not 0 <= layer_id <= num_layers + 1:
                raise ConfigError(f"{tower}.layer_id({name!r}) = {layer_id} lies outside [0, {num_layers + 1}]")
            scale = ld ** (num_layers + 1 - layer_id)
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in no_wd)
        key = f"{tower}.layer{layer_id}" if tower != "other" else "other"
        key += ".decay" if decay else ".no_decay"
        if key not in groups:
            groups[key] = {
                "params": [],
                "name": key,
                "tower": tower,
                "layer_id": layer_id,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "base_lr": base_lr,
                "lr_scale": scale,
                "lr": base_lr * scale,
                "param_names": [],
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    return list(groups.values())


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020) with the update rule of DeepSpeed's FusedLamb, which the paper used.

    Per tensor ``w`` with gradient ``g`` at step ``t``::

        m = b1 * m + (1 - b1) * g;   v = b2 * v + (1 - b2) * g^2
        u = m / (sqrt(v) + eps) + weight_decay * w
        trust = clamp(|w| / |u|, min_trust, max_trust)   (1 when |w| or |u| is 0)
        w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * trust * u      (bias correction folded in the step size)

    As in DeepSpeed, the trust ratio is applied to every tensor (also those without weight decay) and is
    computed from the uncorrected moments. No gradient clipping happens here: clip before ``step``.

    ``trust_ratio="zero3"`` computes it as FusedLamb did under ZeRO-3 in the official runs: for each group and
    each r < W = ``trust_partitions``, one ratio from the r-th slice (elements ``[r*c, (r+1)*c)``, ``c =
    ceil(n / W)``) of every flattened tensor of the group, applied to those slices. With W = 1 it is one ratio
    per group; for a group of one tensor that is the per-tensor rule. W is independent of this run's ranks:
    under FSDP2 each rank sums the slices' parts in its own rows and one all-reduce of 2 x W numbers per group
    completes them.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        min_trust: float = 0.01,
        max_trust: float = 10.0,
        trust_ratio: str = "tensor",
        trust_partitions: int = 1,
    ) -> None:
        if not 0.0 < min_trust <= max_trust:
            raise ConfigError(f"Lamb needs 0 < min_trust <= max_trust, got {min_trust} and {max_trust}")
        if trust_ratio not in TRUST_RATIOS or trust_partitions < 1:
            raise ConfigError(f"Lamb needs trust_ratio in {TRUST_RATIOS} and trust_partitions >= 1, got "
                              f"{trust_ratio!r} and {trust_partitions}")
        # Kept on the optimizer, not in the groups: a resumed run follows its config, not the checkpoint's.
        self.trust_ratio, self.trust_partitions = trust_ratio, int(trust_partitions)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
            min_trust=min_trust, max_trust=max_trust,
        )  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lamb does not support sparse gradients")
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            states = [self.state[p] for p in params]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            beta1, beta2 = group["betas"]

            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            # u = m / (sqrt(v) + eps), built in one buffer: 1 / (sqrt(v) + eps), then times m.
            updates = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(updates, group["eps"])
            torch._foreach_reciprocal_(updates)
            torch._foreach_mul_(updates, exp_avgs)
            if group["weight_decay"] != 0:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])

            lo, hi = group["min_trust"], group["max_trust"]
            if self.trust_ratio == "zero3":
                _scale_by_partition(params, updates, self.trust_partitions, lo, hi)
            else:
                ratios = self._trust_ratios(torch._foreach_norm(params), torch._foreach_norm(updates), lo, hi)
                torch._foreach_mul_(updates, ratios)

            # Parameters in one group may sit at different steps (e.g. added later); group them by step.
            by_step: dict[float, list[int]] = {}
            for i, s in enumerate(states):
                by_step.setdefault(float(s["step"]), []).append(i)
            for t, idx in by_step.items():
                step_size = group["lr"]
                if group["bias_correction"]:
                    step_size *= math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                torch._foreach_add_([params[i] for i in idx], [updates[i] for i in idx], alpha=-step_size)
        return loss

    @staticmethod
    def _trust_ratios(w_norms: list, u_norms: list, lo: float, hi: float) -> list[torch.Tensor]:
        """clamp(|w| / |u|, lo, hi), or 1 where either norm is 0; one tensor per parameter."""

        def ratio(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return torch.where((w > 0) & (u > 0), (w / u).clamp(lo, hi), torch.ones_like(w))

        if all(type(n) is torch.Tensor for n in w_norms):  # plain tensors: a few kernels for the whole group
            return list(ratio(torch.stack(w_norms), torch.stack(u_norms)).unbind(0))
        # Sharded (FSDP2 DTensor) norms: elementwise ops per tensor reduce the shards' partial norms first.
        return [ratio(w, u) for w, u in zip(w_norms, u_norms)]


def _local(x: torch.Tensor) -> tuple[torch.Tensor, int, Any]:
    """The part of ``x`` held here (a view), its offset in the flattened full tensor, and the process group
    that holds the rest (None for a plain tensor). FSDP2 shards dim 0, so a rank's rows are one flat range."""
    if not _is_dtensor(x):
        return x, 0, None
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    if x.device_mesh.ndim != 1 or tuple(x.placements) != (Shard(0),):
        raise ConfigError(f"optim.trust_ratio=zero3 needs parameters sharded on dim 0 over one mesh dimension "
                          f"(FSDP2 full shard), got {x.placements}; use optim.trust_ratio=tensor")
    local = x.to_local()
    _, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    row = x.numel() // x.shape[0] if x.shape[0] else 0
    return local, offset[0] * row, x.device_mesh.get_group()


def _slices_here(start: int, count: int, c: int) -> tuple[int, int, int]:
    """The slices (of ``c`` elements) that flat elements ``[start, start + count)`` fall in: the first, how many,
    and where ``start`` sits in the first."""
    first = start // c
    front = start - first * c
    return first, -(-(front + count) // c), front


def _scale_by_partition(params: list, updates: list, partitions: int, lo: float, hi: float) -> None:
    """ZeRO-3's trust ratio, in place on ``updates``: one ratio per slice index r < W, from the r-th slice
    (``c = ceil(n / W)`` elements; ZeRO-3 pads with zeros, which add nothing to a norm) of every tensor of
    the group, applied to those slices. Sharded tensors add their partial sums over the shard group."""
    W = partitions
    sums = None
    pieces = []
    group = None
    for p, u in zip(params, updates):
        (w_here, start, group), (u_here, _, _) = _local(p.detach()), _local(u)
        c = -(-p.numel() // W)
        if sums is None:  # bf16/fp16 tensors are summed in fp32
            sums = torch.zeros(2, W, dtype=torch.promote_types(p.dtype, torch.float32), device=w_here.device)
        pieces.append((u_here, start, c))
        if not w_here.numel():
            continue
        first, rows, front = _slices_here(start, w_here.numel(), c)
        for k, here in enumerate((w_here, u_here)):
            flat = here.reshape(-1).to(sums.dtype)  # row-major: the order of the flattened full tensor
            padded = F.pad(flat.square(), (front, rows * c - front - flat.numel()))
            sums[k, first:first + rows] += padded.view(rows, c).sum(1)
    if group is not None:
        torch.distributed.all_reduce(sums, group=group)
    w, u = sums.sqrt()
    ratio = torch.where((w > 0) & (u > 0), (w / u).clamp(lo, hi), torch.ones_like(w))
    for u_here, start, c in pieces:
        if u_here.numel():
            first, rows, front = _slices_here(start, u_here.numel(), c)
            per_element = ratio[first:first + rows].repeat_interleave(c)[front:front + u_here.numel()]
            u_here.mul_(per_element.view(u_here.shape).to(u_here.dtype))


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed: no DTensor can exist
        return False
    return isinstance(t, DTensor)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over :func:`param_groups` of ``model``."""
    groups = param_groups(model, cfg)
    if cfg.name == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    trust_ratio=cfg.trust_ratio, trust_partitions=cfg.trust_partitions)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    # The fused kernel is the fastest on CUDA; foreach elsewhere (CPU, meta, mixed placement).
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=True if on_cuda else None, foreach=None if on_cuda else True,
    )  # fmt: skip
