# syntax=docker/dockerfile:1
# MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3 (or an S3-compatible store).
#   docker build -f docker/mlflow.Dockerfile -t "$REGISTRY/llmpipe-mlflow:0.1.0" .    (or docker/build.sh)
# Configured by the environment, so one image serves compose, Kubernetes and a plain host:
#   MLFLOW_BACKEND_STORE_URI      postgresql://USER:PASSWORD@HOST:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/PREFIX; clients upload through the server (mlflow-artifacts:/),
#                                 so only the server holds S3 credentials: AWS_ACCESS_KEY_ID /
#                                 AWS_SECRET_ACCESS_KEY, or the instance's IAM role; MLFLOW_S3_ENDPOINT_URL
#                                 for an S3-compatible store
#   MLFLOW_SERVER_ALLOWED_HOSTS   the Host headers the server answers (--allowed-hosts). MLflow compares
#                                 the whole header, port included, so `mlflow` alone does not let
#                                 `http://mlflow:5000` in: each name is listed bare and as NAME:*. Every
#                                 other host gets 403 "Invalid Host header" (DNS-rebinding protection).
#                                 Add the names your clients use (a load balancer's DNS name, ...).
FROM python:3.11.13-slim-bookworm

RUN pip install --no-cache-dir --disable-pip-version-check \
      "mlflow==3.17.2" "boto3==1.43.127" "psycopg2-binary==2.9.13"

RUN useradd --create-home --uid 1000 --shell /bin/bash mlflow \
 && mkdir -p /var/lib/mlflow \
 && chown mlflow:mlflow /var/lib/mlflow
USER mlflow
# Scratch space of the server (MLflow's job store, temporary files); compose keeps it on a named volume.
WORKDIR /var/lib/mlflow

ENV MLFLOW_BACKEND_STORE_URI="" \
    MLFLOW_ARTIFACTS_DESTINATION="" \
    MLFLOW_SERVER_ALLOWED_HOSTS="mlflow,mlflow:*,mlflow-host,mlflow-host:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*" \
    MLFLOW_WORKERS=2 \
    DO_NOT_TRACK=1 \
    MLFLOW_DISABLE_TELEMETRY=true
EXPOSE 5000

# /health answers without a Host check, so the probe works whatever the allowed hosts are.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4).status == 200 else 1)"]

# A shell form on purpose: the settings come from the environment at start, and an empty store or
# destination stops the container with a message instead of falling back to files in the container.
CMD : "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql://mlflow:PASSWORD@postgres:5432/mlflow}" \
 && : "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://mlflow-artifacts}" \
 && exec mlflow server --host 0.0.0.0 --port 5000 --workers "$MLFLOW_WORKERS" \
      --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
      --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
      --allowed-hosts "$MLFLOW_SERVER_ALLOWED_HOSTS"
