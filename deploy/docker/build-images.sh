#!/usr/bin/env bash
# The images docker-compose.yml runs, built without Docker Hub (what .ci/run does):
#
#   1. base   deploy/docker/make-base-image.sh: docl-base:bookworm (debootstrap +
#             docker import, this machine's pip configuration and local wheels) and
#             docl-redis:bookworm (Debian's redis-server), each skipped when it exists
#   2. docl   docl:0.1.0 from deploy/docker/Dockerfile as shipped, with build args
#             only; the build uses the host network for the package indexes
#
#   deploy/docker/build-images.sh        # prints "== step NAME: N s" per step
#
# Then: BASE_IMAGE=docl-base:bookworm REDIS_IMAGE=docl-redis:bookworm docker-compose up
# Settings: DOCL_IMAGE (docl:0.1.0), BASE_TAG, REDIS_TAG, TORCH_INDEX_URL (default:
# pip's index, where this machine's pip configuration finds the CPU torch wheel), and
# those of make-base-image.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

DOCL_IMAGE=${DOCL_IMAGE:-docl:0.1.0}
export BASE_TAG=${BASE_TAG:-docl-base:bookworm}
export REDIS_TAG=${REDIS_TAG:-docl-redis:bookworm}
if [[ -z ${TORCH_INDEX_URL:-} ]]; then
  TORCH_INDEX_URL=${PIP_INDEX_URL:-$(pip config get global.index-url 2> /dev/null || true)}
  TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}
fi

step() {
  local name=$1 t0=$SECONDS
  shift
  "$@"
  echo "== step $name: $((SECONDS - t0)) s"
}

step base deploy/docker/make-base-image.sh
step docl docker build --network host -f deploy/docker/Dockerfile -t "$DOCL_IMAGE" \
  --build-arg BASE_IMAGE="$BASE_TAG" --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" .
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
  | grep -E "^(${DOCL_IMAGE%%:*}|${BASE_TAG%%:*}|${REDIS_TAG%%:*}):" || true
