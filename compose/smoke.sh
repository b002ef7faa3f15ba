#!/usr/bin/env bash
# Build relaygate's images and run docker-compose.yaml for real with podman and podman-compose:
# `--scale worker=3`, replies streamed through the gateway, one worker killed mid-reply, every
# reply checked complete, then torn down. Prints build times, time to healthy and the outcome.
# Run as `make compose-smoke` (root with apt-get installs podman, runc and debootstrap).
# BASE_IMAGE=python:3.11-slim uses a registry image instead of a local debootstrap of Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=relaygate-smoke
WORKERS=${SMOKE_WORKERS:-3}
REQUESTS=${SMOKE_REQUESTS:-9}
API_PORT=${API_PORT:-18000}
LOCAL_BASE=localhost/relaygate-debian-base:bookworm
WORK=$(mktemp -d)
FIGURES=()
figure() { FIGURES+=("$1"); echo "== $1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# 1. Tools: podman + runc (crun rejects some hosts' cgroups), debootstrap, podman-compose.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
  else
    echo "compose-smoke: needs podman, runc and debootstrap (run as root on Debian to install them)" >&2
    exit 2
  fi
fi
COMPOSE=${PODMAN_COMPOSE:-}
if [ -z "$COMPOSE" ]; then
  if [ -x .venv/bin/podman-compose ]; then COMPOSE=.venv/bin/podman-compose
  elif command -v podman-compose >/dev/null; then COMPOSE=podman-compose
  else echo "compose-smoke: podman-compose not found (make lint installs it into .venv)" >&2; exit 2; fi
fi
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"

# Hosts behind a TLS-intercepting proxy: the build borrows the host's CA bundle as a build
# secret, which never lands in an image layer.
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
BUILD=(podman build --format docker --network host --secret "id=ca_bundle,src=$CA_BUNDLE")

# 2. A base image: Debian from debootstrap unless BASE_IMAGE names one.
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=$LOCAL_BASE
  if ! podman image exists "$BASE_IMAGE"; then
    t=$(now)
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    figure "debootstrap base image: $(since "$t")s"
  fi
fi
export BASE_IMAGE

# 3. Images: Postgres and Valkey from Debian's packages (when no registry image is given),
#    relaygate's gateway and worker images from the Dockerfiles.
if [ -z "${POSTGRES_IMAGE:-}" ]; then
  POSTGRES_IMAGE=localhost/relaygate-postgres:smoke VALKEY_IMAGE=localhost/relaygate-valkey:smoke
  t=$(now)
  "${BUILD[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f compose/images/postgres.Dockerfile -t "$POSTGRES_IMAGE" compose/images >"$WORK/build-postgres.log" 2>&1 \
    || { tail -20 "$WORK/build-postgres.log"; exit 1; }
  "${BUILD[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f compose/images/valkey.Dockerfile -t "$VALKEY_IMAGE" compose/images >"$WORK/build-valkey.log" 2>&1 \
    || { tail -20 "$WORK/build-valkey.log"; exit 1; }
  figure "build postgres + valkey images: $(since "$t")s"
fi
export POSTGRES_IMAGE VALKEY_IMAGE
export RELAYGATE_API_IMAGE=localhost/relaygate-api:smoke RELAYGATE_WORKER_IMAGE=localhost/relaygate-worker:smoke
for kind in api worker; do
  image=RELAYGATE_${kind^^}_IMAGE
  t=$(now)
  "${BUILD[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "Dockerfile.$kind" -t "${!image}" . >"$WORK/build-$kind.log" 2>&1 \
    || { tail -20 "$WORK/build-$kind.log"; exit 1; }
  figure "build $kind image: $(since "$t")s ($(podman image inspect --format '{{.Size}}' "${!image}" | awk '{printf "%.0f MB", $1/1e6}'))"
done

# 4. Up. podman < 4.6 cannot wait for `service_healthy` (podman-compose skips those conditions)
#    and without systemd podman runs no health checks by itself: the services restart until
#    their dependencies answer, and this script runs each health check until it passes.
#    --no-deps: podman 4.3 cannot start a container whose `--requires` dependency has one too.
export JWT_SECRET_KEY=${JWT_SECRET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export API_PORT
PC=("$COMPOSE" -p "$PROJECT" -f docker-compose.yaml -f compose/smoke.override.yaml)
cleanup() {
  "${PC[@]}" down -v -t 10 >/dev/null 2>&1 || true
  # podman-compose's `down` may miss scaled replicas that a restart policy brought back.
  podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
container() { podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" --format '{{.Names}}'; }
wait_healthy() {  # wait_healthy SERVICE: run the container's health check until it passes
  local name i
  for name in $(container "$1"); do
    for i in $(seq 1 120); do
      podman healthcheck run "$name" >/dev/null 2>&1 && break
      [ "$i" = 120 ] && { echo "$1 ($name) never became healthy" >&2; podman logs --tail 30 "$name" >&2; exit 1; }
      sleep 1
    done
  done
}
t=$(now)
"${PC[@]}" up -d --no-build --no-deps --scale "worker=$WORKERS" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; exit 1; }
wait_healthy postgres; wait_healthy valkey
for i in $(seq 1 120); do  # migrate restarts on failure until Postgres answers
  state=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$(container migrate)")
  [ "$state" = "exited 0" ] && break
  [ "$i" = 120 ] && { echo "migrate did not finish: $state"; podman logs "$(container migrate)"; exit 1; }
  sleep 1
done
wait_healthy api; wait_healthy worker; wait_healthy dispatcher
figure "time to healthy (postgres, valkey, migrate, api, $WORKERS workers, dispatcher): $(since "$t")s"
mapfile -t WORKER_NAMES < <(container worker)
[ "${#WORKER_NAMES[@]}" = "$WORKERS" ] || { echo "expected $WORKERS workers, got ${WORKER_NAMES[*]}"; exit 1; }

# 5. Replies through the gateway; one worker killed mid-reply; every reply must complete.
TOKEN=$(podman exec "$(container api)" relaygate token --user smoke --tenant smoke)
set +e
python3 compose/smoke_client.py 127.0.0.1 "$API_PORT" "$TOKEN" "$REQUESTS" "${WORKER_NAMES[@]}" | tee "$WORK/client.log"
status=${PIPESTATUS[0]}
set -e
while read -r line; do figure "$line"; done < <(grep -E '^(killed|requests|time)' "$WORK/client.log")
# How the survivors' reapers found the killed worker's requests: its presence, or its lease lapsing.
found=$(for name in "${WORKER_NAMES[@]}"; do podman logs "$name" 2>&1; done)
figure "requeued by presence: $(grep -c 'worker gone; requeued' <<<"$found"), by lease: $(grep -c 'lease expired; requeued' <<<"$found")"
if [ "$status" != 0 ]; then
  for name in $(container api) "${WORKER_NAMES[@]}"; do echo "--- $name"; podman logs --tail 20 "$name" 2>&1; done
fi

echo
echo "compose-smoke figures:"
for f in "${FIGURES[@]}"; do echo "  $f"; done
[ "$status" = 0 ] && echo "compose-smoke: PASS" || echo "compose-smoke: FAIL"
exit "$status"
