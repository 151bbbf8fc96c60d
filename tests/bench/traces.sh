#!/usr/bin/env bash
# What traces cost on the path where they cost most per byte: cached small
# objects. 4000 x 128 KiB (--small: 400) from file://, all in the cache
# after the first pass; `sluice bench` reads them with one Read call per
# object (an RPC span each) and through a shared-memory Session (a
# `session fetch` span each), 32 in flight, 4 passes of which the last
# three are cached. Each configuration runs in a fresh daemon, in rounds
# that alternate:
#
#   off     [traces] enabled = false (the default)
#   r0.01   enabled, sample_ratio = 0.01 (the default ratio)
#   r1      enabled, sample_ratio = 1.0: every call traced and exported
#
# Spans go to otlp-sink (an OTLP/gRPC receiver that only counts them).
# Prints MB/s of the cached passes and the daemon's CPU seconds per
# configuration and their ratios to `off`; writes WORKDIR/traces.txt.
#
#   bash tests/bench/traces.sh [--small] [workdir]
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

n=4000
work=""
rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --small) n=400 ;;
    *) work="$1" ;;
  esac
  shift
done
work="${work:-/var/tmp/sluice-traces}"
mkdir -p "$work"
work=$(cd "$work" && pwd)
data="$work/data"
out="$work/traces.txt"

echo "== build"
cargo build --release --locked -p sluiced -p sluice-client -p sluice-tests \
  --bin sluiced --bin sluice --bin otlp-sink
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

if [ "$(ls "$data" 2>/dev/null | wc -l)" != "$n" ]; then
  echo "== generating $n x 128 KiB in $data"
  rm -rf "$data"; mkdir -p "$data"
  head -c $((n << 17)) /dev/urandom | split -a 5 -d -b 128K - "$data/s-"
fi

"$bin/otlp-sink" --quiet > "$work/sink.out" &
sink=$!
trap 'kill $sink 2>/dev/null || true; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.05; done
endpoint=$(awk '/listening/ {print $2; exit}' "$work/sink.out")

cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

# start_daemon ENABLED RATIO: sets $pid.
start_daemon() {
  local sock="$work/sluiced.sock" log="$work/sluiced.log"
  rm -f "$sock"
  SLUICE_CACHE__PREFAULT=false SLUICE_TRACES__ENABLED="$1" SLUICE_TRACES__SAMPLE_RATIO="$2" \
    SLUICE_TRACES__ENDPOINT="$endpoint" SLUICE_TRACES__MAX_QUEUE=65536 \
    "$bin/sluiced" --socket "$sock" --memory-budget 2GiB --file-root "$work" \
    --log-level warn 2> "$log" &
  pid=$!
  for _ in $(seq 200); do [ -S "$sock.fds" ] && break; sleep 0.05; done
  [ -S "$sock" ] || { echo "sluiced did not start: $(cat "$log")" >&2; exit 1; }
}

# run NAME ENABLED RATIO DELIVERY: prints "NAME DELIVERY MB/s cpu_s".
run() {
  start_daemon "$2" "$3"
  local c0 c1 mbps
  c0=$(cpu_of "$pid")
  mbps=$("$bin/sluice" --address "unix://$work/sluiced.sock" bench "file://$data/" \
    --delivery "$4" --concurrency 32 --passes 4 2>/dev/null |
    awk '/^pass [234]:/ {s += $(NF-3); k++} END {printf "%.1f", s / k}')
  c1=$(cpu_of "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1 $4 $mbps $(echo "$c1 - $c0" | bc -l)"
}

: > "$work/rounds.txt"
for round in $(seq "$rounds"); do
  for delivery in read shm; do
    for cfg in "off false 0" "r0.01 true 0.01" "r1 true 1.0"; do
      # shellcheck disable=SC2086
      line=$(run $cfg "$delivery")
      echo "round $round: $line"
      echo "$line" >> "$work/rounds.txt"
    done
  done
done

{
  echo "4 passes over $n x 128 KiB (MB/s of passes 2-4, cached), 32 in flight, $rounds rounds"
  echo "spans received by the sink: $(awk '/spans/ {c = $2} END {print c + 0}' "$work/sink.out")"
  awk '
    { mb[$1" "$2] += $3; cpu[$1" "$2] += $4; n[$1" "$2]++ }
    END {
      split("read shm", ds, " "); split("off r0.01 r1", cs, " ")
      for (d in ds) for (c in cs) {
        k = cs[c]" "ds[d]; o = "off "ds[d]
        printf "%-6s %-5s %8.1f MB/s  %6.2f cpu_s  x%.3f throughput  x%.3f cpu vs off\n",
          cs[c], ds[d], mb[k]/n[k], cpu[k]/n[k], mb[k]/mb[o], cpu[k]/cpu[o]
      }
    }' "$work/rounds.txt"
} | tee "$out"
