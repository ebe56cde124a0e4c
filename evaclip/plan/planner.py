"""The training plan: what fits on each GPU under each data-parallel scheme, and how long training takes.

Memory per GPU = model state (see :mod:`evaclip.plan.memory`) + micro-batch x activations per pair + the
contrastive loss's gathered features and logits + a reserve (CUDA context, NCCL buffers, fragmentation).
The per-GPU micro-batch is ``ceil(global_batch / gpus)``. Gradient accumulation would fit a larger batch in
less memory, but it is not exact for a contrastive loss (the negatives of one micro-batch are not those of
the full batch), so a batch that does not fit is reported as such, never silently accumulated.

Time: a step needs ``global_batch x 3 x forward FLOPs`` (model FLOPs; MFU is defined on them, so activation
recomputation lowers the MFU reached, not the work counted), at ``gpus x peak x MFU`` FLOP/s.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from evaclip.errors import ConfigError
from evaclip.models.config import CLIPConfig
from evaclip.models.factory import get_model_config
from evaclip.models.flops import Flops, model_flops
from evaclip.plan.memory import (COMPUTE_BYTES, GRAD_BYTES, MASTER_BYTES, OPTIMIZER_BYTES, SCHEMES, Activations,
                                 StateBytes, loss_bytes, model_activations, state_bytes)
from evaclip.plan.params import model_params
# plan sits above train: it plans a recipe's run (train never imports plan)
from evaclip.train.recipes import find_recipe
from evaclip.train.tasks import model_config

GIB = 2**30
GB = 1e9
DEFAULT_RESERVE_GB = 2.5


@dataclass(frozen=True)
class PlanRequest:
    model: str
    gpus: int
    gpu_memory_gib: float  # the card's memory as sold: 40 for an A100-40GB (40 GiB)
    global_batch: int | None = None
    patch_dropout: float = 0.0
    grad_checkpointing: bool = False
    peak_tflops: float | None = None  # dense bf16 peak per GPU, e.g. 312 for an A100
    mfu: float | None = None
    samples: float | None = None
    optimizer: str = "lamb"
    reserve_gb: float = DEFAULT_RESERVE_GB
    dtype_bytes: int = COMPUTE_BYTES  # activations in bf16

    def validate(self) -> None:
        # NaN fails every comparison below, so it would pass them all: refuse non-finite numbers first.
        for flag, value in (("--gpu-memory", self.gpu_memory_gib), ("--patch-dropout", self.patch_dropout),
                            ("--peak-tflops", self.peak_tflops), ("--mfu", self.mfu), ("--samples", self.samples),
                            ("--reserve-gb", self.reserve_gb)):
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{flag} must be a finite number, got {value}")
        if self.gpus < 1:
            raise ConfigError(f"--gpus must be >= 1, got {self.gpus}")
        if self.gpu_memory_gib <= 0:
            raise ConfigError(f"--gpu-memory must be > 0 (GiB per GPU, e.g. 40 or 80), got {self.gpu_memory_gib}")
        if self.global_batch is not None and self.global_batch < 1:
            raise ConfigError(f"--global-batch must be >= 1, got {self.global_batch}")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ConfigError(f"--patch-dropout must be in [0, 1), got {self.patch_dropout}")
        if (self.peak_tflops is None) != (self.mfu is None):
            raise ConfigError("give --peak-tflops and --mfu together (e.g. --peak-tflops 312 --mfu 0.4 for A100)")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError(f"--peak-tflops must be > 0, got {self.peak_tflops}")
        if self.mfu is not None and not 0.0 < self.mfu <= 1.0:
            raise ConfigError(f"--mfu must be in (0, 1], got {self.mfu}")
        if self.samples is not None and self.samples <= 0:
            raise ConfigError(f"--samples must be > 0, got {self.samples}")
        if self.samples is not None and self.peak_tflops is None:
            raise ConfigError("--samples needs --peak-tflops and --mfu to turn FLOPs into time")
        if self.optimizer not in OPTIMIZER_BYTES:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZER_BYTES)}, got {self.optimizer!r}")
        if self.reserve_gb < 0:
            raise ConfigError(f"--reserve-gb must be >= 0, got {self.reserve_gb}")
        if self.usable_bytes <= 0:
            raise ConfigError(f"--reserve-gb {self.reserve_gb:g} GB leaves nothing of {self.gpu_memory_gib:g} GiB "
                              "per GPU; lower the reserve or check --gpu-memory (GiB per GPU)")

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_gib * GIB - self.reserve_gb * GB

    @property
    def micro_batch(self) -> int | None:
        return None if self.global_batch is None else -(-self.global_batch // self.gpus)


@dataclass(frozen=True)
class SchemeFit:
    """One data-parallel scheme at one activation setting."""

    scheme: str
    checkpointing: bool
    patch_dropout: float
    state: StateBytes
    activations: Activations  # per pair
    max_micro_batch: int  # the largest per-GPU micro-batch that fits (0: not even one pair)
    batch_bytes: int | None  # total bytes per GPU at the requested micro-batch
    fits: bool | None  # the requested global batch fits (None: no batch given)


@dataclass(frozen=True)
class PhasePlan:
    """One phase of a phased recipe: its samples, patch dropout, video share and what they cost."""

    name: str
    samples: float
    patch_dropout: float
    video_share: float
    frames: int
    training_flops_per_sample: float  # 3x forward, a clip counted with all its frames
    days: float | None


def _phase_plans(recipe, cfg: CLIPConfig, global_batch: int, rate: float | None) -> list[PhasePlan]:
    """Per phase: samples = its steps x the global batch; a clip costs ``frames`` vision passes."""
    from evaclip.train.phases import phase_config, phases
    out = []
    for phase in phases(recipe):
        run = phase_config(recipe, phase.index)
        pd = model_config(run).vision_cfg.patch_dropout
        flops = model_flops(cfg, pd)
        share = recipe.phases[phase.index].video_share
        frames = run.data.video_frames
        per_sample = flops.training() + share * (frames - 1) * 3 * flops.vision
        samples = float(phase.steps * global_batch)
        out.append(PhasePlan(phase.name, samples, pd, share, frames, per_sample,
                             samples * per_sample / rate / 86400 if rate else None))
    return out


@dataclass
class Plan:
    request: PlanRequest
    params: int
    vision_params: int
    text_params: int
    flops: Flops  # at the requested patch dropout
    flops_full: Flops  # without patch dropout
    model_state_total: int  # 16 bytes/param, unsharded
    schemes: list[SchemeFit] = field(default_factory=list)  # at the requested settings
    matrix: list[SchemeFit] = field(default_factory=list)  # every scheme x checkpointing x patch dropout
    step_seconds: float | None = None
    days: float | None = None
    recipe_model: str = ""  # for a recipe: the model it trains and at what resolution
    phases: list[PhasePlan] = field(default_factory=list)  # a recipe in phases: FLOPs and days of each

    def scheme(self, name: str, checkpointing: bool | None = None, patch_dropout: float | None = None) -> SchemeFit:
        """The fit of ``name`` at the requested settings, or at the given ones (from the matrix)."""
        if checkpointing is None and patch_dropout is None:
            rows = self.schemes
        else:
            ck = self.request.grad_checkpointing if checkpointing is None else checkpointing
            pd = self.request.patch_dropout if patch_dropout is None else patch_dropout
            rows = [r for r in self.matrix if r.checkpointing == ck and r.patch_dropout == pd]
        for r in rows:
            if r.scheme == name:
                return r
        raise KeyError(f"no plan row for {name} (checkpointing={checkpointing}, patch_dropout={patch_dropout})")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["flops"]["forward"] = self.flops.forward
        out["flops_full"]["forward"] = self.flops_full.forward
        return out


def _bytes_at(micro: int, gpus: int, state: StateBytes, act: Activations, embed_dim: int, b: int) -> int:
    return state.total + micro * act.peak + loss_bytes(micro, micro * gpus, embed_dim, b)


def max_micro_batch(usable: float, gpus: int, state: StateBytes, act: Activations, embed_dim: int,
                    b: int = COMPUTE_BYTES) -> int:
    """The largest per-GPU micro-batch whose memory (global batch = micro x gpus) fits in ``usable`` bytes."""
    if _bytes_at(1, gpus, state, act, embed_dim, b) > usable:
        return 0
    lo, hi = 1, 2
    while _bytes_at(hi, gpus, state, act, embed_dim, b) <= usable:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _bytes_at(mid, gpus, state, act, embed_dim, b) <= usable else (lo, mid)
    return lo


def _fit(req: PlanRequest, cfg: CLIPConfig, scheme: str, checkpointing: bool, patch_dropout: float) -> SchemeFit:
    state = state_bytes(model_params(cfg), scheme, req.gpus, req.optimizer)
    act = model_activations(cfg, patch_dropout, checkpointing, req.dtype_bytes)
    best = max_micro_batch(req.usable_bytes, req.gpus, state, act, cfg.embed_dim, req.dtype_bytes)
    total = fits = None
    if req.global_batch is not None:
        micro = req.micro_batch
        total = state.total + micro * act.peak + loss_bytes(micro, req.global_batch, cfg.embed_dim, req.dtype_bytes)
        fits = total <= req.usable_bytes
    return SchemeFit(scheme, checkpointing, patch_dropout, state, act, best, total, fits)


def _resolve(req: PlanRequest) -> tuple[PlanRequest, CLIPConfig, str, object]:
    """The model of ``req.model``: a model name or JSON config, or a training recipe (``evaclip train --list``).
    A recipe gives its model at its resolution and, where the request leaves them out, its global batch and
    (with --peak-tflops and --mfu) its samples seen, both at the published run's GPU count."""
    info = find_recipe(req.model)
    if info is None:
        return req, get_model_config(req.model), "", None
    recipe = info.build()
    cfg = model_config(recipe)
    batch = req.global_batch
    if batch is None and info.gpus:
        batch = recipe.data.batch_size * info.gpus
    samples = req.samples
    if samples is None and batch is not None and req.peak_tflops is not None and info.gpus:
        samples = float(recipe.steps * batch)
    req = dataclasses.replace(req, global_batch=batch, samples=samples)
    return req, cfg, f"{recipe.model.name} at {cfg.vision_cfg.image_size} px", recipe


def make_plan(req: PlanRequest) -> Plan:
    """Plan training ``req.model`` on ``req.gpus`` GPUs (config only: nothing is built or allocated)."""
    req.validate()
    req, cfg, recipe_model, recipe = _resolve(req)
    params = model_params(cfg)
    opt = OPTIMIZER_BYTES[req.optimizer]
    plan = Plan(request=req, params=params.total, vision_params=params.vision.total,
                text_params=params.text.total, flops=model_flops(cfg, req.patch_dropout),
                flops_full=model_flops(cfg, 0.0),
                model_state_total=(MASTER_BYTES + GRAD_BYTES + opt) * params.total, recipe_model=recipe_model)
    plan.schemes = [_fit(req, cfg, s, req.grad_checkpointing, req.patch_dropout) for s in SCHEMES]
    dropouts = sorted({0.0, req.patch_dropout})
    plan.matrix = [_fit(req, cfg, s, ck, pd) for s in SCHEMES for ck in (False, True) for pd in dropouts]
    if req.peak_tflops is not None and req.mfu is not None:
        rate = req.gpus * req.peak_tflops * 1e12 * req.mfu
        if req.global_batch is not None:
            plan.step_seconds = req.global_batch * plan.flops.training() / rate
        if req.samples is not None:
            plan.days = req.samples * plan.flops.training() / rate / 86400
    if recipe is not None and recipe.phases and req.global_batch is not None:
        rate = req.gpus * req.peak_tflops * 1e12 * req.mfu if req.peak_tflops and req.mfu else None
        plan.phases = _phase_plans(recipe, cfg, req.global_batch, rate)
        if rate:  # the phases' own costs (patch dropout and frames differ), not one rate for the whole run
            plan.days = sum(p.days for p in plan.phases)
    return plan


# ---- text report -----------------------------------------------------------------------------------------
def _gb(x: float) -> str:
    return f"{x / GB:.2f}"


def _count(x: float) -> str:
    return f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.1f}M"


def _flop(x: float) -> str:
    return f"{x / 1e12:.2f} TFLOP" if x >= 1e12 else f"{x / 1e9:.2f} GFLOP"


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f} MB" if x < GB else f"{x / GB:.2f} GB"


def format_plan(plan: Plan) -> str:
    """A readable per-GPU report (GB = 1e9 bytes, as the paper counts; GPU memory in GiB as sold)."""
    r, ln = plan.request, []
    opt = OPTIMIZER_BYTES[r.optimizer]
    name = f"{r.model} ({plan.recipe_model})" if plan.recipe_model else r.model
    ln.append(f"{name}: {_count(plan.params)} params (vision {_count(plan.vision_params)}, text "
              f"{_count(plan.text_params)}) on {r.gpus} GPU{'s' if r.gpus > 1 else ''} x {r.gpu_memory_gib:g} GiB "
              f"({r.gpu_memory_gib * GIB / GB:.1f} GB; {r.usable_bytes / GB:.1f} GB usable after a "
              f"{r.reserve_gb:g} GB reserve)")
    batch = "no global batch given"
    if r.global_batch is not None:
        batch = f"global batch {r.global_batch:,} = {r.micro_batch} per GPU"
        if r.global_batch % r.gpus:
            batch += " (uneven: the largest share)"
    ln.append(f"{batch}; patch dropout {r.patch_dropout:g}; activation checkpointing "
              f"{'on' if r.grad_checkpointing else 'off'}; bf16 activations")
    ln.append(f"model state {MASTER_BYTES + GRAD_BYTES + opt} B/param (fp32 master {MASTER_BYTES} + fp32 grads "
              f"{GRAD_BYTES} + {r.optimizer.upper()} moments {opt}) = {_gb(plan.model_state_total)} GB; "
              f"flat / {r.gpus} = {_gb(plan.model_state_total / r.gpus)} GB per GPU; plus bf16 weights for compute")
    f, f0 = plan.flops, plan.flops_full
    ln.append(f"FLOPs per pair: forward {_flop(f0.forward)} (vision {_flop(f0.vision)}, text {_flop(f0.text)}); "
              f"at patch dropout {r.patch_dropout:g}: {_flop(f.forward)}; training 3x = {_flop(f.training())}, "
              f"with recomputation 4x = {_flop(f.training(True))}")
    ln.append("")
    ln.append(f"{'per GPU (GB)':<16}{'params':>8}{'grads':>8}{'optim':>8}{'bf16':>7}{'state':>8}"
              f"{'act peak':>11}{'max micro':>10}  requested batch")
    for row in plan.schemes:
        s = row.state
        verdict = "-" if row.fits is None else (
            f"fits ({_gb(row.batch_bytes)} GB)" if row.fits else f"does not fit ({_gb(row.batch_bytes)} GB)")
        ln.append(f"{SCHEMES[row.scheme]:<16}{_gb(s.params):>8}{_gb(s.grads):>8}{_gb(s.optimizer):>8}"
                  f"{_gb(s.compute):>7}{_gb(s.total):>8}{_mb(row.activations.peak):>11}{row.max_micro_batch:>10}"
                  f"  {verdict}")
    ln.append("")
    dropouts = sorted({0.0, r.patch_dropout})
    ln.append("activations per pair (kept for backward / peak):  " + "   ".join(
        f"patch dropout {pd:g}" for pd in dropouts))
    fsdp_rows = [x for x in plan.matrix if x.scheme == "fsdp"]
    for ck in (False, True):
        cells = [x.activations for x in fsdp_rows if x.checkpointing == ck]
        ln.append(f"  {'checkpointing' if ck else 'no checkpointing':<47}" + "   ".join(
            f"{_mb(a.saved)} / {_mb(a.peak)}" for a in cells))
    combos = [(ck, pd) for ck in (False, True) for pd in dropouts]
    title = f"fits {r.global_batch:,}? (max micro)" if r.global_batch is not None else "max micro-batch"
    ln.append(f"{title:<26}" + "".join(f"{('ckpt' if ck else 'no ckpt') + f', pd {pd:g}':>17}" for ck, pd in combos))
    for s in SCHEMES:
        cells = []
        for ck, pd in combos:
            x = plan.scheme(s, ck, pd)
            cells.append(f"{x.max_micro_batch}" if x.fits is None else f"{'yes' if x.fits else 'no'} ({x.max_micro_batch})")
        ln.append(f"  {SCHEMES[s]:<24}" + "".join(f"{c:>17}" for c in cells))
    if r.global_batch is not None:
        ln.append("a batch that does not fit is reported, not accumulated: gradient accumulation is not exact "
                  "for a contrastive loss")
    if r.peak_tflops is not None:
        when = [f"at {r.peak_tflops:g} TFLOP/s peak x MFU {r.mfu:g}"]
        if plan.step_seconds is not None:
            when.append(f"step {plan.step_seconds:.1f} s")
        if plan.days is not None:
            steps = f" ({math.ceil(r.samples / r.global_batch):,} steps)" if r.global_batch else ""
            when.append(f"{_count(r.samples)} samples in {plan.days:.1f} days{steps}")
        ln.append("time " + ", ".join(when))
    if plan.phases:
        ln.append("")
        ln.append(f"{'phase':<42}{'samples':>9}{'patch drop':>11}{'video':>7}{'train FLOPs/sample':>20}{'days':>7}")
        for p in plan.phases:
            video = f"{p.video_share:.0%}x{p.frames}" if p.video_share else "-"
            days = f"{p.days:.1f}" if p.days is not None else "-"
            ln.append(f"{p.name:<42}{_count(p.samples):>9}{p.patch_dropout:>11g}{video:>7}"
                      f"{_flop(p.training_flops_per_sample):>20}{days:>7}")
    return "\n".join(ln)
