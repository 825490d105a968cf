#!/usr/bin/env bash
# Run pixel_jax on a Cloud TPU VM slice: create it (if needed), copy this checkout to every worker,
# install it, then start the same module with the same arguments on all workers at once. JAX's
# multi-controller runtime finds the slice's coordinator, process count and ids itself.
#
# Usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR [ARGS...]
#   e.g. launch/tpu_pod.sh pixel-v5p-64 us-east5-a v5p-64 \
#          --config=configs/grpo.py:model=qwen2_5_vl_7b,data=vstar
# Environment (optional):
#   RUNTIME  TPU software version (default v2-alpha-tpuv5)   MODULE  module to run (default pixel_jax.train)
#   CLOUDSDK_CORE_PROJECT  gcloud project (default: gcloud's)  DRY_RUN=1  print the commands instead
# Checkpoints and data paths in ARGS must be visible to every worker (e.g. gs:// buckets).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n "2,12p" "$0" >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3
shift 3
runtime=${RUNTIME:-v2-alpha-tpuv5}
module=${MODULE:-pixel_jax.train}

run() {
  if [[ -n ${DRY_RUN:-} ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

tpu=(gcloud compute tpus tpu-vm)
if [[ -n ${DRY_RUN:-} ]] || ! "${tpu[@]}" describe "$name" --zone="$zone" >/dev/null 2>&1; then
  run "${tpu[@]}" create "$name" --zone="$zone" --accelerator-type="$accelerator" --version="$runtime"
fi

# The committed state of this checkout, identical on every worker.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
archive=$workdir/pixel_jax.tar.gz
run git -C "$(dirname "$0")/.." archive --format=tar.gz --output="$archive" HEAD
run "${tpu[@]}" scp "$archive" "$name":pixel_jax.tar.gz --zone="$zone" --worker=all
run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="\
rm -rf ~/pixel_jax && mkdir -p ~/pixel_jax && tar -xzf ~/pixel_jax.tar.gz -C ~/pixel_jax && \
pip install --quiet -e ~/pixel_jax 'jax[tpu]>=0.10.2,<0.11'"

# Quote the arguments once for the remote shell.
printf -v remote_args ' %q' "$@"
run "${tpu[@]}" ssh "$name" --zone="$zone" --worker=all --command="\
cd ~/pixel_jax && PIXEL_JAX_DISTRIBUTED=on python3 -m $module$remote_args"
