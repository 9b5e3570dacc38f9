#!/usr/bin/env bash
# Build (and with --push, push) the project's images, tagged with pyproject.toml's version:
#   REGISTRY/llmpipe-worker:VERSION-cpu    REGISTRY/llmpipe-worker:VERSION-cuda    REGISTRY/llmpipe-mlflow:VERSION
# REGISTRY is the only name to set, e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/llmpipe or
# ghcr.io/ORG/llmpipe; infra/ uses registry.example.com/llmpipe as the placeholder for it.
#   REGISTRY=ghcr.io/acme/llmpipe docker/build.sh --push
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REGISTRY:?set REGISTRY to the registry and path the images go to, e.g. ghcr.io/acme/llmpipe}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
: "${VERSION:?no version found in pyproject.toml}"
push=false
[ "${1:-}" = "--push" ] && push=true

build() {  # TAG DOCKERFILE [BUILD ARGS...]
    local tag="$1" file="$2"; shift 2
    docker build -f "$file" "$@" -t "$tag" .
    if $push; then docker push "$tag"; fi
}
build "$REGISTRY/llmpipe-worker:$VERSION-cpu" docker/worker.Dockerfile --build-arg TORCH_VARIANT=cpu
build "$REGISTRY/llmpipe-worker:$VERSION-cuda" docker/worker.Dockerfile --build-arg TORCH_VARIANT=cuda
build "$REGISTRY/llmpipe-mlflow:$VERSION" docker/mlflow.Dockerfile
