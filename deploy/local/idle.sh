#!/usr/bin/env bash
# What an idle Sluice costs: starts the local stack (deploy/local/stack.sh up), runs `sluice up`
# on fresh topics, a fresh database and bucket, waits SETTLE seconds, then reports the CPU each
# process spent over SECONDS (from /proc/PID/stat, in % of one core): the broker, the object
# store, PostgreSQL (every server process) and Sluice, with Sluice's busiest threads.
#
#   deploy/local/idle.sh [SECONDS] [SETTLE]    (30 40)
#
# SLUICE_BIN picks the binary (default: the release build if there is one, else the debug
# build); any SLUICE_* setting in the environment applies, e.g.
#   SLUICE_KAFKA_IDLE_CHECK_MS=5000 deploy/local/idle.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SECONDS_MEASURED=${1:-30}
SETTLE=${2:-40}
TAG=idle
# shellcheck source=deploy/local/measure.sh
source "$ROOT/deploy/local/measure.sh"

bash "$ROOT/deploy/local/stack.sh" up >/dev/null
ID="idle$(date +%s)"
WORK=$(mktemp -d "/tmp/sluice-idle.XXXXXX")
SERVER_URL="postgres://postgres:postgres@localhost:5432"
export SLUICE_DATABASE_URL="$SERVER_URL/sluice_$ID"
psql "$SERVER_URL/postgres" -qc "CREATE DATABASE sluice_$ID"
export SLUICE_KAFKA_TOPIC_PREFIX="$ID." SLUICE_S3_BUCKET="sluice-$ID" RUST_LOG=warn
export SLUICE_STATE_DIR="$WORK/state" SLUICE_HTTP_ADDR=127.0.0.1:0
for group in preprocess trainer trainer_coordinator trainer_retrain inference_batch inference_monitor ingest_capture webhooks; do
  export "SLUICE_${group^^}_GROUP_ID=$ID.$group"
done

SLUICE_PID=
cleanup() {
  [ -z "$SLUICE_PID" ] || { kill "$SLUICE_PID" 2>/dev/null || true; wait "$SLUICE_PID" 2>/dev/null || true; }
  psql "$SERVER_URL/postgres" -qc "DROP DATABASE IF EXISTS sluice_$ID WITH (FORCE)" 2>/dev/null || true
  delete_topics "${SLUICE_KAFKA_BROKERS:-127.0.0.1:9092}" "$ID."
  rm -rf "$WORK"
}
trap cleanup EXIT

"$SLUICE" up >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
say "sluice up ($SLUICE) on topics $ID.*; measuring for $SECONDS_MEASURED s after $SETTLE s"
sleep "$SETTLE"
kill -0 "$SLUICE_PID" 2>/dev/null || { tail -n 20 "$WORK/sluice.log" >&2; die "sluice up exited"; }

# Clock ticks (user + system) of a process, or of a thread with a /task/TID path.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
pids_of() { pgrep -x "$1" | tr '\n' ' '; }
declare -A GROUPS_PIDS=(
  [broker]="$(pids_of nisshi)"
  [s3]="$(pids_of garage)"
  [postgresql]="$(pgrep -u postgres | tr '\n' ' ')"
  [sluice]="$SLUICE_PID"
)
declare -A BEFORE AFTER
snapshot() {
  local -n into=$1
  local name pid total
  for name in "${!GROUPS_PIDS[@]}"; do
    total=0
    for pid in ${GROUPS_PIDS[$name]}; do total=$((total + $(ticks "$pid"))); done
    into[$name]=$total
  done
  local task comm
  for task in /proc/"$SLUICE_PID"/task/*; do
    comm=$(cat "$task/comm" 2>/dev/null) || continue  # a thread that just ended
    into["thread ${task##*/} $comm"]=$(ticks "${task#/proc/}")
  done
}
snapshot BEFORE
sleep "$SECONDS_MEASURED"
snapshot AFTER
HZ=$(getconf CLK_TCK)
pct() { awk -v t="$1" -v hz="$HZ" -v s="$SECONDS_MEASURED" 'BEGIN { printf "%.1f", 100 * t / hz / s }'; }
total=0
printf '%-12s %8s\n' component '% core'
for name in broker s3 postgresql sluice; do
  used=$(( ${AFTER[$name]} - ${BEFORE[$name]:-0} ))
  total=$((total + used))
  printf '%-12s %8s\n' "$name" "$(pct "$used")"
done
printf '%-12s %8s\n' total "$(pct "$total")"
echo "Sluice's busiest threads (% core):"
for key in "${!AFTER[@]}"; do
  [[ $key == thread* ]] || continue
  used=$(( ${AFTER[$key]} - ${BEFORE[$key]:-0} ))
  [ "$used" -gt 0 ] && printf '  %6s  %s\n' "$(pct "$used")" "${key#thread * }"
done | sort -rn | head -n 12
