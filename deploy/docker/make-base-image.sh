#!/usr/bin/env bash
# Build the two images docker-compose.yml starts from, on a machine that reaches
# Debian's mirror and the package indexes but no image registry (no Docker Hub):
#
#   docl-base:bookworm   Debian 12 minbase + python3 (3.11), venv, pip, CA certificates,
#                        debootstrap'ed from the machine's Debian mirror and `docker import`ed;
#                        with this machine's pip configuration and local wheel folders
#                        copied in (e.g. a CPU torch wheel in /opt/wheels), so that
#                        `pip install` inside a `docker build` finds what pip finds here.
#                        It stands in for python:3.11-slim-bookworm (BASE_IMAGE).
#   docl-redis:bookworm  Debian's redis-server on that base; it stands in for redis:7.2
#                        (REDIS_IMAGE).
#
#   deploy/docker/make-base-image.sh                 # both images (skips those that exist)
#   DOCL_BASE_REBUILD=1 deploy/docker/make-base-image.sh   # rebuild both
#
# Then, from the repository root (deploy/docker/build-images.sh does both steps):
#   docker build --network host -f deploy/docker/Dockerfile -t docl:0.1.0 \
#     --build-arg BASE_IMAGE=docl-base:bookworm --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#   BASE_IMAGE=docl-base:bookworm REDIS_IMAGE=docl-redis:bookworm docker-compose up
# (docs/deploy.md, "Without Docker Hub").
#
# Settings (environment):
#   DEBIAN_MIRROR      Debian mirror (default: the first .../debian URI of apt's sources)
#   DOCL_IMAGE_CACHE   where the debootstrap'ed root file system is kept as a tarball, so a
#                      second run (or CI's next run) skips debootstrap (default
#                      ~/.cache/docl-images)
#   BASE_TAG, REDIS_TAG  the image names (defaults above)
#
# Needs root (debootstrap), debootstrap, and a running Docker daemon.
set -euo pipefail

BASE_TAG=${BASE_TAG:-docl-base:bookworm}
REDIS_TAG=${REDIS_TAG:-docl-redis:bookworm}
CACHE=${DOCL_IMAGE_CACHE:-${HOME:-/root}/.cache/docl-images}
TARBALL=$CACHE/docl-base-bookworm.tar
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '== %s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

have_image() { docker image inspect "$1" > /dev/null 2>&1; }

debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  # deb822 (`URIs: …`) and one-line (`deb [opts] URI suite …`) sources alike.
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2> /dev/null \
    | sed -nE -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
    | tr ' ' '\n' | grep -E '/debian/?$' | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

# `pip config list` as one [global] section; prints the local paths it names on fd 3.
pip_conf() {
  local key value
  echo "[global]"
  # --isolated would drop the files; `list` shows files and PIP_* variables (":env:").
  while IFS= read -r line; do
    key=${line%%=*}
    key=${key##*.}
    value=${line#*=}
    value=${value#\'}
    value=${value%\'}
    case $key in
      extra-index-url | index-url)
        # file:// indexes here are local mirrors of PyPI (gigabytes): the image reaches
        # the index itself through the build's host network instead.
        value=$(tr ' ' '\n' <<< "$value" | { grep -v '^file:' || true; } | tr '\n' ' ' | sed 's/ *$//')
        [[ -z $value ]] && continue
        ;;
      find-links | cert | constraint)
        for p in $value; do echo "${p#file://}" >&3; done
        ;;
    esac
    echo "$key = $value"
  done < <(pip config list 2> /dev/null | sort -u -t= -k1,1 | awk -F= '!seen[substr($1, index($1, ".") + 1)]++')
}

build_rootfs() {
  local root mirror security
  root=$(mktemp -d /tmp/docl-rootfs.XXXXXX)
  # shellcheck disable=SC2064  # expand now: $root is local
  trap "rm -rf '$root'" EXIT
  mirror=$(debian_mirror)
  log "debootstrap bookworm from $mirror into $root"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror"
  security=${mirror%/debian}/debian-security
  cat > "$root/etc/apt/sources.list" << EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
  # This machine's CA bundle (it may carry a proxy's CA) and pip configuration, with
  # the files and wheel folders the configuration names.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  pip_conf 3> "$root/.pip-paths" > "$root/etc/pip.conf"
  while IFS= read -r p; do
    [[ -e $p ]] || continue
    mkdir -p "$root$(dirname "$p")"
    cp -a "$p" "$root$(dirname "$p")/"
  done < "$root/.pip-paths"
  rm -f "$root/.pip-paths"
  log "pip configuration of the image:"
  sed 's/^/   /' "$root/etc/pip.conf"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  mkdir -p "$CACHE"
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$root"
  log "root file system cached in $TARBALL ($(du -h "$TARBALL" | cut -f1))"
}

if [[ -n ${DOCL_BASE_REBUILD:-} ]]; then
  rm -f "$TARBALL"
  docker image rm -f "$BASE_TAG" "$REDIS_TAG" > /dev/null 2>&1 || true
fi

if have_image "$BASE_TAG"; then
  log "$BASE_TAG exists"
else
  [[ -s $TARBALL ]] || build_rootfs
  log "docker import $TARBALL as $BASE_TAG"
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$BASE_TAG"
fi

if have_image "$REDIS_TAG"; then
  log "$REDIS_TAG exists"
else
  log "docker build $REDIS_TAG (Debian's redis-server on $BASE_TAG)"
  docker build --network host -f "$HERE/redis.Dockerfile" \
    --build-arg BASE_IMAGE="$BASE_TAG" -t "$REDIS_TAG" "$HERE"
fi
log "done: $BASE_TAG, $REDIS_TAG"
