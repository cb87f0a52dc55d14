#!/usr/bin/env bash
# A consumer's side of publish.sh: pull the study's outputs, check every byte against dvc.lock and
# reconcile Snakemake, so that neither runner wants to recompute anything.
#   workflow/scripts/fetch_results.sh [dvc pull arguments, e.g. -r REMOTE]     (make fetch-results)
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! dvc pull "$@"; then
  echo "fetch-results: some outputs could not be fetched intact. The remote's verify = true re-hashes every" \
       "download and discards one whose md5 differs from dvc.lock (a corrupt object), so the files named above" \
       "are missing, never wrong. Ask the publisher to run 'make verify' and 'make publish' again." >&2
  exit 1
fi
workflow/scripts/after_dvc.sh  # checks dvc.yaml and params, re-hashes every output, reconciles Snakemake
