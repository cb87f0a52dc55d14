#!/usr/bin/env bash
# Reconcile Snakemake with a workspace DVC wrote (after dvc pull / dvc checkout / dvc exp apply):
# DVC restores files with fresh, arbitrary mtimes and Snakemake has no metadata for them, so
# re-stamp every output in DAG order and write Snakemake's metadata (workflow-notes P1, P2).
# Refuses when dvc.yaml is out of date, when the workspace does not match dvc.lock (touching stale
# outputs would hide changes) and when an output's bytes do not match the hash in dvc.lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
"${PYTHON:-python3}" workflow/scripts/guard.py --free
status=$(dvc status 2>&1) || true
if ! grep -q "Data and pipelines are up to date" <<<"$status"; then
  echo "after_dvc: the workspace does not match dvc.lock; run 'dvc pull' or 'dvc repro' first. dvc status:" >&2
  head -n 20 <<<"$status" >&2
  exit 1
fi
"${PYTHON:-python3}" workflow/scripts/verify_outputs.py
snakemake --touch --forceall --cores 1 --quiet all "$@"
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "${PYTHON:-python3}" -m backdoor.stamps record
echo "after_dvc: Snakemake is in sync with the DVC workspace ('snakemake -n all' has nothing to do)"
