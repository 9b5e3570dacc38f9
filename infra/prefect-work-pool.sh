#!/usr/bin/env bash
# Create the process work pool the deployments in prefect.yaml use and register them against the server at
# PREFECT_API_URL. The deployments store no path of this machine: a worker finds the project at run time
# (prefect.yaml's pull step, flows/worker_steps.py), so start it in any folder, in a Python that has
# llmpipe installed. On this machine alone, `llmpipe serve` does all of this and starts the servers too.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL to your Prefect server, e.g. http://127.0.0.1:4200/api}"
prefect work-pool create llmpipe --type process --overwrite
prefect --no-prompt deploy --all
echo "start a worker with: PREFECT_API_URL=$PREFECT_API_URL prefect worker start --pool llmpipe"
