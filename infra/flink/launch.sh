#!/usr/bin/env bash
# Run `lcrypt prepare` on Apache Flink through Beam's portable FlinkRunner (NOT RUN in lcrypt's CI or by its
# authors: see README.md).
#
#   FLINK_MASTER=flink-jobmanager:8081 WORKER_IMAGE=registry/lcrypt-beam:TAG \
#   infra/flink/launch.sh --source gs://bucket/raw/ --scheme etc --param block_size=8 --keys owners.json \
#       --out gs://bucket/datasets/x --read-parts 32
#
# Beam starts a Flink job server for the cluster's Flink version, submits the pipeline, and the Flink task
# managers run the Python steps in the SDK harness container WORKER_IMAGE (build it from
# infra/dataflow/Dockerfile: it carries lcrypt and Beam). Everything after the script name goes to
# `python -m pipelines.prepare`.
set -euo pipefail
: "${FLINK_MASTER:?set FLINK_MASTER to the Flink REST endpoint, e.g. flink-jobmanager:8081}"
: "${WORKER_IMAGE:?set WORKER_IMAGE to an SDK container image with lcrypt installed (infra/dataflow/Dockerfile)}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
exec "$PY" -m pipelines.prepare "$@" \
  --runner FlinkRunner \
  --flink_master "$FLINK_MASTER" \
  ${FLINK_VERSION:+--flink_version "$FLINK_VERSION"} \
  --environment_type DOCKER \
  --environment_config "$WORKER_IMAGE" \
  --parallelism "${PARALLELISM:-8}"
