"""Run a few training steps on fixed global batches; rank r takes its slice. Used by test_engine_parity.py
both as a single process and under `torchrun --nproc_per_node 2`.

    python fixed_batches.py OUT.safetensors STRATEGY STEPS
"""
import sys

import torch

from evaclip.models.checkpoint import save_file
from evaclip.train.config import TrainConfig, ModelSection, ScheduleSection
from evaclip.data.config import DataConfig, DataSource
from evaclip.train.optim import OptimConfig
from evaclip.train.trainer import Trainer
from evaclip.train.distributed import exit_worker, init_distributed, under_launcher

GLOBAL_BATCH = 8


def global_batches(steps: int):
    g = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
        tokens = torch.randint(1, 49000, (GLOBAL_BATCH, 77), generator=g)
        tokens[:, 0] = 49406
        ends = torch.randint(3, 20, (GLOBAL_BATCH,), generator=g)
        for i, e in enumerate(ends.tolist()):
            tokens[i, e] = 49407
            tokens[i, e + 1:] = 0
        yield images, tokens


def main() -> None:
    out, strategy, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    info = init_distributed()
    per_rank = GLOBAL_BATCH // info.world_size
    lo, hi = info.rank * per_rank, (info.rank + 1) * per_rank
    batches = [(im[lo:hi], tok[lo:hi], {}) for im, tok in global_batches(steps)]
    cfg = TrainConfig(
        out_dir=out + ".run", steps=steps, strategy=strategy, progress=False, tensorboard=False,
        # The same initial weights as the single process: build the full model on every rank, then shard.
        # (The meta-device path initialises shards independently; it is tested with pretrained weights.)
        model=ModelSection(name="evaclip-tiny-18b", meta_init=False),
        # The data section is unused with fixed batches but must be valid.
        data=DataConfig(sources=[DataSource("unused.tar")], batch_size=per_rank),
        optim=OptimConfig(name="lamb", lr=1e-3, visual_lr=1e-3, text_lr=5e-4, weight_decay=0.05,
                          visual_ld=0.9, text_ld=0.75, grad_clip=1.0),
        schedule=ScheduleSection(warmup_steps=1),
    )
    trainer = Trainer(cfg, batches=batches, dist_info=info)
    losses = []
    it = iter(batches)
    for _ in range(steps):
        images, tokens, _ = next(it)
        record = trainer.train_step(images, tokens)
        trainer.step += 1
        losses.append(record["loss"])
    # Rank 0's record as the trainer logs it: it must already be the loss of the global batch (the mean of the
    # ranks' local losses), not rank 0's own share, to equal the single process's loss.
    loss = torch.tensor(losses)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if info.rank == 0:
        full = {k: v.float() for k, v in full.items()}
        full["__losses__"] = loss
        save_file(full, out)
    trainer.close()  # frees the DDP reducer while the group still lives
    if info.world_size > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
    if under_launcher():
        exit_worker(0)  # no interpreter teardown with gloo threads alive (see evaclip.train.distributed)
