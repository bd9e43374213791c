# A Redis image from Debian's redis-server, for machines without Docker Hub: it
# stands in for `redis:7.2` in docker-compose.yml (REDIS_IMAGE). Built by
# deploy/docker/make-base-image.sh on its Debian base:
#
#   docker build --network host -f deploy/docker/redis.Dockerfile \
#     --build-arg BASE_IMAGE=docl-base:bookworm -t docl-redis:bookworm deploy/docker
#
# Like the official image: `redis-server` and `redis-cli` on PATH, data in /data
# (a volume), an unprivileged user. Debian 12 ships Redis 7.0.15; redis.conf runs
# on Redis 6.2 and 7.x (docs/deploy.md, "Redis durability").
ARG BASE_IMAGE=docl-base:bookworm
FROM ${BASE_IMAGE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data /usr/local/etc/redis \
 && chown redis:redis /data

VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
