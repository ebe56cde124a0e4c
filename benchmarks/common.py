"""Shared pieces of the benchmark scripts: timing, the matmul ceiling, and the open_clip reference.

The reference is open_clip_torch 3.3.0's own model code (``open_clip/model.py`` + ``transformer.py`` and the
helper modules they import), loaded from the installed wheel by file path as a private package
(``_openclip_ref``) so that ``open_clip/__init__.py``, which imports torchvision, is never executed. The only
stub is ``torchvision.ops.misc.FrozenBatchNorm2d`` (an empty class): ``open_clip/utils.py`` imports it at module
level for its ResNet batch-norm freezing helper, which a ViT CLIP never calls. When torchvision is installed
the real one is used and nothing is stubbed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from evaclip.models.config import CLIPConfig

_REF_PACKAGE = "_openclip_ref"


# ---- timing --------------------------------------------------------------------------------------------------
def set_threads(n: int) -> None:
    """Pin intra-op threads (and the BLAS pools) so evaclip and the reference run on equal terms."""
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Per-call wall seconds and process CPU seconds (all threads) of a timed function."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def extend(self, other: "Timing") -> None:
        self.wall += other.wall
        self.cpu += other.cpu


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1,
                 device: torch.device = torch.device("cpu")) -> Timing:
    """Wall and CPU seconds of ``fn()`` for each of ``repeats`` calls, after ``warmup`` untimed calls.

    CPU time is what makes figures comparable on a shared machine: while other processes hold the cores,
    wall time grows but this process's CPU time does not (the scripts set ``OMP_WAIT_POLICY=PASSIVE``
    before importing torch, so idle OpenMP threads sleep instead of spinning), so work per CPU-second is
    a rate that does not depend on the machine's load.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    out = Timing()
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        out.wall.append(time.perf_counter() - start)
        out.cpu.append(time.process_time() - cpu)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# One implementation of the MFU denominator for the trainer and the benchmarks.
from evaclip.train.metrics import Ceiling  # noqa: E402
from evaclip.train.metrics import matmul_ceiling as _matmul_ceiling  # noqa: E402


def matmul_ceiling(device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                   n: int = 1024, seconds: float = 0.5, repeats: int = 3) -> Ceiling:
    """The trainer's matmul ceiling, with the benchmarks' longer default measurement (median of 3 x 0.5 s)."""
    return _matmul_ceiling(device, dtype, n, seconds, repeats)


def merge_ceilings(cs: list[Ceiling]) -> Ceiling:
    return Ceiling(median([c.per_wall_s for c in cs]), median([c.per_cpu_s for c in cs]))


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}, "
            f"{os.cpu_count()} logical CPUs, load avg {os.getloadavg()[0]:.2f}")


# ---- the open_clip reference ---------------------------------------------------------------------------------
def _open_clip_dir() -> str:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip_torch is not installed: pip install --no-deps open_clip_torch==3.3.0")
    return list(spec.submodule_search_locations)[0]


def load_open_clip_model_module() -> types.ModuleType:
    """``open_clip/model.py`` imported without ``open_clip/__init__.py`` (see the module docstring)."""
    if f"{_REF_PACKAGE}.model" in sys.modules:
        return sys.modules[f"{_REF_PACKAGE}.model"]
    if importlib.util.find_spec("transformers") is not None:
        # open_clip/hf_model.py imports transformers, which probes for torchvision at import time: import it
        # while the stub below is not yet in place, so the probe sees the truth (no torchvision).
        import transformers  # noqa: F401
    if importlib.util.find_spec("torchvision") is None and "torchvision.ops.misc" not in sys.modules:
        tv, ops, misc = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc"))

        class FrozenBatchNorm2d(nn.Module):  # never instantiated by a ViT CLIP
            pass

        misc.FrozenBatchNorm2d = FrozenBatchNorm2d
        tv.ops, ops.misc = ops, misc
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.misc": misc})
    package = types.ModuleType(_REF_PACKAGE)
    package.__path__ = [_open_clip_dir()]  # submodules resolve to the wheel's files; __init__ is never run
    sys.modules[_REF_PACKAGE] = package
    try:
        return importlib.import_module(f"{_REF_PACKAGE}.model")
    finally:
        # Leave no fake torchvision behind for other imports in this process.
        for name in ("torchvision.ops.misc", "torchvision.ops", "torchvision"):
            if name in sys.modules and not hasattr(sys.modules[name], "__file__"):
                del sys.modules[name]


def open_clip_model(cfg: CLIPConfig) -> nn.Module:
    """open_clip's ``CLIP`` with the same widths, depths, heads, patch, image size, context and embed dim.

    Features evaclip has and open_clip's ViT lacks (RoPE, SwiGLU, sub-LN, q/v bias) are not reproduced: for
    the ``evaclip-small`` config (plain pre-LN ViT, GELU MLP) the two models have the same matrices and the
    same FLOPs; for configs using them, the reference is the plain ViT of the same shape.
    """
    oc = load_open_clip_model_module()
    v, t = cfg.vision_cfg, cfg.text_cfg
    vision = oc.CLIPVisionCfg(layers=v.layers, width=v.width, head_width=v.head_width, mlp_ratio=v.mlp_ratio,
                              patch_size=v.patch_size, image_size=v.image_size)
    text = oc.CLIPTextCfg(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                          heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio)
    return oc.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision, text_cfg=text)


# ---- inputs and FLOPs ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    images: torch.Tensor
    tokens: torch.Tensor


def random_batch(cfg: CLIPConfig, batch: int, device: torch.device = torch.device("cpu"),
                 seed: int = 0) -> Batch:
    """Random images and CLIP-like token rows (SOT, words, EOT at a random length, zero padding)."""
    g = torch.Generator().manual_seed(seed)
    size, ctx = cfg.vision_cfg.image_size, cfg.text_cfg.context_length
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = torch.zeros(batch, ctx, dtype=torch.long)
    lengths = torch.randint(3, ctx + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = 49406
        tokens[i, 1:n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
        tokens[i, n - 1] = 49407
    return Batch(images.to(device), tokens.to(device))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fmt_rate(x: float) -> str:
    return f"{x / 1e9:.1f} GFLOP/s" if x < 1e12 else f"{x / 1e12:.1f} TFLOP/s"
