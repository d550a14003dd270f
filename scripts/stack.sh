#!/usr/bin/env bash
# The docker-compose.yml stack as two local processes (`make stack`), with the same variables:
#   teacher: `robustkd serve` in the background (ROBUSTKD_CACHE_ROOT=$STACK_DIR/cache, an API token,
#            a free port unless ROBUSTKD_PORT is set), waited for on /readyz;
#   trainer: the compose trainer's two commands against http://127.0.0.1:$PORT.
# The server is stopped on exit. Environment (all optional):
#   TASK           built-in task (default sentiment-rt-drugs)
#   LIMIT          rows per split of the cache (`precompute --limit`; default: all), for a quick try
#   TRAIN_ARGS     extra `robustkd train` options, e.g. "--max-steps 5"; with another ROBUSTKD_MODEL than
#                  the default, "--model <that path>" (the service names it by folder name only)
#   STACK_DIR      output folder (default runs/stack): cache/, key, ours/ (the run), teacher.log
#   READY_TIMEOUT  seconds to wait for the teacher to be ready (default 600)
#   ROBUSTKD_*     service settings (teacher_service/settings.py): ROBUSTKD_MODEL, ROBUSTKD_PORT,
#                  ROBUSTKD_API_TOKEN (default: a random one for this run), ROBUSTKD_THREADS, ...
# Relative paths are relative to the repository root.
#   LIMIT=64 TRAIN_ARGS="--max-steps 5" make stack
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -x .venv/bin/robustkd ]; then RKD=.venv/bin/robustkd; else RKD=robustkd; fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi

TASK=${TASK:-sentiment-rt-drugs}
LIMIT=${LIMIT:-}
TRAIN_ARGS=${TRAIN_ARGS:-}
STACK_DIR=${STACK_DIR:-runs/stack}
READY_TIMEOUT=${READY_TIMEOUT:-600}

export ROBUSTKD_CACHE_ROOT="$STACK_DIR/cache"
export ROBUSTKD_HOST=${ROBUSTKD_HOST:-127.0.0.1}
# the trainer below reaches the teacher at 127.0.0.1, a name the service always answers: no other is needed
export ROBUSTKD_ALLOWED_HOSTS=${ROBUSTKD_ALLOWED_HOSTS:-}
export ROBUSTKD_API_TOKEN=${ROBUSTKD_API_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(32))')}
if [ -z "${ROBUSTKD_PORT:-}" ]; then
  ROBUSTKD_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
export ROBUSTKD_PORT
URL="http://127.0.0.1:$ROBUSTKD_PORT"

mkdir -p "$STACK_DIR" "$ROBUSTKD_CACHE_ROOT"
LOG="$STACK_DIR/teacher.log"

# --- teacher -----------------------------------------------------------------------------------------
"$RKD" serve >"$LOG" 2>&1 &
SERVER_PID=$!
stop_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "stack: teacher on $URL (log $LOG), waiting for /readyz (up to ${READY_TIMEOUT}s)" >&2
deadline=$((SECONDS + READY_TIMEOUT))
until "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=2)' "$URL" \
    2>/dev/null; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "stack: the teacher exited; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "stack: the teacher was not ready after ${READY_TIMEOUT}s; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  sleep 1
done
echo "stack: teacher ready" >&2

# --- trainer: the compose trainer's commands, http://teacher:8000 -> $URL, /runs -> $STACK_DIR -------
# (compose joins them with &&; here set -e stops after a failing one, with its exit status)
"$RKD" precompute --server "$URL" --task "$TASK" ${LIMIT:+--limit "$LIMIT"} --key-file "$STACK_DIR/key"
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options: split on purpose
"$RKD" train --cache "$URL/v1/caches/$(cat "$STACK_DIR/key")" --method ours --out "$STACK_DIR/ours" $TRAIN_ARGS
echo "stack: done; run folder $STACK_DIR/ours" >&2
