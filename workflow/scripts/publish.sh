#!/usr/bin/env bash
# Share the recorded study: verify it, commit dvc.lock, push the outputs to a DVC remote.
#   workflow/scripts/publish.sh [REMOTE_URL] [ENDPOINT_URL]        (make publish REMOTE=… ENDPOINT=…)
# REMOTE_URL (s3://bucket/prefix, a path, …) becomes the default remote `shared`, committed in
# .dvc/config with `verify = true` (a pull re-hashes what it downloads); ENDPOINT_URL is for S3
# services other than AWS. Credentials stay out of git (AWS_* variables or ~/.aws).
set -euo pipefail
cd "$(dirname "$0")/../.."
remote="${1:-}" endpoint="${2:-}"
"${PYTHON:-python3}" workflow/scripts/guard.py --free
if [ ! -f dvc.lock ]; then
  echo "publish: nothing is recorded yet (no dvc.lock): run 'make study' first" >&2
  exit 1
fi
if ! status=$(dvc status 2>&1) || ! grep -q "Data and pipelines are up to date" <<<"$status"; then
  echo "$status" | head -20 >&2
  echo "publish: the workspace does not match dvc.lock (dvc status above): run 'make study' first" >&2
  exit 1
fi
"${PYTHON:-python3}" workflow/scripts/verify_outputs.py --cache
if [ -n "$remote" ]; then
  dvc remote add -f -d shared "$remote"
  [ -z "$endpoint" ] || dvc remote modify shared endpointurl "$endpoint"
  dvc remote modify shared verify true
elif [ -z "$(dvc remote default 2>/dev/null)" ]; then
  echo "publish: no DVC remote configured: make publish REMOTE=s3://bucket/prefix (or a shared folder)" >&2
  exit 1
fi
git add dvc.lock dvc.yaml .dvc/config
if ! git diff --cached --quiet -- dvc.lock dvc.yaml .dvc/config; then
  git commit -q -m "Results: dvc.lock of the study in params.yaml" -- dvc.lock dvc.yaml .dvc/config
fi
dvc push --run-cache
echo "publish: outputs pushed to '$(dvc remote default)'; dvc.lock committed as $(git rev-parse --short HEAD)."
echo "publish: now 'git push' so others can 'git clone' and 'make fetch-results'."
