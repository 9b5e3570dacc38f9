# syntax=docker/dockerfile:1
# Worker image: the project with Prefect and Ray. One image for every role that runs project code: the
# Prefect worker (default command), the one-shot `prefect deploy`, Prefect Kubernetes jobs, and Ray head
# and worker nodes (`ray up`, KubeRay, compose). Ray needs driver and nodes on the same Ray and Python.
#
# Two variants from this one file, chosen by the TORCH_VARIANT build argument:
#   cpu   torch's CPU wheel from download.pytorch.org/whl/cpu (~1 GB smaller); compose on one host,
#         Prefect job pods, CPU-only nodes.
#   cuda  torch's default PyPI wheel, which carries the CUDA 13.0 runtime, cuDNN and NCCL as pip
#         packages (cuda-toolkit, nvidia-cudnn-cu13, nvidia-nccl-cu13). So the base stays plain
#         python:*-slim instead of an nvidia/cuda image, whose libraries would be a second copy of the
#         ones the wheel brings and whose Ubuntu ships another Python. The host needs only the NVIDIA
#         driver (>= 580, what CUDA 13 requires) and the NVIDIA container runtime; GPU nodes of
#         infra/ray-cluster.yaml and infra/kuberay.yaml run this variant.
#
# Tags: REGISTRY/llmpipe-worker:VERSION-cpu and VERSION-cuda, VERSION being pyproject.toml's version;
# docker/build.sh builds and pushes both:
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_VARIANT=cuda \
#     -t "$REGISTRY/llmpipe-worker:0.1.0-cuda" .
FROM python:3.11.13-slim-bookworm

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0

# openssh-client and rsync: `ray up` syncs its bootstrap config and key into the container with
# `rsync -e 'docker exec -i'`, and the head's autoscaler reaches new nodes over ssh. wget: KubeRay's
# default liveness/readiness probes of Ray pods run it. tini reaps the processes Ray and Prefect leave
# behind; procps gives `ps` to whoever debugs a node.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client rsync wget tini procps \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LLMPIPE_HOME=/app \
    RAY_USAGE_STATS_ENABLED=0 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_WORKER_WEBSERVER_HOST=127.0.0.1 \
    PREFECT_WORKER_WEBSERVER_PORT=8080

WORKDIR /app

# torch first and on its own: the variant decides the index, and the project install below must keep it.
RUN case "$TORCH_VARIANT" in \
      cpu)  index=https://download.pytorch.org/whl/cpu ;; \
      cuda) index=https://pypi.org/simple ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac \
 && pip install --index-url "$index" "torch==${TORCH_VERSION}"

COPY pyproject.toml constraints.txt README.md ./
COPY llm llm
COPY tasks tasks
COPY flows flows
RUN pip install -c constraints.txt -e . \
 && python -c "import torch; print('torch', torch.__version__)"
COPY configs configs
COPY prefect.yaml ./
COPY docker/worker-healthcheck.sh /usr/local/bin/llmpipe-healthcheck

# Non-root. /app/work is the default work_dir of the configs; compose mounts a named volume there,
# which takes this ownership when it is created.
RUN useradd --create-home --uid 1000 --shell /bin/bash llmpipe \
 && mkdir -p /app/work \
 && chown llmpipe:llmpipe /app/work
USER llmpipe

# Healthy when what the container runs answers: a Ray node its GCS check, a Prefect worker its
# health server (started by --with-healthcheck, bound to 127.0.0.1:8080 above).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 CMD ["llmpipe-healthcheck"]

# No ENTRYPOINT beyond tini: `ray up` starts the container with `bash` as its command.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "llmpipe", "--with-healthcheck"]
