#!/usr/bin/env bash
# Redraw the tables and figures from the published metrics alone (make figures): fetch
# results/metrics.csv (and results/dynamics.csv where figures.dynamics selects traces) from the DVC
# remote when they are not here, then rerun only the report stage. Trains and purifies nothing.
set -uo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f results/metrics.csv ]; then
  if ! dvc pull validate aggregate; then
    echo "figures: could not fetch results/metrics.csv from the DVC remote (the error is above). Fix: check" \
         "the remote ('dvc remote list'; 'make fetch-results' sets nothing up, 'make publish REMOTE=…' does on" \
         "the producer's side), or compute the study here with 'make study'." >&2
    exit 1
  fi
fi
if ! dvc repro --force --single-item report; then
  echo "figures: the report stage failed (the error is above; its log: logs/report.log)." >&2
  exit 1
fi
echo "figures: tables and figures redrawn from results/metrics.csv: results/table.md, results/figures/"
