# MLflow tracking server with a SQL backend and an S3 artifact store.
#   docker build -f docker/mlflow.Dockerfile -t llmpipe-mlflow .
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.2" "boto3==1.43.127" "psycopg2-binary>=2.9"
EXPOSE 5000
ENV BACKEND_STORE_URI=sqlite:////mlflow/mlflow.db ARTIFACTS_DESTINATION=/mlflow/artifacts
CMD mlflow server --host 0.0.0.0 --port 5000 --workers 2 \
    --backend-store-uri "$BACKEND_STORE_URI" --artifacts-destination "$ARTIFACTS_DESTINATION"
