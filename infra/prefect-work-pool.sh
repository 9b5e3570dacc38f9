#!/usr/bin/env bash
# Create the work pool the deployments in prefect.yaml use and register them (PREFECT_API_URL must be set).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL to your Prefect server, e.g. http://127.0.0.1:4200/api}"
export LLMPIPE_HOME="${LLMPIPE_HOME:-$PWD}"
prefect work-pool create llmpipe --type process --overwrite
prefect deploy --all
echo "start a worker with: LLMPIPE_HOME=$LLMPIPE_HOME prefect worker start --pool llmpipe"
