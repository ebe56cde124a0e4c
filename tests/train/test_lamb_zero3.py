"""LAMB's trust ratio per ZeRO-3 flat partition (optim.trust_ratio=zero3), the rule of the official runs
(docs/lamb_under_sharding.md), against a naive restatement written one rank and one slice at a time."""

import math

import pytest
import torch
from torch import nn

from evaclip.errors import ConfigError
from evaclip.train.config import apply_overrides
from evaclip.train.optim import Lamb, OptimConfig
from evaclip.train.recipes import get_recipe


def naive_zero3_lamb(groups, grads_per_step, W, lr, betas, eps, lo=0.01, hi=10.0):
    """What FusedLamb does on rank r's flat partition, for every r: DeepSpeed's Init._partition_param gives
    rank r elements [r*c, (r+1)*c) of each tensor (c = ceil(n / W)); one ratio covers the rank's partition."""
    b1, b2 = betas
    groups = [{"params": [p.clone() for p in g["params"]], "wd": g["weight_decay"]} for g in groups]
    m = [[torch.zeros_like(p) for p in g["params"]] for g in groups]
    v = [[torch.zeros_like(p) for p in g["params"]] for g in groups]
    k = 0
    for t, grads in enumerate(grads_per_step, start=1):
        k = 0
        for gi, g in enumerate(groups):
            updates = []
            for i, p in enumerate(g["params"]):
                gr = grads[k]
                k += 1
                m[gi][i] = b1 * m[gi][i] + (1 - b1) * gr
                v[gi][i] = b2 * v[gi][i] + (1 - b2) * gr * gr
                updates.append(m[gi][i] / (v[gi][i].sqrt() + eps) + g["wd"] * p)
            new = [p.clone().reshape(-1) for p in g["params"]]
            for r in range(W):
                w2 = u2 = 0.0
                for p, u in zip(g["params"], updates):
                    c = math.ceil(p.numel() / W)
                    w2 += float((p.reshape(-1)[r * c:(r + 1) * c] ** 2).sum())
                    u2 += float((u.reshape(-1)[r * c:(r + 1) * c] ** 2).sum())
                w_norm, u_norm = math.sqrt(w2), math.sqrt(u2)
                trust = min(max(w_norm / u_norm, lo), hi) if w_norm > 0 and u_norm > 0 else 1.0
                step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                for j, (p, u) in enumerate(zip(g["params"], updates)):
                    c = math.ceil(p.numel() / W)
                    new[j][r * c:(r + 1) * c] -= step_size * trust * u.reshape(-1)[r * c:(r + 1) * c]
            g["params"] = [n.view_as(p) for n, p in zip(new, g["params"])]
    return [p for g in groups for p in g["params"]]


def _problem(seed=0, steps=4):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    # A decay group of matrices of unequal scale and a no_decay group of a norm weight, small biases and a
    # zero tensor (sizes below, at and above W, not multiples of it).
    decay = [rnd(7, 5), 0.3 * rnd(4, 6), rnd(11)]
    no_decay = [1.0 + 0.1 * rnd(5), 1e-3 * rnd(3), torch.zeros(2, dtype=torch.float64), 1e-2 * rnd(13)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    flat = decay + no_decay
    grads = [[rnd(*p.shape) for p in flat] for _ in range(steps)]
    return groups, grads


def run(groups, grads_per_step, **kw):
    leaves = [{"params": [nn.Parameter(p.clone()) for p in g["params"]], "weight_decay": g["weight_decay"]}
              for g in groups]
    opt = Lamb(leaves, **kw)
    params = [p for g in leaves for p in g["params"]]
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


KW = dict(lr=0.02, betas=(0.9, 0.95), eps=1e-6)


@pytest.mark.parametrize("W", [1, 3, 8, 20])
def test_zero3_matches_the_naive_per_rank_restatement(W):
    groups, grads = _problem()
    got = run(groups, grads, trust_ratio="zero3", trust_partitions=W, **KW)
    want = naive_zero3_lamb(groups, grads, W, **KW)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    # the rule matters here: per tensor, the small biases would move much less
    per_tensor = run(groups, grads, **KW)
    assert not torch.allclose(per_tensor[4], got[4], rtol=1e-3)


def test_zero3_with_one_partition_and_one_tensor_per_group_is_the_per_tensor_rule():
    groups, grads = _problem(seed=1)
    singles = [{"params": [p], "weight_decay": g["weight_decay"]} for g in groups for p in g["params"]]
    zero3 = run(singles, grads, trust_ratio="zero3", trust_partitions=1, **KW)
    tensor = run(singles, grads, trust_ratio="tensor", **KW)
    for a, b in zip(zero3, tensor):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_trust_ratio_options_from_the_command_line():
    cfg = apply_overrides(get_recipe("tiny"), ["optim.trust_ratio=zero3", "optim.trust_partitions=360"])
    assert (cfg.optim.trust_ratio, cfg.optim.trust_partitions) == ("zero3", 360)
    assert get_recipe("eva-clip-18b").optim.trust_ratio == "tensor"  # the default stays the LAMB paper's rule
    for bad, match in ((["optim.trust_ratio=zero2"], "trust_ratio must be one of"),
                       (["optim.trust_partitions=0"], "trust_partitions must be an integer >= 1"),
                       (["optim.trust_ratio=zero3", "optim.name=adamw"], "is a LAMB rule")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(get_recipe("tiny"), bad)
    with pytest.raises(ConfigError):
        OptimConfig(trust_partitions=True)


def _load_worker(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "workers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"evaclip_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero3_on_fsdp2_shards_matches_one_process(tmp_path):
    # 2 ranks hold rows of each tensor; the 3 ZeRO-3 slices cut across them: the sums must be all-reduced.
    worker = _load_worker("fsdp_lamb_worker")
    _load_worker("torchrun").run_torchrun(worker.__file__, str(tmp_path / "fsdp.pt"), "zero3", nproc=2)
    sharded = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    model, start = worker.make_model(), worker.make_model()
    worker.train(model, rank=0, world_size=1, trust_ratio="zero3")
    for name, p in model.named_parameters():
        assert not torch.allclose(p, dict(start.named_parameters())[name])
        torch.testing.assert_close(sharded[name], p.detach(), msg=name)
    # the rule took effect: the per-tensor rule on the same batches ends elsewhere
    other = worker.make_model()
    worker.train(other, rank=0, world_size=1)
    assert any(not torch.allclose(a, b) for a, b in zip(other.parameters(), model.parameters()))
