# Shared by bench/run and bench/ab (sourced, not run): the servers'
# thread settings, the 3-server clusters of both systems on loopback, and
# the cleanup on exit. Expects MERIDIAN (the binary) when a Meridian cluster
# starts, and WORK (the run's scratch directory, removed on exit).
# shellcheck shell=bash

# Threads per server. Three servers of each system share two cores here:
# Meridian runs one worker thread each (`--worker-threads`), which measured
# better than one per core; etcd keeps Go's default (GOMAXPROCS = cores),
# since GOMAXPROCS=1 measured slower for it (bench/README.md).
# WORKER_THREADS= (empty) leaves the default, for builds without the option.
# (Not MERIDIAN_...: the servers read MERIDIAN_* variables as configuration.)
WORKER_THREADS=${WORKER_THREADS-1}
THREADS_ARGS=()
[ -z "$WORKER_THREADS" ] || THREADS_ARGS=(--worker-threads "$WORKER_THREADS")

# Every process started; stopped on exit, and WORK removed with them.
PIDS=()
cleanup() {
  local status=$?
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    # The servers' logs go with the work directory: show their ends first.
    find "${WORK:?}" -name '*.log' -not -path '*/log/*' -print0 2>/dev/null |
      while IFS= read -r -d '' f; do echo "== $f"; tail -n 5 "$f"; done >&2
  fi
  rm -rf "${WORK:?}"
}
trap cleanup EXIT

# Keys a workload prepares: the prefix ranges read PREFIX_KEYS (10,000).
PREFIX_KEYS=${PREFIX_KEYS:-10000}
workload_keys() { # workload
  case $1 in range-prefix*) echo "$PREFIX_KEYS" ;; *) echo 100 ;; esac
}

# Ports, all from PORT_BASE (12379 unless set): etcd members on BASE+10i
# (client) / BASE+10i+1 (peer); Meridian servers on BASE+2000+10i (client) /
# BASE+2000+10i+1 (QUIC); bench/run's mirror pairs on BASE+1000 (etcd) and
# BASE+3000 (Meridian). The default block lies below the kernel's ephemeral
# range (32768 and up): a port there may be taken as the local end of a
# connection of an earlier workload.
PORT_BASE=${PORT_BASE:-12379}
ETCD_PORT=$PORT_BASE
MERIDIAN_PORT=$((PORT_BASE + 2000))
ETCD_URLS="http://127.0.0.1:$ETCD_PORT,http://127.0.0.1:$((ETCD_PORT + 10)),http://127.0.0.1:$((ETCD_PORT + 20))"
MERIDIAN_URLS="http://127.0.0.1:$MERIDIAN_PORT,http://127.0.0.1:$((MERIDIAN_PORT + 10)),http://127.0.0.1:$((MERIDIAN_PORT + 20))"

ETCD_PIDS=()
start_etcd() { # $1 = data root
  mkdir -p "$1"
  local cluster="e0=http://127.0.0.1:$((ETCD_PORT + 1)),e1=http://127.0.0.1:$((ETCD_PORT + 11)),e2=http://127.0.0.1:$((ETCD_PORT + 21))"
  ETCD_PIDS=()
  for i in 0 1 2; do
    local c=$((ETCD_PORT + 10 * i)) p=$((ETCD_PORT + 10 * i + 1))
    # etcd defaults otherwise (fsync on, heartbeat 100 ms, election 1000 ms);
    # snapshot every 10,000 entries like Meridian's raft.snapshot_logs.
    etcd --name "e$i" --data-dir "$1/e$i" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$cluster" --initial-cluster-state new --snapshot-count 10000 \
      --log-level error >"$1/e$i.log" 2>&1 &
    ETCD_PIDS+=($!)
    PIDS+=($!)
  done
  wait_ready "$ETCD_URLS" /health
}

MERIDIAN_PIDS=()
start_meridian() { # $1 = data root
  mkdir -p "$1"
  [ -d "$1/tls" ] || "$MERIDIAN" tls init --dir "$1/tls" --datacenter bench --names n0,n1,n2 >/dev/null
  local members=""
  for i in 0 1 2; do
    members+="n$i = { peer = \"127.0.0.1:$((MERIDIAN_PORT + 10 * i + 1))\", client = \"http://127.0.0.1:$((MERIDIAN_PORT + 10 * i))\" }"$'\n'
  done
  MERIDIAN_PIDS=()
  for i in 0 1 2; do
    # Defaults otherwise: fsync on every log commit, heartbeat 100 ms,
    # election 1000-2000 ms, snapshot every 10,000 entries.
    cat >"$1/n$i.toml" <<EOF
name = "n$i"
datacenter = "bench"
data_dir = "$1/n$i"
client_addr = "127.0.0.1:$((MERIDIAN_PORT + 10 * i))"
peer_addr = "127.0.0.1:$((MERIDIAN_PORT + 10 * i + 1))"
[initial_members]
$members
[tls]
ca = "$1/tls/ca.pem"
cert = "$1/tls/n$i.pem"
key = "$1/tls/n$i-key.pem"
EOF
    RUST_LOG=warn "$MERIDIAN" "${THREADS_ARGS[@]}" agent --config "$1/n$i.toml" >"$1/n$i.log" 2>&1 &
    MERIDIAN_PIDS+=($!)
    PIDS+=($!)
  done
  wait_ready "$MERIDIAN_URLS" /ready
}

# The endpoints with a follower first. A single client talks to the first
# one, so both systems' one-client runs pay the forward to the leader, as two
# thirds of a larger run's clients do; otherwise which member happens to
# lead moves a one-client figure by a network hop. (Both answer etcd's
# /v3/maintenance/status with their own id and the leader's.)
follower_first() { # urls
  local u status member leader first="" rest=""
  for u in ${1//,/ }; do
    status=$(curl -sf -X POST "$u/v3/maintenance/status" -d '{}' || true)
    member=$(sed -nE 's/.*"member_id":"?([0-9]+).*/\1/p' <<<"$status")
    leader=$(sed -nE 's/.*"leader":"?([0-9]+).*/\1/p' <<<"$status")
    if [ -z "$first" ] && [ -n "$member" ] && [ -n "$leader" ] && [ "$member" != "$leader" ]; then
      first=$u
    else
      rest+=",$u"
    fi
  done
  if [ -n "$first" ]; then echo "$first$rest"; else echo "$1"; fi
}

stop_pids() {
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
}

wait_ready() { # $1 = urls, $2 = path
  local deadline=$((SECONDS + 60)) u
  for u in ${1//,/ }; do
    until curl -sf "$u$2" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || { echo "bench: $u$2 not ready within 60s" >&2; exit 1; }
      sleep 0.05
    done
  done
}
