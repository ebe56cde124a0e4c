"""Inference throughput: ``encode_image`` / ``encode_text`` of evaclip vs open_clip's model code.

Same models as benchmarks/train_step.py (open_clip_torch 3.3.0's ``CLIP`` loaded by file path, see
benchmarks/common.py), in ``eval()`` mode under ``torch.inference_mode()``, fp32, ``--threads`` threads.
MFU = forward FLOPs of the tower per item (``evaclip.models.flops.model_flops``) x items/s / the fp32 matmul
ceiling measured in the same run. Medians over repeats; the two models alternate in rounds.

    .venv/bin/python benchmarks/inference.py [--model evaclip-small] [--batch 256] [--repeats 5] [--compile]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (Timing, machine_line, matmul_ceiling, median, merge_ceilings,  # noqa: E402
                               random_batch, set_threads, time_repeats)
from benchmarks.train_step import build_pair  # noqa: E402
from evaclip.models.factory import get_model_config  # noqa: E402
from evaclip.models.flops import model_flops  # noqa: E402


def run(name: str, batch_size: int, repeats: int, rounds: int, threads: int, verbose: bool = True,
        compile_models: bool = False) -> dict:
    set_threads(threads)
    cfg = get_model_config(name)
    models = dict(zip(("evaclip", "open_clip"), build_pair(name)))
    for m in models.values():
        m.eval()
    grad_off = torch.inference_mode
    if compile_models:  # both; freezing lets inductor fold weights and fuse linear + bias + GELU (oneDNN)
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
        for m in models.values():
            m.encode_image = torch.compile(m.encode_image)
            m.encode_text = torch.compile(m.encode_text)
        grad_off = torch.no_grad  # freezing traces under no_grad
    batch = random_batch(cfg, batch_size)
    flops = model_flops(cfg)
    per_item = {"image": flops.vision, "text": flops.text}
    ceilings = [matmul_ceiling()]
    times: dict[tuple[str, str], Timing] = {}
    with grad_off():
        for r in range(rounds):
            for label, model in models.items():
                for tower, fn in (("image", lambda m=model: m.encode_image(batch.images)),
                                  ("text", lambda m=model: m.encode_text(batch.tokens))):
                    times.setdefault((label, tower), Timing()).extend(
                        time_repeats(fn, repeats, warmup=1 if r == 0 else 0))
                ceilings.append(matmul_ceiling(seconds=0.3))
    ceiling = merge_ceilings(ceilings)
    out: dict = {"model": name, "batch": batch_size, "ceiling": ceiling}
    for (label, tower), t in times.items():
        rate, cpu_rate = batch_size / median(t.wall), batch_size / median(t.cpu)
        out[f"{label}.{tower}"] = {"items_per_s": rate, "mfu": rate * per_item[tower] / ceiling.per_wall_s,
                                   "items_per_cpu_s": cpu_rate,
                                   "mfu_cpu": cpu_rate * per_item[tower] / ceiling.per_cpu_s}
    for tower in ("image", "text"):
        ours, ref = out[f"evaclip.{tower}"], out[f"open_clip.{tower}"]
        out[f"ratio.{tower}"] = ours["items_per_s"] / ref["items_per_s"]
        out[f"ratio_cpu.{tower}"] = ours["items_per_cpu_s"] / ref["items_per_cpu_s"]
    if verbose:
        print(f"{name}: batch {batch_size}, fp32 inference{', torch.compile + freezing (both)' if compile_models else ''}, "
              f"{machine_line()}")
        walls = ", ".join(f"{c.per_wall_s / 1e9:.0f}" for c in ceilings)
        print(f"  matmul ceiling {ceiling.per_wall_s / 1e9:.1f} GFLOP/s wall (median of {walls}); "
              f"{ceiling.per_cpu_s / 1e9:.1f} GFLOP per CPU-second")
        print(f"  forward GFLOP per image {per_item['image'] / 1e9:.3f}, per text {per_item['text'] / 1e9:.3f}")
        for tower in ("image", "text"):
            for label in models:
                r = out[f"{label}.{tower}"]
                print(f"  encode_{tower:5s} {label:9s}: {r['items_per_s']:8.1f} /s  MFU {r['mfu']:.3f} | "
                      f"{r['items_per_cpu_s']:8.1f} /CPU-s  MFU(cpu) {r['mfu_cpu']:.3f}")
            print(f"  encode_{tower:5s} ratio evaclip / open_clip: {out[f'ratio.{tower}']:.3f}x wall, "
                  f"{out[f'ratio_cpu.{tower}']:.3f}x CPU time")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="evaclip-small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (inductor, freezing)")
    args = parser.parse_args()
    run(args.model, args.batch, args.repeats, args.rounds, args.threads, compile_models=args.compile)


if __name__ == "__main__":
    main()
