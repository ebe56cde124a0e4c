"""Per-tensor vs per-flat-partition LAMB trust ratios on a tiny EVA-CLIP (evaclip-tiny-18b), with the official
recipe's parameter groups (evaclip.train.optim.param_groups). See docs/lamb_under_sharding.md.

It simulates the tensors DeepSpeed hands FusedLamb: under ZeRO-3 each tensor is split in W equal, padded slices
and a rank's partition is its slice of every tensor of the group; under ZeRO-1/2 the group is flattened, padded
to a multiple of 2W and cut in W contiguous pieces. CPU only, about 4 minutes on one core:

    .venv/bin/python docs/lamb_under_sharding.py [STEPS=150]
"""
import math
import statistics
import sys

import torch
import torch.nn.functional as F

import evaclip
from evaclip.train.optim import OptimConfig, param_groups
from evaclip.tokenizer import tokenize

LO, HI = 0.01, 10.0
torch.manual_seed(0)
torch.set_num_threads(1)


def clamp_ratio(w, u):
    return torch.where((w > 0) & (u > 0), (w / u).clamp(LO, HI), torch.ones_like(w))


def rank_of_elements(sizes, W, layout):
    """For each tensor of a group: a LongTensor giving the rank that owns each element."""
    if W == 1:
        return [torch.zeros(n, dtype=torch.long) for n in sizes]
    if layout == "zero3":
        out = []
        for n in sizes:
            c = math.ceil(n / W)
            out.append(torch.arange(n) // c)
        return out
    total = sum(sizes)
    align = 2 * W
    padded = math.ceil(total / align) * align
    base = padded // W  # padded is a multiple of W: equal pieces
    flat_rank = torch.arange(total) // base
    return list(flat_rank.split(sizes))


def ratios(ws, us, W, layout):
    """Per-element trust ratio under a rule: 'tensor' or a partition layout with W ranks."""
    if layout == "tensor":
        return [clamp_ratio(w.norm(), u.norm()).expand(w.numel()) for w, u in zip(ws, us)]
    owners = rank_of_elements([w.numel() for w in ws], W, layout)
    w2 = torch.zeros(W, dtype=torch.float64)
    u2 = torch.zeros(W, dtype=torch.float64)
    for w, u, o in zip(ws, us, owners):
        w2.index_add_(0, o, w.flatten().double() ** 2)
        u2.index_add_(0, o, u.flatten().double() ** 2)
    t = clamp_ratio(w2.sqrt(), u2.sqrt()).float()
    return [t[o] for o in owners]


class Sim:
    """LAMB with FusedLamb's element rule (as evaclip.train.optim.Lamb); the trust ratio by a chosen rule."""

    def __init__(self, groups, betas=(0.9, 0.95), eps=1e-6):
        self.groups, self.betas, self.eps, self.t = groups, betas, eps, 0
        self.m = {id(p): torch.zeros_like(p) for g in groups for p in g["params"]}
        self.v = {id(p): torch.zeros_like(p) for g in groups for p in g["params"]}

    def updates(self, group):
        b1, b2 = self.betas
        us = []
        for p in group["params"]:
            m = self.m[id(p)] * b1 + (1 - b1) * p.grad
            v = self.v[id(p)] * b2 + (1 - b2) * p.grad ** 2
            us.append(m / (v.sqrt() + self.eps) + group["weight_decay"] * p.detach())
        return us

    @torch.no_grad()
    def step(self, layout, W):
        self.t += 1
        b1, b2 = self.betas
        for g in self.groups:
            us = self.updates(g)
            for p in g["params"]:
                self.m[id(p)].mul_(b1).add_(p.grad, alpha=1 - b1)
                self.v[id(p)].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            rs = ratios([p.detach() for p in g["params"]], us, W, layout)
            size = g["lr"] * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
            for p, u, r in zip(g["params"], us, rs):
                p.sub_(size * r.view_as(p) * u)


def data(n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 32, (n,), generator=g)
    protos = torch.randn(32, 3, 32, 32, generator=g)
    images = protos[labels] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    texts = [f"a photo of {words[int(l) % 8]} {words[int(l) // 8]}" for l in labels]
    return images, tokenize(texts)


def loss_of(model, images, tokens):
    i, t, _ = model(images, tokens)
    logits = 100.0 * i @ t.T  # fixed temperature 0.01, as the 8B/18B recipe
    y = torch.arange(len(i))
    return (F.cross_entropy(logits, y) + F.cross_entropy(logits.T, y)) / 2


def train(layout, W, steps, images, tokens, batch=64, cfg=None):
    torch.manual_seed(0)
    model = evaclip.create_model("evaclip-tiny-18b")
    model.logit_scale.requires_grad_(False)  # fixed temperature
    groups = param_groups(model, cfg)
    sim = Sim(groups)
    losses = []
    for s in range(steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % len(images)
        model.zero_grad()
        loss = loss_of(model, images[idx], tokens[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        sim.step(layout, W)
        losses.append(loss.item())
    return model, groups, sim, losses


def kind(g):
    return "decay" if g["weight_decay"] > 0 or g["name"].endswith(".decay") else "no_decay"


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    cfg = OptimConfig(lr=2e-3, visual_lr=2e-3, text_lr=2e-4)  # the paper's rule and ratios, a tiny model's lr
    images, tokens = data()
    model, groups, sim, losses = train("tensor", 1, steps, images, tokens, cfg=cfg)
    # one more gradient, then compare the rules on the same state
    model.zero_grad()
    loss_of(model, images[:64], tokens[:64]).backward()
    print(f"after {steps} per-tensor steps (loss {losses[0]:.3f} -> {losses[-1]:.3f}); "
          f"{sum(len(g['params']) for g in groups)} tensors in {len(groups)} groups")
    print("effective step of each tensor under a rule / under the per-tensor rule (median [min, max]):")
    for layout, W in (("zero3", 1), ("zero3", 8), ("zero3", 64), ("zero3", 360), ("zero12", 8), ("zero12", 360)):
        factors = {"decay": [], "no_decay": []}
        for g in groups:
            us = sim.updates(g)
            ws = [p.detach() for p in g["params"]]
            ref = ratios(ws, us, 1, "tensor")
            got = ratios(ws, us, W, layout)
            for u, a, b in zip(us, ref, got):
                u = u.flatten()
                factors[kind(g)].append(float((b * u).norm() / (a * u).norm()))
        line = [f"{layout} W={W:3d}"]
        for k, f in factors.items():
            line.append(f"{k}: {statistics.median(f):6.2f} [{min(f):6.2f}, {max(f):6.2f}] (n={len(f)})")
        print("  " + "  ".join(line))
    print("per tensor, first vision and text block, ZeRO-3 with W=360 (rms = |w| / sqrt(n)):")
    for g in groups:
        if g["name"].split(".")[1] != "layer1":
            continue
        us = sim.updates(g)
        ws = [p.detach() for p in g["params"]]
        per_tensor, zero3 = ratios(ws, us, 1, "tensor"), ratios(ws, us, 360, "zero3")
        for name, w, u, a, b in zip(g["param_names"], ws, us, per_tensor, zero3):
            u = u.flatten()
            print(f"  {name:44s} n={w.numel():6d} rms={float(w.norm()) / w.numel() ** 0.5:6.3f} "
                  f"trust per tensor={float(a[0]):6.3f} step factor={float((b * u).norm() / (a * u).norm()):7.2f}")
    # what it does to training: the same run under the ZeRO-3 rule
    for W in (1, 8):
        m2, _, _, l2 = train("zero3", W, steps, images, tokens, cfg=cfg)
        num = sum(float((a - b).detach().norm() ** 2) for a, b in zip(model.parameters(), m2.parameters())) ** 0.5
        den = sum(float(a.detach().norm() ** 2) for a in model.parameters()) ** 0.5
        print(f"training {steps} steps, zero3 W={W}: final loss {l2[-1]:.3f} vs per-tensor {losses[-1]:.3f}; "
              f"mean loss last 10: {statistics.mean(l2[-10:]):.3f} vs {statistics.mean(losses[-10:]):.3f}; "
              f"|w_zero3 - w_tensor| / |w| = {num / den:.3f}")


if __name__ == "__main__":
    main()
