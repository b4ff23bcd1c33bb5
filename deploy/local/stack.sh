#!/usr/bin/env bash
# The local stack on 127.0.0.1: a Kafka-API broker (nisshi), an S3 server (Garage) and
# PostgreSQL, plus ffmpeg, and Debian's Prometheus scraping Sluice. Installs what is missing,
# reuses what is there, waits until each server answers. Idempotent: running `up` twice is harmless.
# Prometheus is optional: when it cannot be installed or started, `up` says so and still succeeds.
#
#   deploy/local/stack.sh up | down | status | install | postgres | kafka | s3 | prometheus
#   deploy/local/stack.sh packages PKG...
#   deploy/local/stack.sh target add NAME HOST:PORT SERVICE | target remove NAME | target list
#
# `target add` registers a `sluice serve` process with Prometheus (file service discovery);
# `sluice up` on 127.0.0.1:8080 is always a target (deploy/prometheus/prometheus.yml).
#
# State (data, logs, pid files) lives under .sluice/stack/ (git-ignored). Settings come from the
# same variables Sluice reads: SLUICE_DATABASE_URL, SLUICE_S3_ACCESS_KEY_ID,
# SLUICE_S3_SECRET_ACCESS_KEY, SLUICE_S3_BUCKET, SLUICE_S3_REGION.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK_DIR="$ROOT/.sluice/stack"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

NISSHI_VERSION=0.8.1
GARAGE_VERSION=2.5.0
KAFKA_PORT=9092
S3_PORT=3900
GARAGE_RPC_PORT=3901
GARAGE_ADMIN_PORT=3903
PROMETHEUS_PORT=9090
PROMETHEUS_CONFIG="$ROOT/deploy/prometheus/prometheus.yml"
PROMETHEUS_TARGETS="$STACK_DIR/prometheus/targets"
DATABASE_URL_DEFAULT="postgres://postgres:postgres@localhost:5432/sluice"
S3_KEY_ID="${SLUICE_S3_ACCESS_KEY_ID:-GK5111ce000000000000000001}"
S3_SECRET="${SLUICE_S3_SECRET_ACCESS_KEY:-5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111}"
S3_BUCKET="${SLUICE_S3_BUCKET:-sluice}"
S3_REGION="${SLUICE_S3_REGION:-us-east-1}"

say() { printf '\033[1m[stack]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[stack] error:\033[0m %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds [log]
  local deadline=$((SECONDS + $3))
  until port_open "$1"; do
    if (( SECONDS > deadline )); then
      [ -n "${4:-}" ] && tail -n 20 "$4" >&2
      die "$2 did not open port $1 within $3 s"
    fi
    sleep 0.2
  done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }

APT_UPDATED=
apt_install() { # packages... (only the missing ones are installed)
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

cargo_tool() { # binary crate version minutes [extra cargo flags]
  local bin=$1 crate=$2 version=$3 minutes=$4; shift 4
  if command -v "$bin" >/dev/null && "$bin" --version 2>/dev/null | grep -q "$version"; then return 0; fi
  say "building $crate $version with cargo install (about $minutes minutes on 2 cores, once per machine)"
  # A lighter release profile than the crates' own (opt-level 3) for the Rust code: local
  # development runs the broker and the object store far below their ceilings, and it shortens
  # the build (docs/capacity.md has both builds' times and throughput). The embedded SQLite C
  # library (nisshi's storage) stays at -O3: the broker's idle polling is SQLite statements.
  # SLUICE_TOOLS_OPT_LEVEL=3 builds everything as published.
  cargo install "$crate@$version" --locked \
    --config "profile.release.opt-level=${SLUICE_TOOLS_OPT_LEVEL:-1}" \
    --config 'profile.release.package.libsql-ffi.opt-level=3' "$@"
}

install() {
  apt_install ffmpeg ca-certificates
  install_prometheus
  cargo_tool nisshi nisshi "$NISSHI_VERSION" 8-13 --ignore-rust-version
  cargo_tool garage garage "$GARAGE_VERSION" 5-7
}

# ---------- PostgreSQL ----------
pg_reachable() { pg_isready -q -d "$1" -t 2 2>/dev/null && psql "$1" -qtAc 'SELECT 1' >/dev/null 2>&1; }

postgres_up() {
  local url="${SLUICE_DATABASE_URL:-$DATABASE_URL_DEFAULT}"
  if command -v pg_isready >/dev/null && pg_reachable "$url"; then
    say "PostgreSQL: reachable at $(sed -E 's#://([^:]*):[^@]*@#://\1:***@#' <<<"$url")"
    return 0
  fi
  if [ -n "${SLUICE_DATABASE_URL:-}" ] && [ "$SLUICE_DATABASE_URL" != "$DATABASE_URL_DEFAULT" ]; then
    die "SLUICE_DATABASE_URL is set but not reachable; unset it to use the local PostgreSQL"
  fi
  apt_install postgresql
  local version
  version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
    say "PostgreSQL: creating cluster $version/main"
    as_root pg_createcluster "$version" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
    say "PostgreSQL: starting cluster $version/main"
    as_root pg_ctlcluster "$version" main start
    touch "$STACK_DIR/postgres.started-by-stack"
  fi
  local deadline=$((SECONDS + 30))
  until pg_isready -q -h 127.0.0.1 -p 5432; do
    (( SECONDS > deadline )) && die "PostgreSQL did not accept connections within 30 s"
    sleep 0.3
  done
  as_root su postgres -c "psql -qtAc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  if ! as_root su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'sluice'\"" | grep -q 1; then
    as_root su postgres -c "createdb sluice"
  fi
  pg_reachable "$DATABASE_URL_DEFAULT" || die "PostgreSQL is running but $DATABASE_URL_DEFAULT does not connect"
  say "PostgreSQL: ready on 127.0.0.1:5432 (database sluice)"
}

# ---------- Kafka API: nisshi ----------
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

kafka_up() {
  local dir="$STACK_DIR/kafka"
  mkdir -p "$dir"
  if port_open "$KAFKA_PORT"; then say "Kafka: already listening on 127.0.0.1:$KAFKA_PORT"; return 0; fi
  say "Kafka: starting nisshi on 127.0.0.1:$KAFKA_PORT (storage $dir/kafka.db)"
  # nisshi reads a .env file from its working directory: run it in its own state directory.
  # setsid + exec: the server is the background job itself, in its own session, holding none
  # of this script's file descriptors, so callers waiting on our output do not wait on it.
  (cd "$dir" && RUST_LOG="${NISSHI_LOG:-warn}" exec setsid nohup nisshi broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "sqlite://kafka.db" \
      --group-initial-rebalance-delay 500ms \
      >>"$dir/nisshi.log" 2>&1 </dev/null) &
  echo $! >"$dir/nisshi.pid"
  wait_port "$KAFKA_PORT" nisshi 30 "$dir/nisshi.log"
  say "Kafka: ready"
}

# ---------- S3 API: Garage ----------
garage_cli() { garage -c "$STACK_DIR/s3/garage.toml" "$@"; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

garage_config() {
  local dir="$STACK_DIR/s3" conf="$STACK_DIR/s3/garage.toml"
  mkdir -p "$dir/meta" "$dir/data"
  if [ -f "$conf" ]; then
    # Media is compressed already: zstd on every block only costs CPU (measured: Garage was the
    # busiest process of the pipeline). Older configurations get the setting added.
    grep -q '^compression_level' "$conf" || sed -i 's/^db_engine = .*/&\ncompression_level = "none"/' "$conf"
    return 0
  fi
  (umask 077 && : >"$conf")
  cat >"$conf" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$(random_hex 32)"

[s3_api]
api_bind_addr = "127.0.0.1:$S3_PORT"
s3_region = "$S3_REGION"
root_domain = ".s3.localhost"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
admin_token = "$(random_hex 24)"
metrics_token = "$(random_hex 24)"
TOML
}

s3_up() {
  local dir="$STACK_DIR/s3"
  apt_install curl
  garage_config
  if port_open "$S3_PORT"; then
    say "S3: Garage already listening on 127.0.0.1:$S3_PORT"
  else
    say "S3: starting Garage on 127.0.0.1:$S3_PORT (data under $dir)"
    (cd "$dir" && RUST_LOG="${GARAGE_LOG:-warn}" exec setsid nohup garage -c "$dir/garage.toml" server \
        >>"$dir/garage.log" 2>&1 </dev/null) &
    echo $! >"$dir/garage.pid"
    wait_port "$GARAGE_RPC_PORT" garage 30 "$dir/garage.log"
  fi
  local deadline=$((SECONDS + 30)) node=""
  until node=$(garage_cli node id -q 2>/dev/null); do
    (( SECONDS > deadline )) && die "garage does not answer its CLI; see $dir/garage.log"
    sleep 0.3
  done
  node=${node%%@*}
  # Read whole outputs before grepping: with pipefail, `grep -q` closing the pipe early would
  # make the pipeline fail and the check lie.
  local layout; layout=$(garage_cli layout show 2>/dev/null || true)
  if ! grep -q "${node:0:16}" <<<"$layout"; then
    say "S3: applying the one-node layout"
    garage_cli layout assign -z local -c 1G "$node" >/dev/null
    garage_cli layout apply --version 1 >/dev/null
  fi
  if ! garage_cli key info "$S3_KEY_ID" >/dev/null 2>&1; then
    say "S3: importing access key $S3_KEY_ID"
    garage_cli key import --yes -n sluice "$S3_KEY_ID" "$S3_SECRET" >/dev/null
  fi
  # Tests create (and remove) a bucket of their own, so the key may create buckets.
  garage_cli key allow --create-bucket "$S3_KEY_ID" >/dev/null
  if ! garage_cli bucket info "$S3_BUCKET" >/dev/null 2>&1; then
    say "S3: creating bucket $S3_BUCKET"
    garage_cli bucket create "$S3_BUCKET" >/dev/null
  fi
  garage_cli bucket allow --read --write --owner "$S3_BUCKET" --key "$S3_KEY_ID" >/dev/null
  deadline=$((SECONDS + 30))
  until curl -fsS "http://127.0.0.1:$GARAGE_ADMIN_PORT/health" >/dev/null 2>&1; do
    (( SECONDS > deadline )) && die "Garage /health did not turn healthy within 30 s"
    sleep 0.3
  done
  say "S3: ready (bucket $S3_BUCKET)"
}

# ---------- Prometheus (optional) ----------
# Debian's prometheus binary, run by this script with deploy/prometheus/prometheus.yml; the
# package's own service (systemd or /etc/init.d, with /etc/prometheus) is never used.
prom_ready() { curl -fsS -m 2 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1; }

PROMETHEUS_TRIED=
install_prometheus() {
  # Optional: a machine without it still runs every test; `./dev demo` shows it when present.
  # In a subshell, so that a failure (no root, no network) cannot end this script; tried once.
  [ -n "$PROMETHEUS_TRIED" ] && return 0
  PROMETHEUS_TRIED=1
  ( apt_install prometheus ) || say "Prometheus: could not install Debian's prometheus package (optional; continuing)"
}

prometheus_up() {
  local dir="$STACK_DIR/prometheus"
  mkdir -p "$dir/data" "$PROMETHEUS_TARGETS"
  command -v prometheus >/dev/null || install_prometheus
  if ! command -v prometheus >/dev/null; then
    say "Prometheus: unavailable (Debian's prometheus package is not installed); continuing without it"
    return 1
  fi
  if ! promtool check config "$PROMETHEUS_CONFIG" >"$dir/check.log" 2>&1; then
    cat "$dir/check.log" >&2
    say "Prometheus: $PROMETHEUS_CONFIG does not pass promtool check config; not starting it"
    return 1
  fi
  if pid_alive "$dir/prometheus.pid"; then
    # Ours already: reload so edited rules or scrape settings apply.
    curl -fsS -m 5 -X POST "http://127.0.0.1:$PROMETHEUS_PORT/-/reload" >/dev/null 2>&1 || true
    say "Prometheus: already running on http://127.0.0.1:$PROMETHEUS_PORT (configuration reloaded)"
    return 0
  fi
  if port_open "$PROMETHEUS_PORT"; then
    say "Prometheus: port $PROMETHEUS_PORT is taken by another process (the prometheus package's own service?"
    say "  stop it: systemctl disable --now prometheus); not starting the stack's Prometheus"
    return 1
  fi
  say "Prometheus: starting on http://127.0.0.1:$PROMETHEUS_PORT (data under $dir)"
  (cd "$dir" && exec setsid nohup prometheus \
      --config.file="$PROMETHEUS_CONFIG" \
      --storage.tsdb.path="$dir/data" \
      --storage.tsdb.retention.time=7d \
      --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
      --web.enable-lifecycle \
      --log.level=warn \
      >>"$dir/prometheus.log" 2>&1 </dev/null) &
  echo $! >"$dir/prometheus.pid"
  local deadline=$((SECONDS + 60))
  until prom_ready; do
    if ! pid_alive "$dir/prometheus.pid"; then
      tail -n 20 "$dir/prometheus.log" >&2
      say "Prometheus: exited during start-up; see $dir/prometheus.log"
      return 1
    fi
    if (( SECONDS > deadline )); then
      tail -n 20 "$dir/prometheus.log" >&2
      say "Prometheus: not ready within 60 s; see $dir/prometheus.log"
      return 1
    fi
    sleep 0.3
  done
  say "Prometheus: ready, scraping Sluice on 127.0.0.1:8080 and $PROMETHEUS_TARGETS/*.json"
}

# Registers (or forgets) a `sluice serve` process as a scrape target: one file-SD JSON file each.
target() {
  mkdir -p "$PROMETHEUS_TARGETS"
  case "${1:-}" in
    add)
      [ $# -eq 4 ] || die "usage: $0 target add NAME HOST:PORT SERVICE"
      [[ "$2" =~ ^[A-Za-z0-9_.-]+$ ]] || die "target name must be letters, digits, '.', '_' or '-'"
      local tmp="$PROMETHEUS_TARGETS/.$2.json.tmp"
      printf '[{"targets": ["%s"], "labels": {"service": "%s"}}]\n' "$3" "$4" >"$tmp"
      mv "$tmp" "$PROMETHEUS_TARGETS/$2.json"  # atomic: Prometheus never reads half a file
      ;;
    remove) [ $# -eq 2 ] || die "usage: $0 target remove NAME"; rm -f "$PROMETHEUS_TARGETS/$2.json" ;;
    list) cat "$PROMETHEUS_TARGETS"/*.json 2>/dev/null || true ;;
    *) die "usage: $0 target add NAME HOST:PORT SERVICE | remove NAME | list" ;;
  esac
}

stop_pid() { # pidfile name
  if pid_alive "$1"; then
    local pid; pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

up() {
  mkdir -p "$STACK_DIR"
  apt_install curl ca-certificates
  install
  postgres_up
  kafka_up
  s3_up
  local prom="Prometheus unavailable"
  if prometheus_up; then prom="Prometheus http://127.0.0.1:$PROMETHEUS_PORT"; fi
  say "local stack is up: Kafka 127.0.0.1:$KAFKA_PORT, S3 http://127.0.0.1:$S3_PORT, PostgreSQL 127.0.0.1:5432, $prom"
}

down() {
  stop_pid "$STACK_DIR/prometheus/prometheus.pid" prometheus
  stop_pid "$STACK_DIR/kafka/nisshi.pid" nisshi
  stop_pid "$STACK_DIR/s3/garage.pid" garage
  if [ -f "$STACK_DIR/postgres.started-by-stack" ]; then
    local version; version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
    say "stopping PostgreSQL $version/main (started by this script)"
    as_root pg_ctlcluster "$version" main stop || true
    rm -f "$STACK_DIR/postgres.started-by-stack"
  fi
  say "local stack is down"
}

status() {
  local rc=0
  for entry in "Kafka:$KAFKA_PORT" "S3:$S3_PORT" "PostgreSQL:5432"; do
    if port_open "${entry#*:}"; then echo "${entry%%:*}: up (127.0.0.1:${entry#*:})"; else echo "${entry%%:*}: down"; rc=1; fi
  done
  # Optional: reported, but its absence does not make the stack unusable.
  if prom_ready; then
    echo "Prometheus: up (http://127.0.0.1:$PROMETHEUS_PORT)"
  elif command -v prometheus >/dev/null; then
    echo "Prometheus: down (optional)"
  else
    echo "Prometheus: not installed (optional)"
  fi
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  install) install ;;
  postgres|kafka|s3|prometheus) mkdir -p "$STACK_DIR"; "$1_up" ;;
  packages) shift; apt_install "$@" ;;
  target) shift; target "$@" ;;
  *) echo "usage: $0 up|down|status|install|postgres|kafka|s3|prometheus|packages PKG...|target ..." >&2; exit 2 ;;
esac
