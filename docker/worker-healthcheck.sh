#!/bin/sh
# HEALTHCHECK of the worker image: a container running a Ray node is healthy when its GCS answers;
# otherwise it runs a Prefect worker, healthy when the worker's health server answers.
set -e
if [ -e /tmp/ray/ray_current_cluster ]; then
    exec ray health-check
fi
exec python -c "import sys, urllib.request
port = '${PREFECT_WORKER_WEBSERVER_PORT:-8080}'
sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/health', timeout=10).status == 200 else 1)"
