# A Valkey-compatible server from Debian's packages (bookworm ships Redis 7.0), for hosts with
# no registry (compose/smoke.sh). valkey-server / valkey-cli name the Redis binaries so
# docker-compose.yaml's command and health check work unchanged.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
    && ln -s /usr/bin/redis-server /usr/local/bin/valkey-server \
    && ln -s /usr/bin/redis-cli /usr/local/bin/valkey-cli \
    && install -d -o redis -g redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["valkey-server", "--protected-mode", "no"]
