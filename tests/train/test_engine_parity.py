"""The trainer under torchrun with 2 processes (gloo) equals one process on the same global batch:
the losses that rank 0 logs at every step (the global-batch loss, not rank 0's local share) and all parameters
after a few LAMB steps, for DDP and FSDP2."""
import os
import sys
from pathlib import Path

import pytest
import torch
from proc_kit import run_bounded
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "engine_workers" / "fixed_batches.py"
STEPS = 3


def _run(out: Path, strategy: str, nproc: int) -> dict[str, torch.Tensor]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), str(out), strategy, str(STEPS)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--standalone", str(WORKER), str(out), strategy, str(STEPS)]
    proc = run_bounded(cmd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("single") / "single.safetensors", "ddp", 1)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(single, tmp_path, strategy):
    multi = _run(tmp_path / f"{strategy}.safetensors", strategy, 2)
    assert set(multi) == set(single)
    torch.testing.assert_close(multi["__losses__"], single["__losses__"], rtol=1e-5, atol=1e-6)
    moved = 0
    for key, ref in single.items():
        if key == "__losses__":
            continue
        torch.testing.assert_close(multi[key], ref, rtol=1e-4, atol=2e-6, msg=lambda m: f"{key}: {m}")
        moved += 1
    assert moved > 20
    # The comparison means something only if training changed the weights: the losses must differ by step.
    assert single["__losses__"].unique().numel() == STEPS


def test_sharded_meta_init_loads_pretrained_weights_exactly(tmp_path):
    """FSDP under torchrun builds on the meta device and materialises only local shards; pretrained weights
    reach every shard from rank 0. With a zero learning rate the exported model equals the input file."""
    import evaclip
    from evaclip.models.checkpoint import save_file
    torch.manual_seed(3)
    src = evaclip.create_model("evaclip-tiny")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # distinguishable from any fresh initialisation
    save_file(src.state_dict(), tmp_path / "src.safetensors")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "evaclip.cli.main", "train", "tiny", f"out_dir={out}", "steps=2", "checkpoint_every=0",
           "data.batch_size=8", "schedule.warmup_steps=1", "progress=false", "tensorboard=false",
           "strategy=fsdp", f"model.pretrained={tmp_path / 'src.safetensors'}",
           "optim.lr=0", "optim.visual_lr=0", "optim.text_lr=0"]
    proc = run_bounded(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(str(out / "final.safetensors"))
    ref = src.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k
