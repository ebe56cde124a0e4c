#!/usr/bin/env bash
# EVA-CLIP-18B on a SLURM cluster: 45 nodes x 8 GPUs = 360 GPUs, as in the paper.
# Check the plan first:  evaclip plan EVA-CLIP-18B --gpus 360 --gpu-memory 40 --global-batch 108000 \
#                          --patch-dropout 0.5 --grad-checkpointing --peak-tflops 312 --mfu 0.4 --samples 6e9
#SBATCH --job-name=eva-clip-18b
#SBATCH --nodes=45
#SBATCH --ntasks-per-node=1          # one torchrun launcher per node; it starts 8 workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --time=72:00:00
#SBATCH --requeue                    # a preempted or failed job restarts and resumes from the last checkpoint
set -euo pipefail

OUT=${OUT:-/checkpoints/eva-clip-18b}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" --rdzv_id "$SLURM_JOB_ID" \
  -m evaclip.cli.main train eva-clip-18b \
    out_dir="$OUT" resume=latest \
    model.pretrained_image=/weights/EVA_18B_psz14.fp16.bin \
    model.pretrained_text=/weights/EVA02_CLIP_E_psz14_plus_s9B.pt \
    "data.sources=/data/laion2b/{000000..164090}.tar::/data/coyo700m/{000000..074999}.tar" \
    data.weights=1.6,0.4
