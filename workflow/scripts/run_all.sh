#!/usr/bin/env bash
# Snakemake drives the study; then DVC records it (workflow-notes P3: commit only after a complete run).
#   workflow/scripts/run_all.sh [extra snakemake arguments]      (CORES=N to set the core count)
# Refuses, before any job, when params.yaml is invalid, dvc.yaml is out of date or another runner
# is working here; clears the lock a killed Snakemake left behind; remakes what DVC reports deleted
# or changed and re-stamps files DVC re-copied (reconcile.py), so both runners agree on what is stale.
set -euo pipefail
cd "$(dirname "$0")/../.."
cores="${CORES:-$(nproc)}"
py="${PYTHON:-python3}"
"$py" workflow/scripts/guard.py --free --marker results/validated.txt
forced=$("$py" workflow/scripts/reconcile.py)
# shellcheck disable=SC2086  # one output path per word
snakemake --cores "$cores" all "$@" ${forced:+--forcerun $forced}
pending=$(snakemake -n --cores 1 all 2>&1) || true
if ! grep -q "Nothing to be done" <<<"$pending"; then
  echo "run_all: snakemake still has jobs pending; not recording the state in DVC. snakemake -n says:" >&2
  tail -n 20 <<<"$pending" >&2
  exit 1
fi
if [ -d .dvc ] && [ -f dvc.yaml ]; then
  # DVC may re-copy files (new mtimes): keep_mtimes puts them back
  if ! out=$("$py" workflow/scripts/keep_mtimes.py dvc commit -f 2>&1); then
    echo "run_all: the study finished but 'dvc commit -f' failed, so dvc.lock does not record it:" >&2
    tail -n 20 <<<"$out" >&2
    echo "run_all: see 'make status' for what DVC finds changed; rerun 'make study' once it is fixed" >&2
    exit 1
  fi
  # their times too: after a later 'dvc commit -f' or 'dvc checkout' a plain Snakemake puts them back
  PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$py" -m backdoor.stamps record
  echo "run_all: outputs recorded in dvc.lock (share them with: make publish REMOTE=<s3://bucket/prefix or a path>)"
fi
