#!/usr/bin/env bash
# Run pixel_jax on a GPU cluster with SLURM: one process per node, each driving all GPUs of its node.
# JAX's multi-controller runtime reads the coordinator (first host of SLURM_JOB_NODELIST), the
# process count (SLURM_NTASKS) and this process's id (SLURM_PROCID) from the SLURM environment.
#
# Usage: sbatch --nodes=4 launch/gpu_slurm.sh [ARGS...]
#   e.g. sbatch --nodes=4 --gpus-per-node=8 launch/gpu_slurm.sh \
#          --config=configs/grpo.py:model=qwen2_5_vl_7b,data=vstar
# Environment (optional):
#   PYTHON  interpreter with pixel_jax installed (default python)   MODULE  module (default pixel_jax.train)
#   DRY_RUN=1  print the srun command instead of running it
# Checkpoints and data paths in ARGS must be on a file system every node sees.
#SBATCH --job-name=pixel_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

: "${SLURM_JOB_ID:?submit this script with sbatch (it starts one process per node with srun)}"
export PIXEL_JAX_DISTRIBUTED=on
# Let XLA use most of each GPU's memory for the sharded state (the rest for cuDNN/NCCL workspaces).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}

command=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${PYTHON:-python}" -m "${MODULE:-pixel_jax.train}" "$@")
if [[ -n ${DRY_RUN:-} ]]; then
  printf '%q ' "${command[@]}"
  printf '\n'
else
  exec "${command[@]}"
fi
