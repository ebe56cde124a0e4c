"""LAMB against a naive per-tensor reimplementation, and the official parameter-group rule."""

import math
import re

import pytest
import torch
from torch import nn

from evaclip.errors import ConfigError
from evaclip.train.optim import Lamb, OptimConfig, build_optimizer, param_groups


def naive_lamb(params, grads_per_step, lr, betas, eps, wd, lo=0.01, hi=10.0):
    """DeepSpeed FusedLamb's rule, one tensor and one element formula at a time."""
    b1, b2 = betas
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = m[i] / (v[i].sqrt() + eps) + wd * p
            w_norm, u_norm = p.pow(2).sum().sqrt().item(), u.pow(2).sum().sqrt().item()
            trust = min(max(w_norm / u_norm, lo), hi) if w_norm > 0 and u_norm > 0 else 1.0
            step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            params[i] = p - step_size * trust * u
    return params


def run_lamb(params, grads_per_step, **kw):
    leaves = [nn.Parameter(p.clone()) for p in params]
    opt = Lamb(leaves, **kw)
    for grads in grads_per_step:
        for p, g in zip(leaves, grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in leaves], opt


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(5, generator=g, dtype=torch.float64),
        torch.zeros(3, 2, dtype=torch.float64),  # zero norm: trust ratio must fall back to 1
        torch.randn(2, 2, generator=g, dtype=torch.float64),
    ]
    steps = []
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        grads[3] = torch.zeros_like(params[3])  # zero update when wd == 0: trust ratio 1, no move
        steps.append(grads)
    return params, steps


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lamb_matches_naive_over_several_steps(wd: float) -> None:
    params, steps = _problem()
    kw = dict(lr=0.05, betas=(0.9, 0.95), eps=1e-6, weight_decay=wd)
    got, _ = run_lamb(params, steps, **kw)
    want = naive_lamb(params, steps, kw["lr"], kw["betas"], kw["eps"], wd)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert not torch.equal(got[0], params[0])
    assert torch.count_nonzero(got[2]) > 0  # the zero tensor moved (trust 1, not 0/0)
    if wd == 0.0:
        torch.testing.assert_close(got[3], params[3])


def test_lamb_first_step_closed_form() -> None:
    # Step 1, wd 0: m = (1-b1) g, v = (1-b2) g^2, so u = (1-b1)/sqrt(1-b2) * sign(g) (eps ~ 0), the trust
    # ratio is |w| / |u| and the step size lr * sqrt(1-b2) / (1-b1): w -= lr * |w| / sqrt(n) * sign(g).
    w = torch.tensor([3.0, -4.0, 0.0, 12.0], dtype=torch.float64)  # |w| = 13
    g = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    (got,), _ = run_lamb([w], [[g]], lr=0.1, betas=(0.9, 0.99), eps=1e-12)
    torch.testing.assert_close(got, w - 0.1 * 13.0 / 2.0 * g.sign())


@pytest.mark.parametrize("w_scale,expected_trust", [(1e4, 10.0), (1e-5, 0.01)])
def test_lamb_trust_ratio_is_clamped(w_scale: float, expected_trust: float) -> None:
    g = torch.Generator().manual_seed(3)
    w = w_scale * torch.randn(6, generator=g, dtype=torch.float64)
    grad = torch.randn(6, generator=g, dtype=torch.float64)
    lr, betas, eps = 1e-3, (0.9, 0.95), 1e-8
    u = (1 - betas[0]) * grad / ((1 - betas[1]) ** 0.5 * grad.abs() + eps)
    raw = (w.norm() / u.norm()).item()
    assert raw > 10 if expected_trust == 10.0 else raw < 0.01  # the clamp is really hit
    (got,), _ = run_lamb([w], [[grad]], lr=lr, betas=betas, eps=eps)
    step_size = lr * (1 - betas[1]) ** 0.5 / (1 - betas[0])
    torch.testing.assert_close(got, w - step_size * expected_trust * u)
    torch.testing.assert_close(got, naive_lamb([w], [[grad]], lr, betas, eps, 0.0)[0])


def test_lamb_state_dict_resume_is_exact() -> None:
    params, steps = _problem(seed=5)
    kw = dict(lr=0.02, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.05)
    straight, _ = run_lamb(params, steps, **kw)
    half, opt = run_lamb(params, steps[:2], **kw)
    leaves = [nn.Parameter(p.clone()) for p in half]
    resumed = Lamb(leaves, **kw)
    resumed.load_state_dict(opt.state_dict())
    for grads in steps[2:]:
        for p, gr in zip(leaves, grads):
            p.grad = gr.clone()
        resumed.step()
    for a, b in zip(leaves, straight):
        torch.testing.assert_close(a.detach(), b)


def test_lamb_skips_params_without_grad_and_rejects_bad_trust_bounds() -> None:
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = Lamb([p, q], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(3)) and not torch.equal(p.detach(), torch.ones(3))
    assert q not in opt.state
    with pytest.raises(ConfigError):
        Lamb([p], min_trust=1.0, max_trust=0.5)


# ---- parameter groups ------------------------------------------------------------------------------


class StandInTower(nn.Module):
    """Follows the tower interface of COMMON.md: num_layers, layer_id(name), no_weight_decay()."""

    def __init__(self, kind: str, layers: int = 2, width: int = 8) -> None:
        super().__init__()
        self.kind, self.num_layers = kind, layers
        if kind == "visual":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, width))
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(3, width, 4, 4)
            block = lambda: nn.ModuleDict({"norm1": nn.LayerNorm(width), "fc1": nn.Linear(width, width)})  # noqa: E731
            self.blocks = nn.ModuleList(block() for _ in range(layers))
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, 4, bias=False)
        else:
            self.token_embedding = nn.Embedding(10, width)
            self.positional_embedding = nn.Parameter(torch.zeros(6, width))
            self.transformer = nn.Module()
            block = lambda: nn.ModuleDict({"ln_1": nn.LayerNorm(width), "c_fc": nn.Linear(width, width)})  # noqa: E731
            self.transformer.resblocks = nn.ModuleList(block() for _ in range(layers))
            self.ln_final = nn.LayerNorm(width)
            self.text_projection = nn.Parameter(torch.zeros(width, 4))

    def layer_id(self, name: str) -> int:
        if name.split(".")[0] in {"cls_token", "pos_embed", "patch_embed", "token_embedding", "positional_embedding"}:
            return 0
        match = re.match(r"(?:blocks|transformer\.resblocks)\.(\d+)\.", name)
        return int(match.group(1)) + 1 if match else self.num_layers + 1

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"} if self.kind == "visual" else {"positional_embedding"}


class StandInCLIP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual, self.text = StandInTower("visual"), StandInTower("text")
        self.logit_scale = nn.Parameter(torch.ones(1) * math.log(1 / 0.07))


CFG = OptimConfig(name="lamb", lr=5e-4, visual_lr=4e-4, text_lr=4e-5, weight_decay=0.05, visual_ld=0.9, text_ld=0.75)


def _by_param(groups: list[dict]) -> dict[str, dict]:
    return {n: g for g in groups for n in g["param_names"]}


def test_param_groups_hand_checked_scales_and_decay() -> None:
    model = StandInCLIP()
    groups = param_groups(model, CFG)
    where = _by_param(groups)
    # name -> (tower, lr_scale, decayed); L = 2 for both towers, scale = ld ** (3 - layer_id)
    expected = {
        "visual.cls_token": ("visual", 0.9**3, False),
        "visual.pos_embed": ("visual", 0.9**3, False),
        "visual.patch_embed.proj.weight": ("visual", 0.9**3, True),
        "visual.patch_embed.proj.bias": ("visual", 0.9**3, False),
        "visual.blocks.0.fc1.weight": ("visual", 0.9**2, True),
        "visual.blocks.0.norm1.weight": ("visual", 0.9**2, False),
        "visual.blocks.1.fc1.bias": ("visual", 0.9, False),
        "visual.norm.weight": ("visual", 1.0, False),
        "visual.head.weight": ("visual", 1.0, True),
        "text.token_embedding.weight": ("text", 0.75**3, True),
        "text.positional_embedding": ("text", 0.75**3, False),
        "text.transformer.resblocks.1.c_fc.weight": ("text", 0.75, True),
        "text.ln_final.bias": ("text", 1.0, False),
        "text.text_projection": ("text", 1.0, True),
        "logit_scale": ("other", 1.0, False),
    }
    peak = {"visual": 4e-4, "text": 4e-5, "other": 5e-4}
    for name, (tower, scale, decayed) in expected.items():
        g = where[name]
        assert g["tower"] == tower, name
        assert g["lr_scale"] == pytest.approx(scale), name
        assert g["weight_decay"] == (0.05 if decayed else 0.0), name
        assert g["base_lr"] == peak[tower] and g["lr"] == pytest.approx(peak[tower] * scale), name
    assert where["visual.blocks.1.fc1.bias"]["name"] == "visual.layer2.no_decay"
    # every trainable parameter sits in exactly one group, by identity too
    all_names = [n for g in groups for n in g["param_names"]]
    assert sorted(all_names) == sorted(n for n, _ in model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len({id(p) for g in groups for p in g["params"]})
    for g in groups:
        params = dict(model.named_parameters())
        assert all(p is params[n] for p, n in zip(g["params"], g["param_names"]))


def test_param_groups_skip_frozen_and_no_layer_decay_at_one() -> None:
    model = StandInCLIP()
    model.visual.head.weight.requires_grad_(False)
    cfg = OptimConfig(lr=1e-3, visual_lr=None, text_lr=None, visual_ld=1.0, text_ld=1.0)
    groups = param_groups(model, cfg)
    assert "visual.head.weight" not in _by_param(groups)
    assert all(g["lr_scale"] == 1.0 and g["base_lr"] == 1e-3 for g in groups)


def test_build_optimizer_weight_decay_reaches_only_decayed_params() -> None:
    for name in ("lamb", "adamw"):
        model = StandInCLIP()
        for p in model.parameters():
            nn.init.normal_(p, std=0.5)
        cfg = OptimConfig(name=name, lr=0.1, visual_lr=0.1, text_lr=0.1, weight_decay=0.5)
        opt = build_optimizer(model, cfg)
        assert isinstance(opt, Lamb if name == "lamb" else torch.optim.AdamW)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # only weight decay can move a parameter
        opt.step()
        after = dict(model.named_parameters())
        assert not torch.equal(after["visual.head.weight"], before["visual.head.weight"]), name
        assert after["text.text_projection"].norm() < before["text.text_projection"].norm(), name
        no_decay = ("visual.pos_embed", "visual.cls_token", "text.positional_embedding", "logit_scale",
                    "visual.norm.weight")
        for n in no_decay:
            assert torch.equal(after[n], before[n]), (name, n)


@pytest.mark.parametrize(
    "kwargs",
    [dict(name="sgd"), dict(visual_ld=0.0), dict(text_ld=1.5), dict(lr=-1.0), dict(betas=(0.9,)), dict(grad_clip=0.0)],
)
def test_optim_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        OptimConfig(**kwargs)


# ---- LAMB on FSDP2 shards ----------------------------------------------------------------------------


def _load_worker(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "workers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"evaclip_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lamb_on_fsdp2_shards_matches_one_process(tmp_path) -> None:
    # Every tensor is split across 2 ranks; the trust ratio must still use whole-tensor norms.
    worker = _load_worker("fsdp_lamb_worker")
    _load_worker("torchrun").run_torchrun(worker.__file__, str(tmp_path / "fsdp.pt"), nproc=2)
    sharded = torch.load(tmp_path / "fsdp.pt", weights_only=True)
    model, start = worker.make_model(), worker.make_model()
    worker.train(model, rank=0, world_size=1)
    for name, p in model.named_parameters():
        assert not torch.allclose(p, dict(start.named_parameters())[name])
        torch.testing.assert_close(sharded[name], p.detach(), msg=name)


# ---- the real model ----------------------------------------------------------------------------------


def test_param_groups_on_evaclip_tiny() -> None:
    import evaclip
    from evaclip.train.schedule import LRSchedule

    model = evaclip.create_model("evaclip-tiny")
    assert model.visual.num_layers == 2 and model.text.num_layers == 2
    model.logit_scale.requires_grad_(False)  # the paper's fixed temperature: not optimised at all
    groups = param_groups(model, CFG)
    where = _by_param(groups)
    expected = {  # name -> (lr_scale, decayed), scale = ld ** (3 - layer_id)
        "visual.cls_token": (0.9**3, False),
        "visual.pos_embed": (0.9**3, False),
        "visual.patch_embed.proj.weight": (0.9**3, True),
        "visual.blocks.0.mlp.w1.weight": (0.9**2, True),
        "visual.blocks.1.attn.q_bias": (0.9, False),
        "visual.blocks.1.attn.proj.bias": (0.9, False),
        "visual.head.weight": (1.0, True),
        "visual.norm.weight": (1.0, False),
        "text.token_embedding.weight": (0.75**3, True),
        "text.positional_embedding": (0.75**3, False),
        "text.transformer.resblocks.0.attn.in_proj_weight": (0.75**2, True),
        "text.transformer.resblocks.1.attn.in_proj_bias": (0.75, False),
        "text.text_projection": (1.0, True),
        "text.ln_final.weight": (1.0, False),
    }
    for name, (scale, decayed) in expected.items():
        assert where[name]["lr_scale"] == pytest.approx(scale), name
        assert where[name]["weight_decay"] == (CFG.weight_decay if decayed else 0.0), name
    assert "logit_scale" not in where
    assert sorted(where) == sorted(n for n, p in model.named_parameters() if p.requires_grad)

    opt = build_optimizer(model, CFG)
    LRSchedule(total_steps=100, warmup_steps=10).apply(opt, 0)
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lr["visual.layer1.decay"] == pytest.approx(4e-4 * 0.81 / 10)
    assert lr["text.layer3.decay"] == pytest.approx(4e-5 / 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_optimizers_on_cuda_match_cpu() -> None:
    params, steps = _problem(seed=7)
    params = [p.float() for p in params]
    steps = [[g.float() for g in grads] for grads in steps]
    kw = dict(lr=0.05, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1)
    cpu, _ = run_lamb(params, steps, **kw)
    cuda, _ = run_lamb([p.cuda() for p in params], [[g.cuda() for g in grads] for grads in steps], **kw)
    for a, b in zip(cuda, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-6)
    # AdamW takes torch's fused CUDA kernel and agrees with the CPU foreach implementation.
    results = []
    for device in ("cpu", "cuda"):
        # Initialise on the CPU, then move: CUDA's generator would draw other numbers from the same seed.
        model = StandInCLIP()
        torch.manual_seed(0)
        for p in model.parameters():
            nn.init.normal_(p)
        model = model.to(device)
        opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1))
        assert opt.defaults["fused"] is (True if device == "cuda" else None)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        results.append({n: p.detach().cpu() for n, p in model.named_parameters()})
    for n in results[0]:
        torch.testing.assert_close(results[1][n], results[0][n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_lamb_resume_through_distributed_checkpoint_is_exact(tmp_path) -> None:
    # The trainer saves optimizer state with torch.distributed.checkpoint; LAMB's state and the extra group
    # keys must survive it so that a resumed run takes exactly the same next step.
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def fresh():
        torch.manual_seed(0)
        model = StandInCLIP()
        return model, build_optimizer(model, CFG)

    def step(model, opt, seed):
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()

    model, opt = fresh()
    step(model, opt, 1)
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp_path / "ckpt")
    resumed, resumed_opt = fresh()
    state = dict(zip(("model", "optim"), get_state_dict(resumed, resumed_opt)))
    dcp.load(state, checkpoint_id=tmp_path / "ckpt")
    set_state_dict(resumed, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    step(model, opt, 2)
    step(resumed, resumed_opt, 2)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert [g["name"] for g in resumed_opt.param_groups] == [g["name"] for g in opt.param_groups]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_param_groups_look_through_torch_compile_wrapper() -> None:
    model = StandInCLIP()
    wrapped = torch.compile(model)  # only wraps; nothing is compiled until it is called
    names = sorted(g["name"] for g in param_groups(wrapped, CFG))
    assert names == sorted(g["name"] for g in param_groups(model, CFG))
    assert "visual.layer1.decay" in names
