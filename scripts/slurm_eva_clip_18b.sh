#!/usr/bin/env bash
# EVA-CLIP-18B on a SLURM cluster: 45 nodes x 8 GPUs = 360 GPUs, as in the paper.
# Check the plan first:  evaclip plan EVA-CLIP-18B --gpus 360 --gpu-memory 40 --global-batch 108000 \
#                          --patch-dropout 0.5 --grad-checkpointing --peak-tflops 312 --mfu 0.4 --samples 6e9
#
# Preemption and time limits: SLURM sends SIGUSR1 to this script 10 minutes before the end (--signal); the trap
# passes it to srun, which delivers it to every torchrun; torchrun forwards it to its 8 ranks (it is in
# --signals-to-handle) and gives them --shutdown-timeout seconds before SIGKILL. Each rank finishes its step,
# the ranks agree on it, write one checkpoint and exit with code 75; the script then requeues the job, which
# continues with resume=auto (the newest good checkpoint; a fresh start when there is none).
#SBATCH --job-name=eva-clip-18b
#SBATCH --nodes=45
#SBATCH --ntasks-per-node=1          # one torchrun launcher per node; it starts 8 workers
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@600          # to this batch script, 600 s before the time limit
#SBATCH --requeue                    # a requeued or failed-node job restarts and resumes from the last checkpoint
#SBATCH --open-mode=append           # requeued runs append to the same log
set -uo pipefail

OUT=${OUT:-/checkpoints/eva-clip-18b}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)

srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" --rdzv_id "$SLURM_JOB_ID" \
  --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout 540 \
  -m evaclip.cli.main train eva-clip-18b \
    out_dir="$OUT" resume=auto \
    model.pretrained_image=/weights/EVA_18B_psz14.fp16.bin \
    model.pretrained_text=/weights/EVA02_CLIP_E_psz14_plus_s9B.pt \
    "data.sources=/data/laion2b/{000000..164090}.tar::/data/coyo700m/{000000..074999}.tar" \
    data.weights=1.6,0.4 &
SRUN=$!

SIGNALLED=0
trap 'SIGNALLED=1; kill -USR1 "$SRUN"' USR1
wait "$SRUN"; STATUS=$?
while kill -0 "$SRUN" 2>/dev/null; do wait "$SRUN"; STATUS=$?; done  # `wait` returns early when the trap runs

if [ "$SIGNALLED" = 1 ]; then
  echo "preempted: checkpoint written, requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$STATUS"
