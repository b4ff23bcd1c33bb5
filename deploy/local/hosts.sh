#!/usr/bin/env bash
# Several hosts on this one machine: Linux network namespaces joined by veth pairs to a private
# bridge, each with its own address, so Sluice's processes talk over a network that can be cut,
# slowed or made lossy per host, the way a real host drops off a network (no polite process exit).
#
#   deploy/local/hosts.sh up            # the bridge, the stack host and the Sluice hosts
#   deploy/local/hosts.sh down          # stops what runs in them and removes them
#   deploy/local/hosts.sh status
#   deploy/local/hosts.sh reset         # stops every process on hosts a-e and heals every link
#   deploy/local/hosts.sh env           # SLUICE_* settings that reach the stack host (eval them)
#   deploy/local/hosts.sh addr HOST     # a host's address
#   deploy/local/hosts.sh exec HOST CMD...   # run CMD on HOST (in its network namespace)
#   deploy/local/hosts.sh cut HOST | heal HOST   # take HOST's link down / bring it back
#   deploy/local/hosts.sh degrade HOST LOSS RATE # a lossy, slow link: drop LOSS % of packets each way
#                                                # (iptables statistic) and limit each way to RATE
#                                                # (tc tbf), e.g. `degrade c 5 20mbit`
#   deploy/local/hosts.sh restore HOST           # undo degrade
#   deploy/local/hosts.sh services      # the Sluice services the multi-host test places, one per line
#
# Hosts: `stack` (10.77.0.2) runs Kafka (nisshi), S3 (Garage) and PostgreSQL (a cluster of its
# own, `hosts`, on port 5433), all bound to its address; `a` to `e` (10.77.0.11 to .15) run
# Sluice. The bridge (10.77.0.1) is this machine's own address on that network, so a test in the
# root namespace reaches every host. The main stack (deploy/local/stack.sh, on 127.0.0.1) is left
# alone; both can run at once. Needs root and iproute2 (installed when missing); the tools are the
# ones stack.sh builds. State lives under .sluice/hosts/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR="$ROOT/.sluice/hosts"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

BRIDGE=slc0
NET=10.77.0
GATEWAY="$NET.1"
STACK_ADDR="$NET.2"
HOSTS=(a b c d e)
PG_CLUSTER=hosts
PG_PORT=5433
S3_KEY_ID=GK5111ce0000000000000000a1
S3_SECRET=5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111ce5111ce00a1
S3_BUCKET=sluice

say() { printf '\033[1m[hosts]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[hosts] error:\033[0m %s\n' "$*" >&2; exit 1; }

# Where the multi-host test (tests/it/hosts.rs) runs each Sluice service; deploy/check_compose.py
# checks that compose.yaml starts the same services.
services() {
  cat <<EOF
ingest a
registry a
preprocess b
preprocess c
trainer b
trainer c
inference d
inference e
webhooks a
EOF
}

addr() { # host
  case "$1" in
    stack) echo "$STACK_ADDR" ;;
    a) echo "$NET.11" ;; b) echo "$NET.12" ;; c) echo "$NET.13" ;; d) echo "$NET.14" ;; e) echo "$NET.15" ;;
    *) die "unknown host $1 (stack, a, b, c, d, e)" ;;
  esac
}

ns() { echo "slc-$1"; }
veth() { echo "slc-$1-br"; } # the bridge side of HOST's link

settings() {
  cat <<EOF
SLUICE_KAFKA_BROKERS=$STACK_ADDR:9092
SLUICE_S3_ENDPOINT=http://$STACK_ADDR:3900
SLUICE_S3_ACCESS_KEY_ID=$S3_KEY_ID
SLUICE_S3_SECRET_ACCESS_KEY=$S3_SECRET
SLUICE_S3_BUCKET=$S3_BUCKET
SLUICE_S3_FORCE_PATH_STYLE=true
SLUICE_DATABASE_URL=postgres://postgres:postgres@$STACK_ADDR:$PG_PORT/sluice
EOF
}

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces)"; }

open_on() { # addr port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_on() { # addr port name seconds [log]
  local deadline=$((SECONDS + $4))
  until open_on "$1" "$2"; do
    if (( SECONDS > deadline )); then
      [ -n "${5:-}" ] && tail -n 20 "$5" >&2
      die "$3 did not open $1:$2 within $4 s"
    fi
    sleep 0.2
  done
}

# ---------- the network ----------
network_up() {
  command -v ip >/dev/null || "$ROOT/deploy/local/stack.sh" packages iproute2
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$GATEWAY/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local host
  for host in stack "${HOSTS[@]}"; do
    if ! ip netns list | grep -qw "$(ns "$host")"; then
      ip netns add "$(ns "$host")"
      ip link add "slc-$host" type veth peer name "$(veth "$host")"
      ip link set "slc-$host" netns "$(ns "$host")"
      ip link set "$(veth "$host")" master "$BRIDGE"
      ip -n "$(ns "$host")" addr add "$(addr "$host")/24" dev "slc-$host"
      ip -n "$(ns "$host")" link set lo up
      ip -n "$(ns "$host")" link set "slc-$host" up
      ip -n "$(ns "$host")" route add default via "$GATEWAY"
    fi
    ip link set "$(veth "$host")" up
  done
}

network_down() {
  local host
  for host in stack "${HOSTS[@]}"; do
    ip netns del "$(ns "$host")" 2>/dev/null || true
    ip link del "$(veth "$host")" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# Stops every process left in HOST's namespace.
kill_in() { # host
  local pids
  pids=$(ip netns pids "$(ns "$1")" 2>/dev/null || true)
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  for _ in $(seq 1 50); do
    pids=$(ip netns pids "$(ns "$1")" 2>/dev/null || true)
    [ -z "$pids" ] && return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null || true
}

# ---------- the stack host ----------
in_stack() { ip netns exec "$(ns stack)" "$@"; }

postgres_up() {
  local version
  version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$PG_CLUSTER"; then
    say "PostgreSQL: creating cluster $version/$PG_CLUSTER on port $PG_PORT"
    pg_createcluster "$version" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
    cat >>"/etc/postgresql/$version/$PG_CLUSTER/postgresql.conf" <<EOF
listen_addresses = '$STACK_ADDR'
max_connections = 300
EOF
    echo "host all all $NET.0/24 scram-sha-256" >>"/etc/postgresql/$version/$PG_CLUSTER/pg_hba.conf"
  fi
  if ! pg_lsclusters -h | awk -v c="$PG_CLUSTER" '$2==c {print $4}' | grep -q online; then
    # Started inside the stack host's namespace: it listens on the stack host's address only.
    in_stack pg_ctlcluster "$version" "$PG_CLUSTER" start
  fi
  wait_on "$STACK_ADDR" "$PG_PORT" PostgreSQL 30 "/var/log/postgresql/postgresql-$version-$PG_CLUSTER.log"
  su postgres -c "psql -p $PG_PORT -qtAc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  if ! su postgres -c "psql -p $PG_PORT -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'sluice'\"" | grep -q 1; then
    su postgres -c "createdb -p $PG_PORT sluice"
  fi
  say "PostgreSQL: ready on $STACK_ADDR:$PG_PORT"
}

postgres_down() {
  local version
  version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)
  [ -n "$version" ] || return 0
  if pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2==c {print $4}' | grep -q online; then
    pg_ctlcluster "$version" "$PG_CLUSTER" stop -m fast || true
  fi
}

kafka_up() {
  mkdir -p "$DIR/kafka"
  if open_on "$STACK_ADDR" 9092; then return 0; fi
  # A fresh log each time: the hosts' topics and groups start empty.
  rm -f "$DIR/kafka/kafka.db"*
  (cd "$DIR/kafka" && RUST_LOG="${NISSHI_LOG:-warn}" exec setsid nohup ip netns exec "$(ns stack)" nisshi broker \
      --listener-url "tcp://$STACK_ADDR:9092" \
      --advertised-listener-url "tcp://$STACK_ADDR:9092" \
      --storage-engine "sqlite://kafka.db" \
      --group-initial-rebalance-delay 500ms \
      >>"$DIR/kafka/nisshi.log" 2>&1 </dev/null) &
  wait_on "$STACK_ADDR" 9092 nisshi 30 "$DIR/kafka/nisshi.log"
  say "Kafka: ready on $STACK_ADDR:9092"
}

garage() { command garage -c "$DIR/s3/garage.toml" "$@"; }

# A Garage in the stack namespace started with another config holds the ports and refuses this
# checkout's CLI (another secret). One whose config is gone or newer than the process (its
# checkout was deleted without `hosts.sh down`, perhaps cloned again at the same path) is
# stopped; one of another checkout that is still there is that checkout's to stop.
other_garage_down() { # our config
  local pid cmd config
  for pid in $(ip netns pids "$(ns stack)" 2>/dev/null); do
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    [[ "$cmd" == garage\ -c\ *\ server* ]] || continue
    config=${cmd#garage -c }
    config=${config%% server*}
    if [ -e "$config" ]; then
      if [ "$config" != "$1" ]; then
        die "a Garage of another checkout runs in $(ns stack) ($config): run that checkout's deploy/local/hosts.sh down"
      fi
      # Ours, unless the config was written after it started.
      (( $(stat -c %Y "$config") <= $(date +%s) - $(ps -o etimes= -p "$pid") )) && continue
    fi
    say "S3: stopping a Garage left by a checkout that is gone ($config)"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    while open_on "$STACK_ADDR" 3900 && (( SECONDS < deadline + 5 )); do sleep 0.2; done
  done
}

s3_up() {
  local dir="$DIR/s3"
  mkdir -p "$dir/meta" "$dir/data"
  if [ ! -f "$dir/garage.toml" ]; then
    cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "$STACK_ADDR:3901"
rpc_public_addr = "$STACK_ADDR:3901"
rpc_secret = "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"

[s3_api]
api_bind_addr = "$STACK_ADDR:3900"
s3_region = "us-east-1"
root_domain = ".s3.localhost"

[admin]
api_bind_addr = "$STACK_ADDR:3903"
admin_token = "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
metrics_token = "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
TOML
  fi
  other_garage_down "$dir/garage.toml"
  if ! open_on "$STACK_ADDR" 3900; then
    (cd "$dir" && RUST_LOG="${GARAGE_LOG:-warn}" exec setsid nohup ip netns exec "$(ns stack)" \
        garage -c "$dir/garage.toml" server >>"$dir/garage.log" 2>&1 </dev/null) &
    wait_on "$STACK_ADDR" 3901 garage 30 "$dir/garage.log"
  fi
  local deadline=$((SECONDS + 30)) node=""
  until node=$(in_stack garage -c "$dir/garage.toml" node id -q 2>/dev/null); do
    (( SECONDS > deadline )) && die "garage does not answer its CLI; see $dir/garage.log"
    sleep 0.3
  done
  node=${node%%@*}
  local layout; layout=$(in_stack garage -c "$dir/garage.toml" layout show 2>/dev/null || true)
  if ! grep -q "${node:0:16}" <<<"$layout"; then
    in_stack garage -c "$dir/garage.toml" layout assign -z local -c 1G "$node" >/dev/null
    in_stack garage -c "$dir/garage.toml" layout apply --version 1 >/dev/null
  fi
  if ! in_stack garage -c "$dir/garage.toml" key info "$S3_KEY_ID" >/dev/null 2>&1; then
    in_stack garage -c "$dir/garage.toml" key import --yes -n sluice "$S3_KEY_ID" "$S3_SECRET" >/dev/null
  fi
  in_stack garage -c "$dir/garage.toml" key allow --create-bucket "$S3_KEY_ID" >/dev/null
  if ! in_stack garage -c "$dir/garage.toml" bucket info "$S3_BUCKET" >/dev/null 2>&1; then
    in_stack garage -c "$dir/garage.toml" bucket create "$S3_BUCKET" >/dev/null
  fi
  in_stack garage -c "$dir/garage.toml" bucket allow --read --write --owner "$S3_BUCKET" --key "$S3_KEY_ID" >/dev/null
  wait_on "$STACK_ADDR" 3900 "Garage S3" 30 "$dir/garage.log"
  say "S3: ready on http://$STACK_ADDR:3900 (bucket $S3_BUCKET)"
}

up() {
  need_root
  "$ROOT/deploy/local/stack.sh" install
  "$ROOT/deploy/local/stack.sh" packages postgresql iproute2
  mkdir -p "$DIR"
  network_up
  postgres_up
  kafka_up
  s3_up
  say "hosts are up: stack $STACK_ADDR; a-e $NET.11-$NET.15 (bridge $BRIDGE, $GATEWAY here)"
}

down() {
  need_root
  local host
  for host in "${HOSTS[@]}" stack; do
    ip netns list 2>/dev/null | grep -qw "$(ns "$host")" && kill_in "$host"
  done
  postgres_down
  network_down
  say "hosts are down"
}

status() {
  local host rc=0
  for host in stack "${HOSTS[@]}"; do
    if ip netns list 2>/dev/null | grep -qw "$(ns "$host")"; then
      local state; state=$(cat "/sys/class/net/$(veth "$host")/operstate" 2>/dev/null || echo missing)
      echo "$host: $(addr "$host") link $state"
    else
      echo "$host: absent"; rc=1
    fi
  done
  for entry in "Kafka:9092" "S3:3900" "PostgreSQL:$PG_PORT"; do
    if open_on "$STACK_ADDR" "${entry#*:}"; then echo "${entry%%:*}: up ($STACK_ADDR:${entry#*:})"; else echo "${entry%%:*}: down"; rc=1; fi
  done
  return $rc
}

# ---------- link quality ----------
# This kernel has no netem (no delay or loss qdisc): loss is iptables' random `statistic` match
# in the host's namespace, both ways; the rate is a token bucket on both ends of its link (the
# host's side shapes what it sends, the bridge's side what it receives).
iptables_cmd() { command -v iptables-legacy >/dev/null || "$ROOT/deploy/local/stack.sh" packages iptables; echo iptables-legacy; }

degrade() { # host loss-percent rate
  local host=$1 loss=$2 rate=$3 ipt probability
  [[ "$loss" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "loss is a percentage, e.g. 5"
  ipt=$(iptables_cmd)
  probability=$(awk -v l="$loss" 'BEGIN { printf "%.4f", l / 100 }')
  restore "$host"
  for chain in INPUT OUTPUT; do
    ip netns exec "$(ns "$host")" "$ipt" -A "$chain" -m statistic --mode random --probability "$probability" -j DROP
  done
  ip netns exec "$(ns "$host")" tc qdisc replace dev "slc-$host" root tbf rate "$rate" burst 64kbit latency 200ms
  tc qdisc replace dev "$(veth "$host")" root tbf rate "$rate" burst 64kbit latency 200ms
}

restore() { # host
  local host=$1
  ip netns list 2>/dev/null | grep -qw "$(ns "$host")" || return 0
  if command -v iptables-legacy >/dev/null; then
    ip netns exec "$(ns "$host")" iptables-legacy -F INPUT 2>/dev/null || true
    ip netns exec "$(ns "$host")" iptables-legacy -F OUTPUT 2>/dev/null || true
  fi
  ip netns exec "$(ns "$host")" tc qdisc del dev "slc-$host" root 2>/dev/null || true
  tc qdisc del dev "$(veth "$host")" root 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  reset) need_root; for host in "${HOSTS[@]}"; do kill_in "$host"; done
         for host in stack "${HOSTS[@]}"; do ip link set "$(veth "$host")" up 2>/dev/null || true; restore "$host"; done ;;
  env) settings ;;
  services) services ;;
  addr) addr "${2:?host}" ;;
  exec) need_root; host=${2:?host}; shift 2; exec ip netns exec "$(ns "$host")" "$@" ;;
  cut) need_root; ip link set "$(veth "${2:?host}")" down ;;
  heal) need_root; ip link set "$(veth "${2:?host}")" up ;;
  degrade) need_root; degrade "${2:?host}" "${3:?loss percent}" "${4:?rate, e.g. 20mbit}" ;;
  restore) need_root; restore "${2:?host}" ;;
  *) echo "usage: $0 up|down|status|reset|env|services|addr HOST|exec HOST CMD...|cut HOST|heal HOST|degrade HOST LOSS RATE|restore HOST" >&2; exit 2 ;;
esac
