#!/usr/bin/env bash
# What the data path costs, per component, on the multi-host harness (deploy/local/hosts.sh):
# ingest on host a, preprocess on host b (then on b and c), Kafka, S3 and PostgreSQL on the stack
# host. Each run pushes ITEMS photo-like JPEGs through a's ingest, waits until every one is
# processed, and reports the accepted and processed rates and the CPU each process spent per
# item (from /proc/PID/stat), so a target rate turns into cores (docs/capacity.md).
#
#   deploy/local/capacity.sh [ITEMS] [WIDTHxHEIGHT] [WORKERS...]   (600 1920x1080 1 2)
#
# SLUICE_BIN picks the binary (default: the release build if there is one, else the debug build);
# PUSH_CONCURRENCY (16) is the uploader's concurrency. Needs root; all hosts share this machine's
# cores, so two worker hosts scale only as far as the cores they share.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HOSTS="$ROOT/deploy/local/hosts.sh"
ITEMS=${1:-600}
SIZE=${2:-1920x1080}
shift $(( $# > 2 ? 2 : $# ))
WORKER_RUNS=("$@")
[ ${#WORKER_RUNS[@]} -gt 0 ] || WORKER_RUNS=(1 2)
PUSH_CONCURRENCY=${PUSH_CONCURRENCY:-16}
TAG=capacity
# shellcheck source=deploy/local/measure.sh
source "$ROOT/deploy/local/measure.sh"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
[[ "$SIZE" =~ ^([0-9]+)x([0-9]+)$ ]] || die "size is WIDTHxHEIGHT, e.g. 1920x1080"
WIDTH=${BASH_REMATCH[1]} HEIGHT=${BASH_REMATCH[2]}

bash "$HOSTS" up >/dev/null
bash "$HOSTS" reset
ID="cap$(date +%s)"
WORK=$(mktemp -d "/tmp/sluice-capacity.XXXXXX")
while IFS='=' read -r key value; do export "$key=$value"; done < <(bash "$HOSTS" env)
SERVER_URL=${SLUICE_DATABASE_URL%/*}
export SLUICE_DATABASE_URL="$SERVER_URL/sluice_$ID"
psql "$SERVER_URL/postgres" -qc "CREATE DATABASE sluice_$ID"
export SLUICE_KAFKA_TOPIC_PREFIX="$ID." SLUICE_S3_BUCKET="sluice-$ID" RUST_LOG=warn
for group in preprocess trainer trainer_coordinator trainer_retrain inference_batch inference_monitor ingest_capture webhooks; do
  export "SLUICE_${group^^}_GROUP_ID=$ID.$group"
done

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$SERVER_URL/postgres" -qc "DROP DATABASE IF EXISTS sluice_$ID WITH (FORCE)" 2>/dev/null || true
  delete_topics "$SLUICE_KAFKA_BROKERS" "$ID."
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns exec slc-a "$SLUICE" migrate >/dev/null
TOKEN=$(ip netns exec slc-a "$SLUICE" token create --name capacity --scope admin)

declare -A PID_OF
serve() { # host service port
  local host=$1 service=$2 port=$3 address
  address=$(bash "$HOSTS" addr "$host")
  SLUICE_HTTP_ADDR="$address:$port" SLUICE_STATE_DIR="$WORK/$host-$service" \
    ip netns exec "slc-$host" "$SLUICE" serve "$service" >"$WORK/$host-$service.log" 2>&1 &
  PIDS+=($!)
  PID_OF["$host-$service"]=$!
  local deadline=$((SECONDS + 60))
  until curl -fs "http://$address:$port/readyz" >/dev/null; do
    (( SECONDS < deadline )) || { tail -n 20 "$WORK/$host-$service.log" >&2; die "$service on $host not ready in 60 s"; }
    sleep 0.3
  done
}

# CPU ticks a process used, its reaped children's included (PostgreSQL's exited backends).
ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
stack_ticks() { # comm: nisshi, garage or postgres, summed over the stack host's processes
  local total=0 pid
  for pid in $(ip netns pids slc-stack); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && total=$((total + $(ticks "$pid")))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)

say "generating $ITEMS JPEGs of $SIZE"
"$SLUICE" generate photos "$WORK/photos" --count "$ITEMS" --width "$WIDTH" --height "$HEIGHT" >/dev/null
BYTES=$(du -sb "$WORK/photos" | cut -f1)

serve a ingest 8080
serve b preprocess 8080
echo "| preprocess hosts | items | accepted/s | processed/s | CPU ms/item: ingest | preprocess | Kafka (nisshi) | S3 (Garage) | PostgreSQL | all |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for workers in "${WORKER_RUNS[@]}"; do
  if (( workers >= 2 )) && [ -z "${PID_OF[c-preprocess]:-}" ]; then
    serve c preprocess 8080
    sleep 10 # the group rebalances over b and c
  fi
  dataset="run-$workers"
  procs=(a-ingest b-preprocess)
  (( workers >= 2 )) && procs+=(c-preprocess)
  declare -A before=()
  for p in "${procs[@]}"; do before[$p]=$(ticks "${PID_OF[$p]}"); done
  for comm in nisshi garage postgres; do before[$comm]=$(stack_ticks "$comm"); done
  started=$(date +%s.%N)
  "$SLUICE" push "$WORK/photos" --dataset "$dataset" --url "http://$(bash "$HOSTS" addr a):8080" \
    --token "$TOKEN" --concurrency "$PUSH_CONCURRENCY" >"$WORK/push-$workers.log" 2>&1 \
    || { cat "$WORK/push-$workers.log" >&2; die "push failed"; }
  pushed=$(date +%s.%N)
  deadline=$((SECONDS + 600))
  while :; do
    read -r done_count failed < <(psql "$SLUICE_DATABASE_URL" -tAF' ' -c \
      "SELECT count(*) FILTER (WHERE status = 'processed'), count(*) FILTER (WHERE status = 'failed') FROM media WHERE dataset = '$dataset'")
    (( failed == 0 )) || die "$failed items failed (logs in $WORK)"
    (( done_count >= ITEMS )) && break
    (( SECONDS < deadline )) || die "only $done_count of $ITEMS processed in 600 s"
    sleep 0.2
  done
  finished=$(date +%s.%N)
  ms() { awk -v a="$1" -v b="$2" -v n="$ITEMS" -v hz="$HZ" 'BEGIN { printf "%.1f", (b - a) * 1000 / hz / n }'; }
  preprocess_ms=0
  for p in b-preprocess c-preprocess; do
    [[ " ${procs[*]} " == *" $p "* ]] || continue
    preprocess_ms=$(awk -v x="$preprocess_ms" -v y="$(ms "${before[$p]}" "$(ticks "${PID_OF[$p]}")")" 'BEGIN { print x + y }')
  done
  ingest_ms=$(ms "${before[a-ingest]}" "$(ticks "${PID_OF[a-ingest]}")")
  nisshi_ms=$(ms "${before[nisshi]}" "$(stack_ticks nisshi)")
  garage_ms=$(ms "${before[garage]}" "$(stack_ticks garage)")
  postgres_ms=$(ms "${before[postgres]}" "$(stack_ticks postgres)")
  all_ms=$(awk -v a="$ingest_ms" -v b="$preprocess_ms" -v c="$nisshi_ms" -v d="$garage_ms" -v e="$postgres_ms" 'BEGIN { printf "%.1f", a + b + c + d + e }')
  rates=$(awk -v s="$started" -v p="$pushed" -v f="$finished" -v n="$ITEMS" 'BEGIN { printf "%.0f | %.0f", n / (p - s), n / (f - s) }')
  echo "| $workers | $ITEMS | $rates | $ingest_ms | $preprocess_ms | $nisshi_ms | $garage_ms | $postgres_ms | $all_ms |"
done
say "$ITEMS JPEGs of $SIZE ($((BYTES / ITEMS / 1024)) KiB each on average), pushed at concurrency $PUSH_CONCURRENCY with $SLUICE on $(nproc) cores"
