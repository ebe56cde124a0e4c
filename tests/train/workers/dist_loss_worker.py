"""Run by torchrun from tests/train/test_distributed_loss.py: each rank takes its slice of a global batch,
computes a loss through a real DDP-wrapped tiny model, and saves its loss, feature gradients and the
DDP-averaged parameter gradients for the test to compare with one process on the whole batch."""

import gc
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from evaclip.train.distributed import all_reduce_mean, barrier, destroy, exit_worker, init_distributed
from evaclip.train.loss import ClipLoss, SigLipLoss


class TinyTowers(nn.Module):
    """Two linear 'towers' plus the temperature and bias: enough to see every gradient path."""

    def __init__(self, state: dict[str, torch.Tensor], with_bias: bool) -> None:
        super().__init__()
        self.img_proj = nn.Parameter(state["img_proj"].clone())
        self.txt_proj = nn.Parameter(state["txt_proj"].clone())
        self.logit_scale = nn.Parameter(state["logit_scale"].clone())
        # Only SigLIP has a bias: an unused parameter would need DDP's find_unused_parameters.
        self.logit_bias = nn.Parameter(state["logit_bias"].clone()) if with_bias else None

    def forward(self, x_img: torch.Tensor, x_txt: torch.Tensor):
        img = nn.functional.normalize(x_img @ self.img_proj, dim=-1)
        txt = nn.functional.normalize(x_txt @ self.txt_proj, dim=-1)
        return img, txt, self.logit_scale.exp(), (self.logit_bias + 0.0 if self.logit_bias is not None else None)


LOSSES = {
    "clip_local": lambda: ClipLoss(local_loss=True, gather_with_grad=True),
    "clip_global": lambda: ClipLoss(local_loss=False, gather_with_grad=True),
    "clip_global_nograd": lambda: ClipLoss(local_loss=False, gather_with_grad=False),
    "siglip": lambda: SigLipLoss(),
    # Some captions repeat, within a rank and across ranks: those pairs leave each other's softmax.
    "clip_local_dedup": lambda: ClipLoss(local_loss=True, gather_with_grad=True, mask_duplicate_texts=True),
    "clip_global_dedup": lambda: ClipLoss(local_loss=False, gather_with_grad=True, mask_duplicate_texts=True),
}


def compute_loss(name: str, loss_fn, img, txt, scale, bias, tokens):
    if name == "siglip":
        return loss_fn(img, txt, scale, bias)
    if name.endswith("_dedup"):
        return loss_fn(img, txt, scale, tokens)
    return loss_fn(img, txt, scale)


def main(batch_path: str, out_dir: str) -> None:
    info = init_distributed()
    data = torch.load(batch_path, weights_only=True)
    b = data["x_img"].shape[0] // info.world_size
    rows = slice(info.rank * b, (info.rank + 1) * b)
    results: dict[str, dict[str, torch.Tensor]] = {}
    for name, make_loss in LOSSES.items():
        model = DDP(TinyTowers(data, with_bias=name == "siglip"))
        img, txt, scale, bias = model(data["x_img"][rows], data["x_txt"][rows])
        img.retain_grad()
        txt.retain_grad()
        loss_fn = make_loss()
        loss = compute_loss(name, loss_fn, img, txt, scale, bias, data["tokens"][rows])
        loss.backward()
        out = {"loss": loss.detach(), "loss_mean": all_reduce_mean(loss), "img_grad": img.grad, "txt_grad": txt.grad}
        for pname, p in model.module.named_parameters():
            if p.grad is not None:
                out[f"param.{pname}"] = p.grad.clone()  # already averaged over ranks by DDP
        results[name] = out
        del model  # freed while the group lives: a DDP reducer must not be its last owner (see Trainer.close)
        gc.collect()
    torch.save({"world_size": info.world_size, "rank": info.rank, "results": results},
               Path(out_dir) / f"rank{info.rank}.pt")
    barrier()
    destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    exit_worker(0)  # no interpreter teardown with gloo threads alive (see evaclip.train.distributed)
