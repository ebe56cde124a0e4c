"""Manual GPU check of the eval harness (not collected by pytest): run on a CUDA machine with
``python tests/eval/gpu_check.py``. Prints timings / memory and fails loudly on a mismatch.

1. retrieval recall at the paper's COCO size (5k images x 25k captions) in chunks: peak GPU memory and time,
   and agreement with a one-shot full-matrix ``topk`` computation;
2. mean per-class recall against scikit-learn's ``balanced_accuracy_score`` (when installed);
3. zero-shot classification of evaclip-tiny on CUDA with bf16 autocast vs fp32 on the CPU.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from evaclip.eval.metrics import mean_per_class_recall, retrieval_recall  # noqa: E402


def full_matrix_recall(img, txt, owner, k):
    scores = img @ txt.T  # [I, T], all at once
    t2i = (scores.T.topk(k, dim=1).indices == owner[:, None]).any(1).float().mean().item()
    top_txt = scores.topk(k, dim=1).indices  # [I, k]
    i2t = (owner[top_txt] == torch.arange(img.shape[0], device=img.device)[:, None]).any(1).float().mean().item()
    return t2i, i2t


def check_retrieval(device):
    g = torch.Generator(device=device).manual_seed(0)
    n_img, per, dim = 5000, 5, 1024
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, device=device, generator=g), dim=-1)
    owner = torch.arange(n_img, device=device).repeat_interleave(per)
    txt = torch.nn.functional.normalize(img[owner] + 0.3 * torch.randn(n_img * per, dim, device=device, generator=g), dim=-1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    r = retrieval_recall(img, txt, owner, ks=(1, 5, 10), chunk_size=256)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    print(f"retrieval 5k x 25k: {dt:.2f}s, extra peak GPU memory {peak:.2f} GiB, {r}")
    for k in (1, 5, 10):
        t2i, i2t = full_matrix_recall(img, txt, owner, k)
        assert abs(t2i - r[f"image_retrieval_recall@{k}"]) < 1e-3, (k, t2i, r)
        assert abs(i2t - r[f"text_retrieval_recall@{k}"]) < 1e-3, (k, i2t, r)
    print("retrieval agrees with the full-matrix topk reference")
    assert peak < 4, "chunked retrieval should need only a few GiB"


def check_sklearn():
    try:
        from sklearn.metrics import balanced_accuracy_score
    except ImportError:
        print("scikit-learn not installed: skipped")
        return
    rng = np.random.default_rng(0)
    for _ in range(20):
        t, p = rng.integers(0, 12, 500), rng.integers(0, 14, 500)
        ours, ref = mean_per_class_recall(p, t), balanced_accuracy_score(t, p)
        assert abs(ours - ref) < 1e-12, (ours, ref)
    print("mean_per_class_recall == sklearn balanced_accuracy_score on 20 random cases")


def check_zeroshot_cuda(tmp: Path):
    import evaclip
    from eval_helpers import shapes
    from evaclip.eval.catalog import default_templates
    from evaclip.eval.datasets import load_classification
    from evaclip.eval.features import encode_image_batches, image_loader
    from evaclip.eval.zeroshot import evaluate_zeroshot_classification
    from evaclip.transforms import image_transform

    for i, (y, im) in enumerate(shapes(20)):
        (tmp / ("red", "green", "blue")[y]).mkdir(parents=True, exist_ok=True)
        im.save(tmp / ("red", "green", "blue")[y] / f"{i}.png")
    model = evaclip.create_model("evaclip-tiny").eval()
    tok = evaclip.get_tokenizer("evaclip-tiny")
    data = load_classification(tmp, image_transform(model.visual.image_size, False, resize_mode="squash"))
    templates = default_templates("cifar10")
    f_cpu, _ = encode_image_batches(model, image_loader(data.dataset, 16, 2))
    cpu = evaluate_zeroshot_classification(model, tok, image_loader(data.dataset, 16, 2), data.classnames, templates)
    model = model.cuda()
    f_gpu, _ = encode_image_batches(model, image_loader(data.dataset, 16, 2), device="cuda", amp=True)
    gpu = evaluate_zeroshot_classification(model, tok, image_loader(data.dataset, 16, 2), data.classnames,
                                           templates, device="cuda", amp=True)
    cos = (f_cpu * f_gpu).sum(-1)
    print(f"zero-shot evaclip-tiny: cpu fp32 {cpu}, cuda bf16 {gpu}; feature cosine min {cos.min():.5f}")
    assert cos.min() > 0.99, "bf16 autocast features should match fp32 closely"
    assert abs(cpu["acc1"] - gpu["acc1"]) <= 3 / 60 + 1e-9, "bf16 should change at most a few predictions"


if __name__ == "__main__":
    import tempfile
    assert torch.cuda.is_available(), "needs a CUDA device"
    check_retrieval("cuda")
    check_sklearn()
    with tempfile.TemporaryDirectory() as d:
        check_zeroshot_cuda(Path(d))
    print("GPU CHECK OK")
