#!/usr/bin/env bash
# Run `lcrypt prepare` on a dask.distributed cluster (lcrypt's fixed Beam DaskRunner).
#
#   infra/dask/launch.sh --source /shared/raw/cifar10-jpeg.tar.gz --scheme etc --param block_size=8 \
#       --keys owners.json --out /shared/datasets/cifar10-etc --jpeg-quality 85
#   DASK_SCHEDULER=tcp://10.0.0.5:8786 infra/dask/launch.sh ...   # the cluster you already run
#
# Without DASK_SCHEDULER prepare starts a local cluster of worker processes (one per core, or
# --direct_num_workers N) and stops it at the end. Everything after the script name goes to
# `python -m pipelines.prepare`.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
ADDR=()
if [[ -n "${DASK_SCHEDULER:-}" ]]; then
  ADDR=(--dask_client_address "$DASK_SCHEDULER")
fi
cd "$ROOT"
exec "$PY" -m pipelines.prepare "$@" --runner dask "${ADDR[@]}"
