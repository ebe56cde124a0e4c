"""bf16 MFU of a ViT-g-size EVA-CLIP training step under FSDP2 on one GPU.

The model is EVA01-CLIP-g-14 (vision: width 1408, 40 layers, 16 heads, MLP 6144, patch 14 at 224 px; text:
width 768, 12 layers, context 77; 1.14B parameters), built on the meta device and initialised on the GPU.
It is wrapped exactly as the trainer wraps it (``evaclip.models.parallel.apply_fsdp``: one FSDP2 unit per
block + the root, bf16 compute, fp32 master weights and gradient reduction) on a one-rank NCCL process group.
One step = forward of both towers -> InfoNCE -> backward -> grad-norm clip -> AdamW (foreach) -> zero_grad.

MFU = (3 x forward FLOPs per pair, ``evaclip.models.flops.model_flops``) x samples/s / ceiling, where the
ceiling is the median sustained bf16 FLOP/s of a square matmul (8192^3) measured in the same run. Step times
are per-step CUDA-synchronised wall times; the median is reported.

    python benchmarks/gpu_mfu.py                     # on a CUDA machine (PYTHONPATH=. if evaclip is not installed)
    python benchmarks/gpu_mfu.py --tiny              # CPU smoke run: evaclip-tiny, gloo, a few steps
    python benchmarks/gpu_mfu.py --batch 128 256 --compile   # also per-block torch.compile (guarded)
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evaclip.models.factory import create_model, get_model_config  # noqa: E402
from evaclip.models.flops import model_flops  # noqa: E402
from evaclip.train.loss import ClipLoss  # noqa: E402
from evaclip.models.parallel import FSDPConfig, apply_fsdp  # noqa: E402

START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def rate(flop_per_s: float) -> str:
    return f"{flop_per_s / 1e12:.1f} TFLOP/s" if flop_per_s >= 1e12 else f"{flop_per_s / 1e9:.2f} GFLOP/s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 0.5,
                   repeats: int = 3) -> float:
    """FLOP per second of an n x n matmul in ``dtype`` (median of ``repeats``): the MFU denominator."""
    from evaclip.train.metrics import matmul_ceiling as ceiling
    return ceiling(device, dtype, n, seconds, repeats).per_wall_s


def build(name: str, device: torch.device, param_dtype: str, compile_blocks: bool):
    model = create_model(name, device="meta")
    model.to_empty(device=device)
    torch.manual_seed(0)
    model.init_weights()  # the real init, on the device (fast even for 1B parameters)
    model.train()
    if compile_blocks:
        # torchtitan's recipe: compile each block, then shard the compiled modules. Identical blocks share
        # one compiled graph (parameters are graph inputs), except that dynamo specialises on each block's
        # drop-path rate (a Python float that grows with depth): allow one graph per block, or blocks past
        # the 8th would silently run eagerly (what the first H200 run showed).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(model.visual.blocks))
        for blocks in (model.visual.blocks, model.text.transformer.resblocks):
            for i in range(len(blocks)):
                blocks[i] = torch.compile(blocks[i])
    apply_fsdp(model, cfg=FSDPConfig(param_dtype=param_dtype, reduce_dtype="fp32"))
    return model


def make_batch(name: str, batch: int, device: torch.device):
    cfg = get_model_config(name)
    size, ctx = cfg.vision_cfg.image_size, cfg.text_cfg.context_length
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.randint(1, 49000, (batch, ctx), generator=g)
    tokens[:, 0] = 49406
    tokens[:, -1] = 49407  # full-length captions: the FLOP count assumes the whole context
    return images.to(device), tokens.to(device)


def time_steps(model, images, tokens, warmup: int, steps: int, device: torch.device) -> list[float]:
    loss_fn = ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, foreach=True)

    def step():
        image_features, text_features, scale = model(images, tokens)
        loss = loss_fn(image_features, text_features, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: EVA01-CLIP-g-14 (evaclip-tiny with --tiny)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="per-GPU batch sizes to try")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run with evaclip-tiny")
    parser.add_argument("--compile", action="store_true", help="then also time per-block torch.compile")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip later phases once this much wall time has passed")
    args = parser.parse_args()

    log(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}, python {sys.version.split()[0]}")
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    name = args.model or ("EVA01-CLIP-g-14" if cuda else "evaclip-tiny")
    batches = args.batch or ([128, 192] if cuda else [4])
    if cuda:
        torch.cuda.set_device(device)
        log(f"device {torch.cuda.get_device_name(device)}, "
            f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB")
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (loss, optimizer) may use TF32
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)

    n = 8192 if cuda else 512
    ceiling = matmul_ceiling(device, torch.bfloat16, n)
    ceiling_fp32 = matmul_ceiling(device, torch.float32, n) if not cuda else None
    log(f"bf16 matmul ceiling ({n}^3): {rate(ceiling)}")
    if ceiling_fp32:
        log(f"  (fp32 ceiling on this CPU {ceiling_fp32 / 1e9:.1f} GFLOP/s; CPU bf16 has no fast path)")

    cfg = get_model_config(name)
    flops = 3 * model_flops(cfg).forward
    phases = [("eager", False)] + ([("compiled blocks", True)] if args.compile else [])
    for phase, compile_blocks in phases:
        if time.perf_counter() - START > args.budget_s:
            log(f"skipping phase {phase!r}: over the {args.budget_s:.0f}s budget")
            break
        model = build(name, device, "bf16", compile_blocks)
        params = sum(p.numel() for p in model.parameters())
        log(f"{phase}: {name}, {params / 1e9:.3f}B params, {flops / 1e9:.1f} GFLOP per training pair (3x fwd), "
            f"FSDP2 1 rank, bf16 params / fp32 reduce")
        for b in batches:
            if time.perf_counter() - START > args.budget_s:
                log(f"  skipping batch {b}: over budget")
                break
            try:
                images, tokens = make_batch(name, b, device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                times = time_steps(model, images, tokens, args.warmup, args.steps, device)
            except torch.OutOfMemoryError:
                log(f"  batch {b}: out of memory")
                torch.cuda.empty_cache()
                break
            except Exception as e:  # a failing optional phase (e.g. compile) must not lose the others
                log(f"  batch {b}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                break
            step = statistics.median(times)
            achieved = flops * b / step
            mem = f", peak mem {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if cuda else ""
            log(f"  batch {b}: step {step * 1e3:.1f} ms (median of {len(times)}; min {min(times) * 1e3:.1f}), "
                f"{b / step:.1f} samples/s, {rate(achieved)}, MFU {achieved / ceiling:.3f}{mem}")
        del model
        if cuda:
            torch.cuda.empty_cache()
    dist.destroy_process_group()
    log("done")


if __name__ == "__main__":
    main()
