#!/usr/bin/env bash
# What the operation log costs on cold reads, and a replay of what it
# recorded.
#
#   bash tests/bench/oplog.sh [--small] [workdir]
#
# Data in WORKDIR/data (default /var/tmp/sluice-oplog): 4000 x 128 KiB and
# 16 x 64 MiB (--small: 400 and 4). The files sit in the page cache, so a
# daemon's CPU per operation is what is measured: the worst case for the
# log, whose cost is per operation. Each round starts a fresh daemon (cold
# cache), reads everything once with `sluice bench --passes 1
# --concurrency 32`, and takes its MB/s and the daemon's CPU seconds;
# rounds alternate log off and on (defaults but for the path). Then
# `sluice oplog stats` of the last log, a check of its columns with
# Python's csv reader (tab-separated, as warp's Go reader), and a replay at
# the recorded speed against a second copy of the data (hard links) under
# a fresh daemon. Writes WORKDIR/oplog.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

small=0
work=""
rounds=4
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    *) work="$1" ;;
  esac
  shift
done
if [ "$small" = 1 ]; then n_small=400; n_large=4; else n_small=4000; n_large=16; fi
work="${work:-/var/tmp/sluice-oplog}"
mkdir -p "$work"
work=$(cd "$work" && pwd)
data="$work/data"
out="$work/oplog.txt"

echo "== build"
cargo build --release --locked -p sluiced -p sluice-client --bin sluiced --bin sluice
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

if [ "$(ls "$data/small" 2>/dev/null | wc -l)" != "$n_small" ] ||
  [ "$(ls "$data/large" 2>/dev/null | wc -l)" != "$n_large" ]; then
  echo "== generating $n_small x 128 KiB and $n_large x 64 MiB in $data"
  rm -rf "$data" "$work/copy"; mkdir -p "$data/small" "$data/large"
  head -c $((n_small << 17)) /dev/urandom | split -a 5 -d -b 128K - "$data/small/s-"
  for i in $(seq 0 $((n_large - 1))); do
    head -c $((64 << 20)) /dev/urandom > "$data/large/l-$i"
  done
fi
[ -d "$work/copy" ] || cp -al "$data" "$work/copy"
# Warm the page cache: every round reads from memory.
cat "$data"/small/* "$data"/large/* > /dev/null

cpu_of() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

# start_daemon LOG_ENABLED: starts sluiced on $work/sluiced.sock serving
# $work, sets $pid and $http.
start_daemon() {
  local sock="$work/sluiced.sock" log="$work/sluiced.log"
  rm -f "$sock"
  SLUICE_CACHE__PREFAULT=false SLUICE_OPLOG__ENABLED="$1" SLUICE_OPLOG__PATH="$work/logs/ops.csv.zst" \
    "$bin/sluiced" --socket "$sock" --http 127.0.0.1:0 --memory-budget 3GiB \
    --file-root "$work" --log-level info 2> "$log" &
  pid=$!
  for _ in $(seq 200); do [ -S "$sock" ] && grep -q "sluiced serving" "$log" && break; sleep 0.05; done
  [ -S "$sock" ] || { echo "sluiced did not start: $(cat "$log")" >&2; exit 1; }
  http=$(grep -o 'http=Some([^)]*)' "$log" | tail -1 | sed 's/http=Some(\(.*\))/\1/')
}

stop_daemon() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

metric() { curl -s "http://$http/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# One cold pass; prints "MB/s cpu_s dropped".
round() {
  rm -rf "$work/logs"
  start_daemon "$1"
  local c0 c1 mbps dropped
  c0=$(cpu_of "$pid")
  mbps=$("$bin/sluice" --address "unix://$work/sluiced.sock" bench "file://$data/" \
    --passes 1 --concurrency 32 --delivery read | awk '/^pass 1/ {print $(NF-3)}')
  c1=$(cpu_of "$pid")
  dropped=$(curl -s "http://$http/metrics" | awk '/^sluice_oplog_dropped_total/ {s += $2} END {print s + 0}')
  stop_daemon
  echo "$mbps $(python3 -c "print(round($c1 - $c0, 2))") $dropped"
}

{
  echo "oplog overhead: $n_small x 128 KiB + $n_large x 64 MiB, file:// from the page cache, cold daemon cache, --concurrency 32, $rounds rounds"
  echo "round  log  MB/s  daemon_cpu_s  dropped"
  for r in $(seq "$rounds"); do
    for on in false true; do
      echo "$r  $on  $(round "$on")"
    done
  done
} | tee "$out"

echo "== stats of the last log" | tee -a "$out"
"$bin/sluice" oplog stats "$work/logs/ops.csv.zst" | tee -a "$out"

echo "== columns, as a tab-separated csv reader sees them" | tee -a "$out"
zstd -dc "$work/logs/ops.csv.zst" | python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin, delimiter="\t"))
header, body = rows[0], rows[1:]
warp = "idx thread op client_id n_objects bytes endpoint file error start first_byte end duration_ns cat".split()
assert header[:14] == warp, header
assert all(len(r) == len(header) for r in body), "ragged rows"
print(f"{len(body)} rows of {len(header)} columns; the first 14 are warp'"'"'s")
' | tee -a "$out"

echo "== replay against a copy, at the recorded speed" | tee -a "$out"
start_daemon false
"$bin/sluice" --address "unix://$work/sluiced.sock" oplog replay "$work/logs/ops.csv.zst" \
  --to "file://$work/copy/" | tee -a "$out"
stop_daemon
echo "results in $out"
