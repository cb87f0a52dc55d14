#!/usr/bin/env bash
# Snakemake drives the study; then DVC records it (workflow-notes P3: commit only after a complete run).
#   workflow/scripts/run_all.sh [extra snakemake arguments]      (CORES=N to set the core count)
# Refuses, before any job, when params.yaml is invalid, dvc.yaml is out of date or another runner
# is working here.
set -euo pipefail
cd "$(dirname "$0")/../.."
cores="${CORES:-$(nproc)}"
"${PYTHON:-python3}" workflow/scripts/guard.py --free --marker results/validated.txt
snakemake --cores "$cores" all "$@"
pending=$(snakemake -n --cores 1 all 2>&1) || true
if ! grep -q "Nothing to be done" <<<"$pending"; then
  echo "run_all: snakemake still has jobs pending; not recording the state in DVC" >&2
  exit 1
fi
if [ -d .dvc ] && [ -f dvc.yaml ]; then
  "${PYTHON:-python3}" workflow/scripts/keep_mtimes.py dvc commit -f -q  # DVC may re-copy files (new mtimes)
  echo "run_all: outputs recorded in dvc.lock (share them with: make publish REMOTE=<s3://bucket/prefix or a path>)"
fi
