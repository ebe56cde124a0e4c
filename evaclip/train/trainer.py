"""The training loop. Read top to bottom: set-up, resume, then one step = data -> forward -> loss -> backward
-> clip -> optimizer -> bookkeeping, with checkpoints every ``checkpoint_every`` steps. What is trained comes
from :mod:`evaclip.train.tasks`; timing, cadence, skip counts, sample trace and progress from
:mod:`evaclip.train.loop`.

The same code runs one process on a laptop CPU or many under ``torchrun`` (DDP, or FSDP2 full sharding).
"""
from __future__ import annotations

import contextlib
from collections import Counter
import gc
import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from evaclip import transforms
from evaclip.errors import ConfigError, EvaclipError, Preempted, TrainingError
from evaclip.models import sample_rng
from evaclip.models.factory import check_fits
from evaclip.models.init import keyed_by_name
from evaclip.outputs import atomic_write_text, check_output
from evaclip.data.pipeline import global_skip_counts, make_loader, merge_states
from evaclip.train import faults, run_state
from evaclip.train.config import TrainConfig, compute_dtype
from evaclip.train.distributed import DistInfo, gather_objects, init_distributed
from evaclip.train.loop import Cadence, Progress, SampleTrace, SkipCounts, StepClock, StopRequest
from evaclip.train.metrics import MetricsLog, measure_matmul_ceiling
from evaclip.train.optim import build_optimizer
from evaclip.train.phases import Phase, phase_at, phase_config, phases
from evaclip.train.schedule import LRSchedule
from evaclip.models.parallel import unwrap
from evaclip.train.tasks import make_task, model_config

log = logging.getLogger(__name__)


def _autocast(precision: str, device: torch.device):
    if precision.startswith("amp_"):
        return torch.autocast(device.type, dtype=compute_dtype(precision))
    return contextlib.nullcontext()


# The run's own settings (the TrainConfig as resolved, for reproducing the run); the model's architecture is in
# model_config.json beside final.safetensors. Distinct names: neither can be taken for the other, nor for a Hugging
# Face folder's config.json.
RUN_CONFIG_FILE = "run_config.json"


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"out_dir {out_dir} is not writable ({e.strerror or e}); choose another out_dir") from None
    # What the run writes at the end is checked now, not after hours of training (e.g. a symlink or a folder
    # where final.safetensors goes).
    for name in (RUN_CONFIG_FILE, "metrics.jsonl", "final.safetensors", "model_config.json", "summary.json"):
        check_output(out_dir / name, overwrite=True, what="training output")


class Trainer:
    """Owns the model, optimizer, schedule, data and checkpoints of one run.

    ``batches``: an iterable of ``(images, tokens, info)`` to use instead of the configured data loader (tests
    feed fixed batches this way); it must then also be used for resume by the caller.
    """

    def __init__(self, cfg: TrainConfig, batches: Iterable | None = None, dist_info: DistInfo | None = None):
        cfg.validate()
        self.cfg = cfg
        # Whoever creates the process group destroys it: a group left alive at exit can abort the process
        # ("terminate called without an active exception") while gloo's threads are torn down.
        self._owns_group = dist_info is None and not (dist.is_available() and dist.is_initialized())
        self.dist = dist_info or init_distributed()
        self.device = self.dist.device
        self.out_dir = Path(cfg.out_dir)
        self.lock = run_state.RunLock(self.out_dir)
        if self.dist.is_main and self.out_dir.is_dir():
            self.lock.acquire()  # an existing out_dir: no other run may use it from here until close()
        try:
            self._set_up(cfg, batches)
        except BaseException:
            self.lock.release()
            raise

    def _set_up(self, cfg: TrainConfig, batches: Iterable | None) -> None:
        # Fail before any work on bad input: the resume point, the model config, the data sources (listed,
        # not read), the out_dir.
        self.resume_path = run_state.resolve_resume(cfg.resume, self.out_dir)
        self._check_out_dir_owner()
        self.task = make_task(cfg)
        self.eval_sets = self._load_eval_sets()
        self._external_batches = batches
        # The run as its first phase trains it (the whole run without phases); every phase's data is checked now.
        self.phase: Phase = phase_at(cfg, 0)
        self.run_cfg = phase_config(cfg, 0)
        self.position_offset = 0  # global positions of the phases before this one
        for phase in phases(cfg):
            data = phase_config(cfg, phase.index).data
            rank_batch = data.rank_batch(self.dist.world_size)  # a world size the order cannot use: one line
            if rank_batch % cfg.accum_steps:
                raise ConfigError(f"this rank's batch ({rank_batch} = the global batch over {self.dist.world_size} "
                                  f"processes) must be a multiple of accum_steps ({cfg.accum_steps})")
            if batches is None and phase.index > 0:
                self._make_loader(data).close()  # lists (and checks) the phase's sources, starts nothing
        self._carried_skips: Counter = Counter()  # skips met by the loaders of earlier phases
        self.loader = self._make_loader() if batches is None else None
        if self.dist.is_main:
            _check_writable(self.out_dir)
            self.lock.acquire()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite and self.resume_path is None and self.dist.is_main:
            self._clear_previous_run()

        torch.manual_seed(cfg.seed)
        self.raw_model = self._build_model()
        self.model = self.raw_model if self._sharded_init() else self._wrap(self.raw_model)
        if cfg.compile:
            self.model = torch.compile(self.model)
        # Parameter groups are built on the unwrapped module (FSDP2 keeps its structure and names).
        self.optimizer = build_optimizer(self.raw_model, cfg.optim)
        self.schedule = LRSchedule(total_steps=cfg.steps, warmup_steps=cfg.schedule.warmup_steps,
                                   kind=cfg.schedule.kind, min_lr_ratio=cfg.schedule.min_lr_ratio)
        self.loss_fn = self.task.make_loss()
        # fp16 needs loss scaling (its range ends at 65504); bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "amp_fp16" else None
        self.step = 0
        self.samples_seen = 0
        self.video_samples = 0  # clips among them
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        # Where non-finite values showed up (for the stop message): steps whose loss or gradients were not
        # finite (a loss-scale overflow is not one), the first of them, and the last step that updated weights.
        self.nonfinite_steps = 0
        self.first_nonfinite_step: int | None = None
        self.last_update_step: int | None = None
        self._step_was_nonfinite = False
        self.last_finite_loss: float | None = None
        self.stop: StopRequest | None = None  # the signals being watched, while fit runs
        self.stop_agreed = False  # some rank was asked to stop: every rank stops after this step
        # Patch dropout, DropPath and MIM masks are keyed per sample during fit (sample_rng); with batches fed by
        # the caller (no positions) they fall back to this RNG, which differs per rank but is reproducible.
        torch.manual_seed(cfg.seed + 1_000_003 * (self.dist.rank + 1))

    # ---- set-up -------------------------------------------------------------------------------------------
    def _check_out_dir_owner(self) -> None:
        """A fresh run does not write over another run's checkpoints (they would outrank its own on resume), and
        a resumed run trains the model, loss and optimizer that the checkpoint holds."""
        cfg = self.cfg
        if self.resume_path is None:
            existing = run_state.find_latest(self.out_dir).path
            if existing is not None and not cfg.overwrite:
                raise TrainingError(f"out_dir {self.out_dir} holds the checkpoints of an earlier run (newest: "
                                    f"{existing.name}); continue it with resume=latest, start afresh with "
                                    "overwrite=true (deletes its checkpoints and metrics), or choose another out_dir")
            return
        if cfg.resume_changes_ok:
            return
        saved = run_state.read_meta(self.resume_path).get("config") or {}
        changes = run_state.config_changes(saved, cfg.to_dict())
        if changes:
            raise TrainingError(f"resume from {self.resume_path} with a changed config: {'; '.join(changes)}; resume "
                                "with the checkpoint's settings, or set resume_changes_ok=true if the change is "
                                "intended")

    def _clear_previous_run(self) -> None:
        """overwrite=true: the earlier run's checkpoints, metrics and summary go before this run writes its own."""
        shutil.rmtree(run_state.checkpoint_root(self.out_dir), ignore_errors=True)
        for name in ("metrics.jsonl", "summary.json", "tensorboard"):
            target = self.out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.is_file():
                target.unlink()

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.is_distributed:
            return model
        if self.cfg.strategy == "ddp":
            from evaclip.models.parallel import apply_ddp
            return apply_ddp(model, self.device)
        from evaclip.models.parallel import FSDPConfig, apply_fsdp
        # On CPU, bf16 compute has no fast path: keep the gathered weights in fp32 there.
        amp = self.cfg.precision in ("amp_bf16", "bf16") and self.device.type == "cuda"
        return apply_fsdp(model, cfg=FSDPConfig(param_dtype="bf16" if amp else "fp32"))

    def _sharded_init(self) -> bool:
        return self.dist.is_distributed and self.cfg.strategy == "fsdp" and self.cfg.model.meta_init

    def _build_model(self) -> nn.Module:
        """One path for every strategy: build on the meta device, shard (FSDP2), materialise, initialise every
        parameter from a generator keyed by (seed, its name), then load the pretrained weights. The keyed init
        gives one process, DDP and FSDP2 bit-identical starting weights (:mod:`evaclip.models.init`); sharded,
        only rank 0 reads the pretrained file and no process ever holds the full model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        sharded = self._sharded_init()
        model = self.task.build_meta(self.device)
        weights = self.task.pretrained_state_dict(model) if self.dist.is_main or not sharded else {}
        if self.cfg.precision == "bf16":
            model = model.to(torch.bfloat16)
        # Refuse a model this process cannot hold before allocating it (its shard of it, under FSDP2).
        values = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))
        check_fits(values // self.dist.world_size if sharded else values, self.device)
        if sharded:
            model = self._wrap(model)
        model.to_empty(device=self.device)
        with torch.no_grad(), keyed_by_name(model, self.cfg.seed):
            model.init_weights()
            model.init_buffers()
        if not sharded:
            if weights:
                model.load_state_dict(weights, strict=False)
            return model
        loads = torch.tensor([len(weights)], device=self.device)
        dist.broadcast(loads, src=0)
        if int(loads.item()):
            set_model_state_dict(model, weights, options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True, strict=False))
        return model

    def _load_eval_sets(self) -> list[tuple[str, Any]]:
        """The zero-shot datasets of the evaluation hook, found and listed now: a wrong path fails before step 0,
        not at the first evaluation ``eval.every`` steps (and maybe hours) later. Resolved as ``evaclip eval``
        resolves ``--dataset PATH``, and scored as it scores them (same class names and prompts)."""
        if self.cfg.task != "clip" or not self.cfg.eval.zeroshot:
            return []
        from evaclip.eval.runner import EvalOptions, load_zeroshot_set, resolve_dataset
        transform = transforms.image_transform(self.task.image_size, is_train=False)
        sets = []
        for dataset in self.cfg.eval.zeroshot:
            try:
                name, path = resolve_dataset(dataset, None)
                sets.append((f"zeroshot/{Path(dataset).name}/acc1",
                             load_zeroshot_set(path, transform, name, EvalOptions())))
            except EvaclipError as e:
                raise type(e)(f"eval.zeroshot: {e}") from None
        return sets

    def _make_loader(self, data=None):
        # The task's tokenizer carries its own context length: data.context_length is only make_loader's
        # default for callers that bring none.
        return make_loader(data or self.run_cfg.data, self.dist.rank, self.dist.world_size,
                           transform=self.task.train_transform(), tokenizer=self.task.tokenizer())

    def _enter_phase(self, phase: Phase) -> None:
        """Switch to ``phase``: its data (a fresh loader) and its patch dropout; the schedule runs on."""
        cfg = self.cfg
        self.position_offset = sum(p.steps * phase_config(cfg, p.index).data.global_batch(self.dist.world_size)
                                   for p in phases(cfg)[:phase.index])
        self.phase, self.run_cfg = phase, phase_config(cfg, phase.index)
        if self.loader is not None:
            self._carried_skips.update(self.loader.skip_counts)
            self.loader.close()
            self.loader = self._make_loader()
        ratio = model_config(self.run_cfg).vision_cfg.patch_dropout
        self.task.model_cfg.vision_cfg.patch_dropout = ratio  # for FLOPs and MFU
        vision = unwrap(self.raw_model)
        vision = getattr(vision, "visual", vision)
        vision.patch_dropout = ratio
        if self.dist.is_main:
            log.info("phase %d (%s) from step %d: %d steps, patch dropout %g", phase.index, phase.name,
                     phase.start, phase.steps, ratio)

    def _batches(self) -> Iterator:
        if self._external_batches is not None:
            return iter(self._external_batches)
        if self.loader is None:
            self.loader = self._make_loader()
        return iter(self.loader)

    # ---- checkpoints --------------------------------------------------------------------------------------
    def resume(self) -> None:
        path = self.resume_path
        if path is None:
            return
        meta, data_state = run_state.load(path, self.model, self.optimizer)
        self.step = int(meta["step"])
        self.samples_seen = int(meta.get("samples_seen", 0))
        self.video_samples = int(meta.get("video_samples", 0))
        if self.dist.is_main:  # skip totals of earlier phases: rank 0 carries them (the logs sum over ranks)
            self._carried_skips = Counter(meta.get("earlier_phase_skips") or {})
        self.skipped_steps = int(meta.get("skipped_steps", 0))
        self.nonfinite_steps = int(meta.get("nonfinite_steps", 0))
        self.first_nonfinite_step = meta.get("first_nonfinite_step")
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        phase = phase_at(self.cfg, self.step)
        if phase.index != self.phase.index:
            self._enter_phase(phase)
        if self._external_batches is None and data_state is not None:
            if data_state.get("phase", 0) == phase.index:
                if self.loader is None:
                    self.loader = self._make_loader()
                self.loader.load_state_dict(data_state)  # the global position: any world size can take it up
            elif self.dist.is_main:  # saved at the end of an earlier phase: this one starts its data afresh
                self._carried_skips.update(data_state.get("skip_counts", {}))
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def save_checkpoint(self) -> Path:
        self.require_finite_weights("checkpointed")
        # Every rank's streams together are the global data position (a collective).
        parts = gather_objects(self.loader.state_dict() if self.loader is not None else None)
        data_state = merge_states(parts) if self.dist.is_main else None
        if data_state is not None:
            data_state["phase"] = self.phase.index
        carried = global_skip_counts(self._carried_skips)  # a collective, like the gather above
        meta = {"samples_seen": self.samples_seen, "video_samples": self.video_samples,
                "config": self.cfg.to_dict(), "recipe": self.cfg.recipe,
                "skipped_steps": self.skipped_steps, "nonfinite_steps": self.nonfinite_steps,
                "first_nonfinite_step": self.first_nonfinite_step, "earlier_phase_skips": carried}
        if self.scaler is not None:
            meta["grad_scaler"] = self.scaler.state_dict()
        return run_state.save(self.out_dir, self.step, self.model, self.optimizer,
                              data_state=data_state, meta=meta, keep=self.cfg.keep_checkpoints)

    def export(self) -> list[Path]:
        """Write the full, unsharded weights (rank 0) in the format ``evaclip.create_model`` loads."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        self.require_finite_weights("exported")
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        paths: list[Path] = []
        if self.dist.is_main:
            paths = self.task.export({k: v.float() for k, v in full.items()}, self.out_dir)
        if self.dist.is_distributed:
            dist.barrier()
        return paths

    # ---- non-finite weights -------------------------------------------------------------------------------
    def nonfinite_weights(self) -> tuple[int, str | None]:
        """(non-finite values in the trainable model over all ranks, the first parameter on this rank holding
        one). A collective: every rank must call it at the same point."""
        names, counts = [], []
        for name, p in self.raw_model.named_parameters():
            local = p.detach()
            local = local.to_local() if hasattr(local, "to_local") else local  # this rank's FSDP2 shard
            names.append(name)
            counts.append((~torch.isfinite(local)).sum())
        if not counts:
            return 0, None
        per_param = torch.stack(counts)
        total = per_param.sum()
        if self.dist.is_distributed:
            dist.all_reduce(total)
        bad = per_param.nonzero()
        return int(total.item()), names[int(bad[0])] if bad.numel() else None

    def require_finite_weights(self, purpose: str) -> None:
        """Refuse to go on (train, checkpoint, export) with NaN or inf in the weights, saying where they came from."""
        count, name = self.nonfinite_weights()
        if count:
            raise TrainingError(self._nonfinite_weights_message(count, name, purpose))

    def _nonfinite_weights_message(self, count: int, name: str | None, purpose: str) -> str:
        values = f"{count} non-finite value{'s' if count != 1 else ''}"
        where = f"{values}, e.g. in {name}" if name else values
        if self.last_update_step is None:  # no update of this process made them: they were loaded so
            if self.resume_path is not None:
                return (f"the weights resumed from {self.resume_path} are not finite ({where}); nothing is "
                        f"{purpose}: resume from an earlier checkpoint with resume=checkpoints/step_XXXXXXXX")
            m = self.cfg.model
            given = [f"{k}={v}" for k, v in (("model.pretrained", m.pretrained),
                                             ("model.pretrained_image", m.pretrained_image),
                                             ("model.pretrained_text", m.pretrained_text)) if v]
            source = f"check {' and '.join(given)} for NaN/inf" if given else f"check model.name={m.name}"
            return (f"the model is not finite before step {self.step}, before any update ({where}); nothing is "
                    f"{purpose}: the cause is the initial weights, not the learning rate: {source}")
        history = ""
        if self.nonfinite_steps:
            history = (f"; {self.nonfinite_steps} step(s) had a non-finite loss or gradient, the first at step "
                       f"{self.first_nonfinite_step}")
        return (f"the weights became non-finite after the update of step {self.last_update_step} ({where}){history}; "
                f"nothing is {purpose}: lower optim.lr, raise schedule.warmup_steps or lower optim.grad_clip, "
                "then resume=latest")

    @staticmethod
    def _inject_loss_faults(loss: torch.Tensor, step: int) -> torch.Tensor:
        if faults.active("nan_loss", step):
            loss = loss * float("nan")
        if faults.active("inf_loss", step):
            loss = loss * float("inf")
        return loss

    # ---- one step -----------------------------------------------------------------------------------------
    def train_step(self, images: torch.Tensor, tokens: torch.Tensor, frames: list[int] | None = None,
                   videos: int = 0) -> dict[str, Any]:
        """One step on this rank's batch; ``frames``/``videos``: frame counts and number of clips when the
        batch holds video clips (their frames are rows of ``images``)."""
        cfg, step, scaler = self.cfg, self.step, self.scaler
        lr_factor = self.schedule.apply(self.optimizer, step)
        images = images.to(self.device, non_blocking=True)
        tokens = tokens.to(self.device, non_blocking=True)
        if cfg.precision == "bf16":
            images = images.to(torch.bfloat16)
        if cfg.accum_steps > 1 and frames is not None:
            raise TrainingError("accum_steps > 1 does not split batches with video clips yet; train them with "
                                "accum_steps=1 (and a smaller batch or gradient checkpointing)")
        if cfg.accum_steps > 1:  # exact accumulation for the contrastive loss (see accumulate.py)
            from evaclip.train.accumulate import cached_feature_step
            loss = cached_feature_step(self.model, self.loss_fn, images, tokens, cfg.accum_steps,
                                       lambda: _autocast(cfg.precision, self.device),
                                       loss_hook=lambda value: self._inject_loss_faults(value, step),
                                       scale_backward=scaler.scale if scaler is not None else None)
            extras = {"logit_scale": self.raw_model.logit_scale.detach().exp()} if hasattr(
                self.raw_model, "logit_scale") else {}
        else:
            with _autocast(cfg.precision, self.device):
                loss, extras = self.task.loss(self.model, self.loss_fn, images, tokens, frames)
            loss = self._inject_loss_faults(loss, step)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if faults.active("nan_grad", step):
            faults.poison_grad(self.raw_model)
        for kind in ("crash", "sigterm", "sigterm_launcher"):  # mid-step: after backward, before the update
            faults.maybe_fail(kind, step)
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # clip and check the true gradients; records inf for update()

        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        extra_frames = sum(frames) - len(frames) if frames is not None else 0
        loss_value, loss_ok, grad_ok, clips, extra_frames = self._reduce_step(loss.detach(), grad_norm, videos,
                                                                              extra_frames)
        ok = loss_ok and grad_ok
        # Under fp16 loss scaling, gradients that overflow at a scale >= 1 are the scaler's to handle (it halves
        # the scale and the step is skipped); at a scale below 1 they are not finite at any scale: a fault.
        loss_scale = scaler.get_scale() if scaler is not None else None
        overflow = loss_ok and not grad_ok and loss_scale is not None and loss_scale >= 1.0
        if ok:
            if scaler is not None:
                scaler.step(self.optimizer)
            else:
                self.optimizer.step()
            self.task.after_step(self.model)
            if faults.active("nan_weight", step):
                faults.poison_weight(self.raw_model)
            self.nonfinite_in_a_row = 0
            self.last_update_step = step
            self.last_finite_loss = loss_value
        else:
            self.skipped_steps += 1
            if overflow:
                log.info("step %d: gradients overflow at loss scale %g, update skipped", step, loss_scale)
            else:
                self.nonfinite_in_a_row += 1
                self.nonfinite_steps += 1
                if self.first_nonfinite_step is None:
                    self.first_nonfinite_step = step
                log.warning("step %d: non-finite loss or gradient, update skipped", step)
        self._step_was_nonfinite = not ok and not overflow
        if scaler is not None:
            # A non-finite loss says nothing about the scale (the data or the model is at fault): keep it.
            scaler.update(loss_scale if not loss_ok else None)
        self.optimizer.zero_grad(set_to_none=True)
        lr = max(g["lr"] for g in self.optimizer.param_groups)  # the highest group lr (e.g. the vision top)
        record = {"step": step, "loss": loss_value, "lr": lr, "lr_factor": lr_factor,
                  "grad_norm": float(grad_norm), "skipped": not ok, "video_samples": clips,
                  "extra_frames": extra_frames}
        if scaler is not None:
            record.update(loss_scale=loss_scale, overflow=overflow)
        for k, v in extras.items():
            record[k] = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
        return record

    def _reduce_step(self, loss: torch.Tensor, grad_norm: torch.Tensor, videos: int = 0, extra_frames: int = 0
                     ) -> tuple[float, bool, bool, int, int]:
        """(the global-batch loss, is it finite, are the gradients finite, the global batch's video clips and
        frames beyond one per sample), the same on every rank.

        The loss is the mean of the ranks' losses (each over an equal share of the batch), which is the
        loss of the global batch (see evaclip.train.loss); rank 0's own loss is only its share. Every rank
        must agree to skip a non-finite step, or they would diverge. One collective, one host sync per step;
        it also carries the ranks' stop requests (a signal may reach only some of them), so that all stop
        after the same step (:attr:`stop_agreed`).
        """
        stop = float(self.stop is not None and self.stop.requested)
        values = torch.stack([loss.float().reshape(()), (~torch.isfinite(loss)).float().reshape(()),
                              (~torch.isfinite(grad_norm)).float().reshape(()).to(loss.device),
                              torch.tensor(stop, device=loss.device),
                              torch.tensor(float(videos), device=loss.device),
                              torch.tensor(float(extra_frames), device=loss.device)])
        if self.dist.is_distributed:
            dist.all_reduce(values)
            values[0] /= self.dist.world_size
        mean, bad_loss, bad_grad, stops, clips, frames = values.tolist()
        self.stop_agreed = stops > 0
        return mean, bad_loss == 0, bad_grad == 0, int(clips), int(frames)

    def check_nonfinite(self, step: int) -> None:
        """Stop on non-finite weights at once (no later step can repair them) and after
        ``max_nonfinite_steps`` non-finite steps in a row."""
        if self._step_was_nonfinite:
            self.require_finite_weights("checkpointed or exported")
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite_steps:
            first = (f", {self.nonfinite_steps} in all since step {self.first_nonfinite_step}"
                     if self.nonfinite_steps > self.nonfinite_in_a_row else "")
            raise TrainingError(
                f"loss or gradients were not finite for {self.nonfinite_in_a_row} steps in a row (last at step "
                f"{step}){first}; the weights are still finite, nothing is exported: lower optim.lr, raise "
                "schedule.warmup_steps, check the data, or train in fp32")

    def close(self) -> None:
        """Release the data workers, the DDP wrapper and, if this trainer created it, the process group."""
        self._close_loader()
        # DDP's C++ reducer holds the process group and is freed with the GIL held. Were it the group's last
        # owner, the group's destructor would join gloo threads that may be waiting for that GIL: a hang at
        # exit (PyTorch #56297). Freed here, while the group is still registered, it is never the last owner.
        if self.model is not self.raw_model and hasattr(self.model, "reducer"):
            self.model = self.raw_model
            gc.collect()
        self.lock.release()
        if self._owns_group and dist.is_initialized():
            dist.barrier()  # every rank has finished writing before any tears the group down
            dist.destroy_process_group()

    # ---- evaluation hook ----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Zero-shot top-1 on the configured image-folder datasets, on rank 0 (the others wait).

        Under FSDP every rank runs the same evaluation, since a sharded forward needs all of them.
        """
        out: dict[str, float] = {}
        sharded = self.dist.is_distributed and self.cfg.strategy == "fsdp"
        if (self.dist.is_main or sharded) and self.cfg.task == "clip":
            from evaclip.eval.runner import EvalOptions, evaluate_zeroshot_set
            model = self.raw_model
            was_training = model.training
            model.eval()
            # read in this process: loader workers would be started afresh at every evaluation
            opts = EvalOptions(batch_size=self.cfg.eval.batch_size, workers=0, device=str(self.device))
            for key, zeroshot in self.eval_sets:
                with torch.no_grad(), _autocast(self.cfg.precision, self.device):
                    m = evaluate_zeroshot_set(model, self.task.tokenizer(), zeroshot, opts)
                out[key] = m["acc1"]
            model.train(was_training)
        if self.dist.is_distributed:
            dist.barrier()
        return out

    # ---- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.resume()
        self.require_finite_weights("trained")
        global_batch = self.run_cfg.data.global_batch(self.dist.world_size)
        cadence = Cadence.of(cfg)
        trace = SampleTrace(self.out_dir, self.dist.rank, cfg.trace_samples)
        with contextlib.ExitStack() as open_parts:  # closed in reverse order, whether the run ends or fails
            open_parts.callback(self._close_loader)
            metrics = MetricsLog(self.out_dir, enabled=self.dist.is_main, tensorboard=cfg.tensorboard)
            open_parts.callback(metrics.close)
            if self.resume_path is not None:
                metrics.drop_from(self.step)  # the steps after the checkpoint are trained (and logged) again
            if self.dist.is_main:
                atomic_write_text(self.out_dir / RUN_CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n",
                                  what="training output")
            flops = self.task.flops_per_sample()
            # MFU's denominator is the matmul rate of the dtype the run computes in (bf16 runs several times
            # faster than fp32 on a GPU, so an fp32 ceiling would inflate a bf16 run's MFU).
            ceiling = measure_matmul_ceiling(self.device, compute_dtype(cfg.precision)) if flops else None
            batches = self._batches()
            skips = SkipCounts(self.loader, self._carried_skips)
            progress = Progress(self.dist.is_main and cfg.progress, total=cfg.steps, initial=self.step,
                                desc=f"train {cfg.recipe or cfg.task}")
            open_parts.callback(progress.close)
            self.model.train()
            clock = StepClock(global_batch, flops, ceiling, self.dist.world_size, self.task.flops_per_extra_frame())
            self.stop = open_parts.enter_context(StopRequest(cfg.preempt_signals))
            while self.step < cfg.steps:
                phase = phase_at(cfg, self.step)
                if phase.index != self.phase.index:  # the next phase of a phased run
                    self._enter_phase(phase)
                    batches, skips.loader = self._batches(), self.loader
                    global_batch = self.run_cfg.data.global_batch(self.dist.world_size)
                    clock.global_batch, clock.flops = global_batch, self.task.flops_per_sample()
                clock.start()
                try:
                    images, tokens, info = next(batches)
                except StopIteration:
                    batches = self._batches()  # next virtual epoch
                    images, tokens, info = next(batches)
                clock.batch_ready()
                info = info if isinstance(info, dict) else {}
                with sample_rng.per_sample(self._sample_keys(info)):
                    record = self.train_step(images, tokens, info.get("frames"), info.get("videos", 0))
                clock.step_done(record)
                self.video_samples += record["video_samples"]
                if cfg.phases:
                    record["phase"] = self.phase.index
                trace.write(self.step, info)
                self.step += 1
                self.samples_seen += global_batch
                should_log = cadence.log(self.step, record["skipped"])
                if should_log:
                    skips.add_to(record)  # a collective: every rank logs on the same steps (the test is global)
                if cadence.evaluate(self.step):
                    record.update(self.evaluate())
                if should_log:
                    metrics.log(record)
                self.check_nonfinite(record["step"])
                progress.update(record)
                saved = cadence.checkpoint(self.step)
                if saved:
                    self.save_checkpoint()
                if self.stop_agreed and self.step < cfg.steps:
                    self._stop_here(saved)
            if cadence.final_checkpoint:
                self.save_checkpoint()
            exported = self.export()
        return self._summary(clock, skips, exported)

    def _sample_keys(self, info: dict) -> torch.Tensor | None:
        """Keys of the per-sample randomness (patch dropout, DropPath, MIM masks): the samples' global positions
        over the whole run (phases included), one per frame for clips. The same on any world size, in any
        micro-batch, and when a checkpointed block is recomputed. None for batches fed by the caller."""
        positions = info.get("positions")
        if positions is None:
            return None
        keys = sample_rng.sample_keys(self.cfg.seed, [self.position_offset + p for p in positions]).to(self.device)
        frames = info.get("frames")
        return keys if frames is None else sample_rng.frame_keys(keys, frames)

    def _stop_here(self, saved: bool) -> None:
        """Preemption: a checkpoint at this step boundary (unless the cadence just wrote it), then out."""
        path = run_state.checkpoint_root(self.out_dir) / f"step_{self.step:08d}"
        if not saved:
            path = self.save_checkpoint()
        asked = self.stop.signal if self.stop is not None and self.stop.signal else "a signal to another rank"
        raise Preempted(f"stopped by {asked} after step {self.step} of {self.cfg.steps}: checkpoint {path} written; "
                        f"continue with resume=latest (exit code {Preempted.exit_code})")

    def _close_loader(self) -> None:
        if self.loader is not None:
            self.loader.close()

    def _summary(self, clock: StepClock, skips: SkipCounts, exported: list[Path]) -> dict[str, Any]:
        """The run's totals, written to summary.json by rank 0. A collective (the skip counts of every rank)."""
        # final_loss: that of the last step that updated the weights (a skipped step's NaN says nothing about them).
        summary = {"steps": self.step, "samples_seen": self.samples_seen, "video_samples": self.video_samples,
                   "final_loss": self.last_finite_loss,
                   "skipped_steps": self.skipped_steps, "nonfinite_steps": self.nonfinite_steps,
                   **clock.totals(), "exported": [str(p) for p in exported]}
        skips.add_to_summary(summary)
        if self.dist.is_main:
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n",
                              what="training output")
        return summary


def train(cfg: TrainConfig, batches: Iterable | None = None) -> dict[str, Any]:
    """Run a whole training job described by ``cfg`` (in this process; use torchrun for several)."""
    trainer = Trainer(cfg, batches)
    try:
        summary = trainer.fit()
    except Preempted:
        trainer.close()  # every rank stops here together, so the collective close is safe
        raise
    except BaseException:
        trainer.lock.release()  # a failed run leaves out_dir free at once, also within this process
        raise
    trainer.close()
    return summary
