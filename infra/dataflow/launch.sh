#!/usr/bin/env bash
# Run `lcrypt prepare` on Google Cloud Dataflow: the same pipeline as on the DirectRunner.
#
#   PROJECT=my-project REGION=europe-west1 BUCKET=gs://my-bucket \
#   infra/dataflow/launch.sh --source gs://my-bucket/raw/cifar10-jpeg.tar.gz \
#       --scheme etc --param block_size=8 --keys owners.json --out gs://my-bucket/datasets/cifar10-etc \
#       --jpeg-quality 85 --read-parts 32
#
# Keys are read on the launching machine and shipped to the workers inside the pipeline (as any DoFn
# state): run this from a machine the data owner trusts, and give the job a service account that only
# the owner's project can see. Everything after the script name is passed to `python -m pipelines.prepare`.
set -euo pipefail
: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${REGION:?set REGION, e.g. europe-west1}"
: "${BUCKET:?set BUCKET to a gs:// bucket for temp and staging files}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

# lcrypt + pipelines as an sdist the workers pip-install (skipped when a custom image carries them).
EXTRA=()
if [[ -z "${LCRYPT_WORKER_IMAGE:-}" ]]; then
  DIST="$(mktemp -d)"
  "$PY" -m pip wheel --no-deps -q -w "$DIST" "$ROOT"
  EXTRA+=(--extra_package "$(ls "$DIST"/lcrypt-*.whl)" --requirements_file "$HERE/requirements.txt")
else
  EXTRA+=(--sdk_container_image "$LCRYPT_WORKER_IMAGE" --sdk_location container)
fi

exec "$PY" -m pipelines.prepare "$@" \
  --runner DataflowRunner \
  --project "$PROJECT" \
  --region "$REGION" \
  --temp_location "$BUCKET/tmp" \
  --staging_location "$BUCKET/staging" \
  --job_name "lcrypt-prepare-$(date +%Y%m%d-%H%M%S)" \
  --experiments use_runner_v2 \
  --max_num_workers "${MAX_WORKERS:-8}" \
  "${EXTRA[@]}"
