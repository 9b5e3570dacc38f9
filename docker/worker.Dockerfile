# Worker image: Prefect worker + Ray + the project. Used for Prefect work pools and Ray cluster nodes.
#   docker build -f docker/worker.Dockerfile -t llmpipe-worker .
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 LLMPIPE_HOME=/app RAY_USAGE_STATS_ENABLED=0 DO_NOT_TRACK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY llm llm
COPY tasks tasks
COPY flows flows
COPY configs configs
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch==2.13.0" \
 && pip install --no-cache-dir -c constraints.txt -e .
COPY prefect.yaml ./
CMD ["prefect", "worker", "start", "--pool", "llmpipe"]
