"""The training config: typed nested dataclasses, recipes that fill them, and ``key=value`` overrides.

A recipe is a small function returning a :class:`TrainConfig` (see :mod:`evaclip.train.recipes`); the CLI
applies dotted overrides on top (``optim.lr=1e-3 data.batch_size=64 steps=100``). Every value is checked
against the field's type, and an unknown key is an error that lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import decimal
import json
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from evaclip.data.config import DataConfig, parse_sources
from evaclip.errors import ConfigError
from evaclip.train.optim import OptimConfig

log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16", "bf16")
TASKS = ("clip", "mim")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a run's matmuls compute in: the autocast dtype, bf16 weights, or fp32."""
    return {"amp_bf16": torch.bfloat16, "bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(precision,
                                                                                                 torch.float32)


@dataclass
class ModelSection:
    name: str = "evaclip-tiny"  # a built-in config name or a JSON config path
    pretrained: str | None = None  # whole-model checkpoint
    pretrained_image: str | None = None  # vision tower init (CLIP or MIM file)
    pretrained_text: str | None = None  # text tower init (CLIP file)
    skip_keys: list[str] = field(default_factory=list)  # tower keys left fresh when loading the towers
    patch_dropout: float | None = None  # override of the config's ratio
    grad_checkpointing: bool = False
    # The paper fixes the temperature at 0.01 (logit scale 100); None keeps the official learnable scale
    # (init 1/0.07, clamped to <= 100 after each step).
    fixed_temperature: float | None = None
    lock_text: bool = False  # freeze the whole text tower (LiT-style)
    # FSDP with several processes: build on the meta device, shard, then materialise only the local shards
    # and receive the pretrained weights from rank 0. Needed for 8B/18B: no process ever holds the full model.
    meta_init: bool = True
    # Train at another input size than the config's: the "+" stages continue a 224 px checkpoint at 448 / 336
    # px. Loading interpolates the checkpoint's position embedding (bicubic, cls entry kept, as the official
    # resize_evaclip_pos_embed); a RoPE tower gets intp_freq, so its rotary tables are rebuilt for the new grid
    # on the positions of the grid it was trained on, as the official EVA02-CLIP-L-14-336 config does.
    image_size: int | None = None

    def fit_vision(self, vision_cfg: Any) -> None:
        """Apply ``image_size`` to a model's vision config (in place)."""
        if self.image_size is None or self.image_size == vision_cfg.image_size:
            return
        if vision_cfg.rope and not vision_cfg.intp_freq:
            vision_cfg.pt_hw_seq_len = vision_cfg.grid_size
            vision_cfg.intp_freq = True
        vision_cfg.image_size = self.image_size


@dataclass
class MIMSection:
    """Masked image modeling (the EVA step of weak-to-strong): a student ViT regresses a frozen teacher."""

    teacher: str | None = None  # EVA-CLIP checkpoint of the teacher (its vision tower is used)
    teacher_model: str | None = None  # the teacher's config name or JSON path
    # None: EVA-02's 105 of 256 patches (--num_mask_patches 105 on its 16x16 grid), kept at that share on other
    # grids, round(105/256 * g^2): 26 of 64, 7 of 16 (BlockMaskGenerator's default). A number masks that share.
    mask_ratio: float | None = None
    hflip: float = 0.5  # probability of EVA-02's horizontal flip before the crop
    include_cls: bool = False  # also regress the teacher's pooled CLIP embedding with the student's cls token


@dataclass
class ScheduleSection:
    warmup_steps: int = 2000
    kind: str = "cosine"  # cosine to min_lr_ratio * peak, or constant
    min_lr_ratio: float = 0.0


@dataclass
class LossSection:
    kind: str = "clip"  # clip (InfoNCE over the global batch) or siglip
    local_loss: bool = True
    gather_with_grad: bool = True
    # Pairs whose captions are identical are not negatives of each other: with few unique captions (the
    # demo's emoji sets share names across styles) they would push apart images the text cannot separate.
    # Off in the paper's recipe (web captions rarely repeat within a batch).
    mask_duplicate_texts: bool = False


@dataclass
class EvalSection:
    every: int = 0  # steps between zero-shot evaluations on rank 0 (0 = never)
    zeroshot: list[str] = field(default_factory=list)  # image-folder datasets for zero-shot top-1
    batch_size: int = 64


# What may change from one phase of a run to the next (the paper's 18B schedule changes data and patch dropout).
PHASE_KEYS = ("data.", "model.patch_dropout")


@dataclass
class PhaseSection:
    """One phase of a run: its length and what it changes, as dotted ``key=value`` overrides of the run config
    (``data.sources=...``, ``data.weights=...``, ``model.patch_dropout=0``). The learning-rate schedule runs over
    the whole run (``steps`` = the phases' steps together), not per phase."""

    name: str = ""
    steps: int = 0
    overrides: list[str] = field(default_factory=list)
    # Planning only (evaclip plan): the share of this phase's samples that are video clips, each costing
    # data.video_frames vision passes. Training counts the clips it actually meets.
    video_share: float = 0.0


# Signals a run can catch to stop with a checkpoint (SIGKILL and SIGSTOP cannot be caught; SIGINT is always caught).
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT")


@dataclass
class TrainConfig:
    recipe: str = ""
    task: str = "clip"
    out_dir: str = "runs/default"
    steps: int = 100
    seed: int = 0
    # "latest" (the newest good checkpoint in out_dir), "auto" (the same, or a fresh start when there is none yet:
    # for job scripts that requeue) or a checkpoint directory
    resume: str | None = None
    # A fresh run (no resume) into an out_dir that holds another run's checkpoints is refused unless this is set:
    # then that run's checkpoints, metrics and summary are deleted first.
    overwrite: bool = False
    # Resuming refuses a changed model, task, loss or optimizer structure (see run_state.RESUMABLE_CHANGES for what
    # may change); set this when the change is intended.
    resume_changes_ok: bool = False
    # Signals that stop the run at the next step boundary with a checkpoint, exit code 75 (preemption; SLURM's
    # --signal). SIGINT (Ctrl-C) does the same after a message; a second Ctrl-C stops at once.
    preempt_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    strategy: str = "fsdp"  # with more than one process: ddp or fsdp (FSDP2 full shard)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    # fp32 | amp_bf16 (autocast, fp32 master weights) | amp_fp16 (autocast + dynamic loss scaling: steps whose
    # scaled gradients overflow are skipped and the scale halved, as torch.amp.GradScaler does) | bf16 (pure)
    precision: str = "fp32"
    compile: bool = False
    max_nonfinite_steps: int = 5  # stop after this many non-finite losses/gradients in a row
    # Micro-batches per step with exact feature-cached accumulation (contrastive loss only): the loss is
    # that of the whole data.batch_size batch, activations those of one micro-batch, one extra forward.
    accum_steps: int = 1
    tensorboard: bool = True
    progress: bool = True
    trace_samples: bool = False  # write the sample keys of every step to out_dir/samples_rank*.jsonl
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    mim: MIMSection = field(default_factory=MIMSection)
    eval: EvalSection = field(default_factory=EvalSection)
    # A run in phases (evaclip.train.phases); empty = one phase, this config as it is.
    phases: list[PhaseSection] = field(default_factory=list)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not str(self.out_dir).strip():
            raise ConfigError("out_dir is empty; give the run a folder of its own, e.g. out_dir=runs/my-run")
        for name in ("steps", "log_every", "keep_checkpoints", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.accum_steps < 1:
            raise ConfigError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.accum_steps > 1:
            if self.task != "clip" or self.loss.kind != "clip":
                raise ConfigError("accum_steps > 1 is exact only for the CLIP contrastive loss (task=clip, "
                                  "loss.kind=clip); use a smaller batch or gradient checkpointing instead")
            if self.data.global_batch_size is None and self.data.batch_size % self.accum_steps:
                raise ConfigError(f"data.batch_size ({self.data.batch_size}) must be a multiple of accum_steps "
                                  f"({self.accum_steps})")
        for name in self.preempt_signals:
            if name not in PREEMPT_SIGNALS:
                raise ConfigError(f"preempt_signals: {name!r} cannot be caught for preemption; choose from "
                                  f"{', '.join(PREEMPT_SIGNALS)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.schedule.kind == "cosine" and self.schedule.warmup_steps >= self.steps:
            raise ConfigError(f"schedule.warmup_steps ({self.schedule.warmup_steps}) must be below steps "
                              f"({self.steps}); e.g. schedule.warmup_steps={max(0, self.steps // 10)}")
        if self.loss.kind not in ("clip", "siglip"):
            raise ConfigError(f"loss.kind must be clip or siglip, got {self.loss.kind!r}")
        if self.model.image_size is not None and self.model.image_size < 1:
            raise ConfigError(f"model.image_size must be >= 1 pixels per side (e.g. 448), got {self.model.image_size}")
        if self.model.fixed_temperature is not None and not self.model.fixed_temperature > 0:
            raise ConfigError(f"model.fixed_temperature must be > 0, got {self.model.fixed_temperature}")
        if self.task == "mim" and not (self.mim.teacher and self.mim.teacher_model):
            raise ConfigError("task=mim needs mim.teacher (a CLIP checkpoint) and mim.teacher_model (its config)")
        if not 0.0 <= self.mim.hflip <= 1.0:
            raise ConfigError(f"mim.hflip is a probability in [0, 1], got {self.mim.hflip}")
        if self.mim.mask_ratio is not None and not 0.0 < self.mim.mask_ratio < 1.0:
            raise ConfigError(f"mim.mask_ratio must lie in (0, 1), got {self.mim.mask_ratio}")
        if self.eval.every < 0 or self.eval.batch_size < 1:
            raise ConfigError(f"eval.every must be >= 0 and eval.batch_size >= 1, got {self.eval.every} and "
                              f"{self.eval.batch_size}")
        if self.eval.zeroshot and self.task != "clip":
            raise ConfigError("eval.zeroshot evaluates a CLIP model: it needs task=clip; drop eval.zeroshot")
        self.data.validate()
        if self.phases:
            from evaclip.train.phases import check_phases
            check_phases(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------
# overrides
# ---------------------------------------------------------------------------------------------------------
def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _coerce(value: str, annotation: Any, where: str) -> Any:
    """Parse a CLI string as the field's type (JSON syntax for lists; ``null``/``none`` for None)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot parse {value!r}")
    if annotation is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where} expects true or false, got {value!r}")
    if annotation is int:
        return _parse_int(value, where)
    if annotation is float:
        try:
            out = float(value)
        except ValueError:
            raise ConfigError(f"{where} expects a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{where} expects a finite number, got {value!r}")
        return out
    if annotation is str:
        return value
    if origin in (list, tuple):
        inner = args[0] if args else str
        if inner in (int, float):  # numbers may be "::"-separated too, like the data.sources they go with
            value = value.replace("::", ",")
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            items = [v for v in value.split(",") if v]
        if not isinstance(items, list):
            items = [items]
        parsed = [_coerce(str(v) if not isinstance(v, str) else v, inner, where) for v in items]
        return tuple(parsed) if origin is tuple else parsed
    raise ConfigError(f"{where} cannot be set from the command line")


INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # what torch and numpy take as a seed or a count


def _parse_int(value: str, where: str) -> int:
    """An integer written exactly: ``12345678901234567`` as is (never through a float, which would round it),
    ``1e3`` as 1000; fractions, non-finite values and anything beyond 64 bits are refused."""
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        try:
            exact = decimal.Decimal(text)
        except decimal.InvalidOperation:
            raise ConfigError(f"{where} expects an integer, got {value!r}") from None
        if not exact.is_finite() or exact != exact.to_integral_value():
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        if exact.adjusted() > 19:  # far beyond 64 bits: refused before int() builds a huge number
            raise ConfigError(f"{where}={value} is out of range; use an integer between {INT_MIN} and {INT_MAX}")
        number = int(exact)
    if not INT_MIN <= number <= INT_MAX:
        raise ConfigError(f"{where}={value} is out of range; use an integer between {INT_MIN} and {INT_MAX}")
    return number


def apply_override(cfg: TrainConfig, assignment: str) -> None:
    """Apply one ``dotted.key=value`` to ``cfg`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not key=value (e.g. optim.lr=1e-3)")
    key, value = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override key {key!r} is malformed; use dotted names such as optim.lr")
    target: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(target, list):  # a list of sections, e.g. phases.2.overrides
            if not part.isdigit() or int(part) >= len(target) or i == len(parts) - 1:
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i])} has items 0.."
                                  f"{len(target) - 1}, e.g. {'.'.join(parts[:i])}.0.<field>")
            target = target[int(part)]
            continue
        fields = _fields(target)
        if part not in fields:
            here = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}: {part!r} is not in {here} "
                              f"(valid: {', '.join(sorted(fields))})")
        if i == len(parts) - 1:
            break
        target = getattr(target, part)
        if isinstance(target, list) and target and dataclasses.is_dataclass(target[0]):
            continue
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} is not a section")
    name = parts[-1]
    if isinstance(target, DataConfig) and name == "sources":
        # Shard spec as on open_clip's command line: "A::B" (sources), ";" joins shard lists within one.
        setattr(target, name, parse_sources(value))
        return
    hints = typing.get_type_hints(type(target))
    setattr(target, name, _coerce(value, hints[name], key))
    if hasattr(target, "__post_init__") and not isinstance(target, TrainConfig):
        target.__post_init__()  # re-run the section's own checks (e.g. OptimConfig)


def _scale_tower_lrs(cfg: TrainConfig, old_lr: float, explicit: set[str]) -> None:
    """``optim.lr=X`` scales every peak lr of the recipe by ``X / old lr``: the towers' ``visual_lr`` /
    ``text_lr`` move with it (each keeps its ratio to ``lr``) unless they are set on the same command line."""
    optim = cfg.optim
    towers = [k for k in ("visual_lr", "text_lr") if f"optim.{k}" not in explicit and getattr(optim, k) is not None]
    if not towers or optim.lr == old_lr:
        return
    if old_lr == 0:
        raise ConfigError(f"optim.lr cannot be scaled from the recipe's 0: set "
                          f"{' and '.join('optim.' + k for k in towers)} as well")
    for k in towers:
        setattr(optim, k, getattr(optim, k) * (optim.lr / old_lr))
    optim.__post_init__()  # the scaled values pass the same checks as typed ones


def apply_overrides(cfg: TrainConfig, assignments: list[str]) -> TrainConfig:
    old_lr = cfg.optim.lr
    keys = {a.split("=", 1)[0].strip() for a in assignments}
    for a in assignments:
        apply_override(cfg, a)
    if "optim.lr" in keys:
        _scale_tower_lrs(cfg, old_lr, keys)
    if cfg.phases and "steps" not in keys and any(k.startswith("phases.") for k in keys):
        cfg.steps = sum(p.steps for p in cfg.phases)  # a run in phases is as long as its phases
    if "steps" in keys and "schedule.warmup_steps" not in keys and cfg.schedule.warmup_steps >= cfg.steps:
        # A short run of a recipe (steps=4 of tiny, whose warm-up is 10): the warm-up shrinks to a tenth of it.
        cfg.schedule.warmup_steps = cfg.steps // 10
        log.info("schedule.warmup_steps set to %d to fit steps=%d", cfg.schedule.warmup_steps, cfg.steps)
    if "data.batch_size" in keys and "data.global_batch_size" not in keys:
        # Two ways to give one number: a per-rank batch on the command line replaces the recipe's global one.
        cfg.data.global_batch_size = None
    cfg.validate()
    return cfg

