#!/usr/bin/env bash
# Run `lcrypt prepare` on Apache Spark through Beam's portable runner and a Spark job server (NOT RUN in
# lcrypt's CI or by its authors: see README.md).
#
#   docker run --net=host apache/beam_spark3_job_server:2.XX.0 --spark-master-url=spark://MASTER:7077
#   JOB_ENDPOINT=localhost:8099 WORKER_IMAGE=registry/lcrypt-beam:TAG \
#   infra/spark/launch.sh --source gs://bucket/raw/ --scheme etc --param block_size=8 --keys owners.json \
#       --out gs://bucket/datasets/x --read-parts 32
#
# The job server (same Beam version as the launcher) translates the pipeline for Spark; the executors run
# the Python steps in the SDK harness container WORKER_IMAGE (build it from infra/dataflow/Dockerfile).
# Everything after the script name goes to `python -m pipelines.prepare`.
set -euo pipefail
: "${JOB_ENDPOINT:?set JOB_ENDPOINT to the Spark job server, e.g. localhost:8099}"
: "${WORKER_IMAGE:?set WORKER_IMAGE to an SDK container image with lcrypt installed (infra/dataflow/Dockerfile)}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
exec "$PY" -m pipelines.prepare "$@" \
  --runner PortableRunner \
  --job_endpoint "$JOB_ENDPOINT" \
  --environment_type DOCKER \
  --environment_config "$WORKER_IMAGE"
