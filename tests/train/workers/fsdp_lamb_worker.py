"""Run by torchrun from tests/train/test_optim.py: a few LAMB steps on an FSDP2-sharded model (each rank
holds a shard of every tensor, so the trust ratio needs norms of whole tensors, not of shards). Rank 0
saves the full parameters for the test to compare with one process on the same global batches.

With ``zero3`` as second argument (tests/train/test_lamb_zero3.py) the trust ratio is DeepSpeed ZeRO-3's, per
flat partition, with ``ZERO3_PARTITIONS`` = 3 slices: they do not line up with the 2 ranks' rows, so each
slice's norm needs the parts on both ranks."""

import sys

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from evaclip.train.distributed import destroy, exit_worker, get_rank, get_world_size, init_distributed
from evaclip.train.optim import Lamb

ZERO3_PARTITIONS = 3


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def batches(steps: int = 3, rows: int = 8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(rows, 6, generator=g, dtype=torch.float64) for _ in range(steps)]


def train(model: nn.Module, rank: int, world_size: int, trust_ratio: str = "tensor") -> None:
    # One group with weight decay and one without, as param_groups would build them.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt = Lamb(groups, lr=0.05, betas=(0.9, 0.95), trust_ratio=trust_ratio, trust_partitions=ZERO3_PARTITIONS)
    for x in batches():
        b = x.shape[0] // world_size
        # Mean over the local rows; FSDP averages gradients over ranks, giving the global mean.
        loss = model(x[rank * b : (rank + 1) * b]).pow(2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(out_path: str, trust_ratio: str = "tensor") -> None:
    init_distributed()
    model = make_model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    train(model, get_rank(), get_world_size(), trust_ratio)
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    if get_rank() == 0:
        torch.save(full, out_path)
    destroy()


if __name__ == "__main__":
    main(*sys.argv[1:3])
    exit_worker(0)  # no interpreter teardown with gloo threads alive (see evaclip.train.distributed)
