#!/usr/bin/env bash
# A consumer's side of publish.sh: pull the study's outputs, check every byte against dvc.lock and
# reconcile Snakemake, so that neither runner wants to recompute anything.
#   workflow/scripts/fetch_results.sh [dvc pull arguments, e.g. -r REMOTE]     (make fetch-results)
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PYTHON:-python3}" workflow/scripts/guard.py --free
dvc pull "$@"
workflow/scripts/after_dvc.sh
