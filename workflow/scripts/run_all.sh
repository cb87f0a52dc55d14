#!/usr/bin/env bash
# Snakemake drives the study; then DVC records it (workflow-notes P3: commit only after a complete run).
#   workflow/scripts/run_all.sh [extra snakemake arguments]      (CORES=N to set the core count)
set -euo pipefail
cores="${CORES:-$(nproc)}"
snakemake --cores "$cores" all "$@"
pending=$(snakemake -n --cores 1 all 2>&1) || true
if ! grep -q "Nothing to be done" <<<"$pending"; then
  echo "run_all: snakemake still has jobs pending; not recording the state in DVC" >&2
  exit 1
fi
if [ -d .dvc ] && [ -f dvc.yaml ]; then
  dvc commit -f -q
  echo "run_all: outputs recorded in dvc.lock (share them with: git add dvc.lock && git commit && dvc push)"
fi
