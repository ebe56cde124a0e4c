"""Training-step throughput: evaclip vs open_clip's model code, same config, same loss, same optimizer.

One step = forward of both towers -> symmetric InfoNCE (evaclip's ``ClipLoss``) -> backward -> gradient-norm
clip (foreach) -> AdamW (foreach) -> logit-scale clamp; zero_grad(set_to_none). Both models get exactly this
step; only the model code differs. fp32, ``--threads`` intra-op threads (2 by default).

Reference: open_clip_torch 3.3.0's ``CLIP`` class (``open_clip/model.py`` + ``transformer.py``), loaded from the
installed wheel by file path with ``open_clip/__init__.py`` skipped (it imports torchvision); the single stub is
``torchvision.ops.misc.FrozenBatchNorm2d``, an empty class that a ViT never uses (see benchmarks/common.py).
For ``evaclip-small`` both models have the same matrices and FLOPs (22.33M parameters; open_clip's attention has
a k bias that EVA omits and an extra ``ln_pre``, EVA has patch-embedding and head biases).

MFU = model FLOPs per second / matmul ceiling, where model FLOPs per sample = 3 x forward
(``evaclip.models.flops.model_flops``) and the ceiling is the median sustained FLOP/s of a 1024^3 fp32 matmul
measured in the same run (before the first and after each model's timed steps). Steps are timed
individually; medians are reported. The two models alternate in rounds so that machine load drifts hit both
alike. Each figure comes twice: per wall second, and per second of process CPU time (load-independent on a
shared machine; see ``benchmarks/common.time_repeats``).

    .venv/bin/python benchmarks/train_step.py [--model evaclip-small] [--batch 128] [--repeats 5] [--rounds 2]
    .venv/bin/python benchmarks/train_step.py --model evaclip-tiny --batch 256
    .venv/bin/python benchmarks/train_step.py --profile      # torch.profiler: per-op time of both steps
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning, so process CPU time counts work only (libgomp reads this
# when torch loads it, hence before the import).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (Batch, Timing, machine_line, matmul_ceiling, median,  # noqa: E402
                               merge_ceilings, open_clip_model, param_count, random_batch, set_threads,
                               time_repeats)
from evaclip.models.factory import create_model, get_model_config  # noqa: E402
from evaclip.models.flops import model_flops  # noqa: E402
from evaclip.train.loss import ClipLoss  # noqa: E402


def make_step(model: nn.Module, batch: Batch, lr: float = 1e-4):
    """A closure running one full training step of ``model`` on ``batch`` (or on the batch it is given)."""
    model.train()
    loss_fn = ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, foreach=True)

    def step(b: Batch = batch) -> torch.Tensor:
        image_features, text_features, scale = model(b.images, b.tokens)
        loss = loss_fn(image_features, text_features, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return loss

    return step


def build_pair(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = create_model(name)
    torch.manual_seed(0)
    ref = open_clip_model(get_model_config(name))
    return ours, ref


def run(name: str, batch_size: int, repeats: int, rounds: int, threads: int, verbose: bool = True,
        compile_models: bool = False) -> dict:
    """Time both models; return samples/s, ratio and MFU (also printed when ``verbose``).

    Two views of the same steps: wall time (medians; what a quiet machine shows) and process CPU time
    (medians; load-independent, since work per CPU-second does not change when other processes share the
    cores). MFU is wall rate / wall ceiling and CPU rate / CPU ceiling respectively.
    """
    set_threads(threads)
    cfg = get_model_config(name)
    ours, ref = build_pair(name)
    if compile_models:  # both, so that the comparison stays model code vs model code
        ours, ref = torch.compile(ours), torch.compile(ref)
    batch = random_batch(cfg, batch_size)
    flops = 3 * model_flops(cfg).forward  # per sample; identical for both on evaclip-small
    ceilings = [matmul_ceiling()]
    steps = {"evaclip": make_step(ours, batch), "open_clip": make_step(ref, batch)}
    times = {k: Timing() for k in steps}
    for r in range(rounds):
        for label, step in steps.items():
            times[label].extend(time_repeats(step, repeats, warmup=1 if r == 0 else 0))
            ceilings.append(matmul_ceiling(seconds=0.3))
    ceiling = merge_ceilings(ceilings)
    out = {"model": name, "batch": batch_size, "ceiling": ceiling, "flops_per_sample": flops,
           "params": {"evaclip": param_count(ours), "open_clip": param_count(ref)}}
    for label, t in times.items():
        wall, cpu = batch_size / median(t.wall), batch_size / median(t.cpu)
        out[label] = {"samples_per_s": wall, "mfu": wall * flops / ceiling.per_wall_s, "step_s": median(t.wall),
                      "samples_per_cpu_s": cpu, "mfu_cpu": cpu * flops / ceiling.per_cpu_s}
    out["ratio"] = out["evaclip"]["samples_per_s"] / out["open_clip"]["samples_per_s"]
    out["ratio_cpu"] = out["evaclip"]["samples_per_cpu_s"] / out["open_clip"]["samples_per_cpu_s"]
    if verbose:
        print(f"{name}: batch {batch_size}, fp32{', torch.compile (both)' if compile_models else ''}, {machine_line()}")
        print(f"  params: evaclip {out['params']['evaclip'] / 1e6:.2f}M, open_clip {out['params']['open_clip'] / 1e6:.2f}M;"
              f" {flops / 1e9:.3f} GFLOP per training sample (3 x forward)")
        walls = ", ".join(f"{c.per_wall_s / 1e9:.0f}" for c in ceilings)
        print(f"  matmul ceiling: {ceiling.per_wall_s / 1e9:.1f} GFLOP/s wall (median of {walls}); "
              f"{ceiling.per_cpu_s / 1e9:.1f} GFLOP per CPU-second")
        for label in steps:
            r = out[label]
            print(f"  {label:9s}: {r['samples_per_s']:7.2f} samples/s  step {r['step_s'] * 1e3:7.1f} ms  "
                  f"MFU {r['mfu']:.3f} | {r['samples_per_cpu_s']:6.2f} samples/CPU-s  MFU(cpu) {r['mfu_cpu']:.3f}"
                  f"   (median of {len(times[label].wall)})")
        print(f"  ratio evaclip / open_clip: {out['ratio']:.3f}x wall, {out['ratio_cpu']:.3f}x CPU time")
    return out


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
              "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile(name: str, batch_size: int, threads: int, rows: int = 20) -> None:
    """Where each model's step spends its time: self CPU time per op, side by side (ms per step)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    set_threads(threads)
    cfg = get_model_config(name)
    batch = random_batch(cfg, batch_size)
    per_op: dict[str, dict[str, float]] = {}
    for label, model in zip(("evaclip", "open_clip"), build_pair(name)):
        step = make_step(model, batch)
        step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        per_op[label] = {e.key: e.self_cpu_time_total / 2e3 for e in prof.key_averages()}
    totals = {k: sum(v.values()) for k, v in per_op.items()}
    keys = sorted(set(per_op["evaclip"]) | set(per_op["open_clip"]),
                  key=lambda k: -max(per_op["evaclip"].get(k, 0), per_op["open_clip"].get(k, 0)))
    print(f"{name}, batch {batch_size}: self CPU ms per step (share of the step)")
    print(f"{'op':60s} {'evaclip':>16s} {'open_clip':>16s}")
    for k in keys[:rows]:
        cells = [f"{per_op[m].get(k, 0):8.0f} ({per_op[m].get(k, 0) / totals[m]:5.1%})" for m in per_op]
        print(f"{k[:60]:60s} {cells[0]:>16s} {cells[1]:>16s}")
    for m in per_op:
        mm = sum(v for k, v in per_op[m].items() if k in MATMUL_OPS)
        print(f"{m}: total {totals[m]:.0f} ms/step, matmul/attention/conv ops {mm:.0f} ms ({mm / totals[m]:.1%}); "
              f"the rest is elementwise, reductions, copies and the optimizer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="evaclip-small")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (evaclip, open_clip, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="profile both steps (torch.profiler) instead")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (inductor)")
    args = parser.parse_args()
    if args.profile:
        profile(args.model, args.batch, args.threads)
    else:
        run(args.model, args.batch, args.repeats, args.rounds, args.threads, compile_models=args.compile)


if __name__ == "__main__":
    main()
