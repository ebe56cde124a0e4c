#!/usr/bin/env bash
# GPU smoke check of the trainer's CUDA paths (run on a GPU machine from the repository root):
# bf16 autocast, gradient checkpointing, patch dropout, torch.compile, and the CUDA parity/loss tests.
set -uo pipefail
export PYTHONPATH=$PWD:${PYTHONPATH:-}
OUT=${OUT:-/tmp/evaclip_gpu}
python - <<'PY'
import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
python -m evaclip.cli.main train tiny out_dir=$OUT/amp steps=30 checkpoint_every=15 schedule.warmup_steps=3 \
  precision=amp_bf16 model.grad_checkpointing=true model.patch_dropout=0.5 data.batch_size=64 progress=false \
  tensorboard=false 2>&1 | tail -4
python -m evaclip.cli.main train tiny out_dir=$OUT/amp steps=40 checkpoint_every=15 schedule.warmup_steps=3 \
  precision=amp_bf16 model.grad_checkpointing=true model.patch_dropout=0.5 data.batch_size=64 progress=false \
  tensorboard=false resume=latest 2>&1 | tail -3
python -m evaclip.cli.main train tiny out_dir=$OUT/compile steps=10 schedule.warmup_steps=2 checkpoint_every=0 \
  compile=true data.batch_size=64 progress=false tensorboard=false 2>&1 | tail -3
python -m pytest -q -x tests/train/test_loss.py tests/train/test_optim.py -k cuda 2>&1 | tail -3
