#!/usr/bin/env bash
# Multi-node training on encrypted shards with torchrun (one line per node; same command on every node).
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 GPUS=8 infra/torchrun/launch.sh \
#       --data gs://bucket/cifar10-etc/manifest.json --model convmixer --width 256 --depth 8 --patch 1 --kernel 9
#
# Every argument after the environment is passed to `python -m training.train`. The loader plans equal
# batches per rank from the manifest's per-shard counts, so any number of nodes x GPUs works with any
# shard count. Re-running the same command with `--resume auto` continues from OUT/checkpoint.pt.
set -euo pipefail
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
GPUS="${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l || echo 1)}"
[ "${GPUS}" -ge 1 ] || GPUS=1
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RDZV_ID="${RDZV_ID:-lcrypt-train}"

if [ "${NNODES}" -eq 1 ]; then
  exec torchrun --standalone --nproc_per_node="${GPUS}" -m training.train "$@"
fi
exec torchrun --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${GPUS}" \
  --rdzv_id="${RDZV_ID}" --rdzv_backend=c10d --rdzv_endpoint="${MASTER_ADDR}:${MASTER_PORT}" \
  -m training.train "$@"
