#!/usr/bin/env bash
# Cached-read benchmark of delivery paths, in one run on one machine:
# 32 × 32 MiB and 4000 × 128 KiB, read through a sluice Session with
# shared-memory leases, through the same Session with stream chunks, and as
# local files from the page cache (pagecache-read, same concurrency). Every
# path touches one byte per 4 KiB page of what it reads. The first pass of
# each sluice run fills the cache; later passes are cached.
#
#   bash tests/bench/shm.sh [workdir] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/sluice-bench}"
conc="${2:-32}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p sluiced -p sluice-client -p sluice-tests --bins >/dev/null
bin="$CARGO_TARGET_DIR/release"

files="$work/files"
if [ ! -f "$files/small/o-3999" ]; then
  echo "== generating data in $files"
  mkdir -p "$files/large" "$files/small"
  for i in $(seq 0 31); do head -c $((32 << 20)) /dev/urandom > "$files/large/o-$i"; done
  for i in $(seq 0 3999); do head -c $((128 << 10)) /dev/urandom > "$files/small/o-$i"; done
fi

sock="$work/shm-bench.sock"
"$bin/sluiced" --socket "$sock" --http 127.0.0.1:0 --file-root "$files" --memory-budget 3GiB --log-level warn &
dpid=$!
trap 'kill $dpid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do [ -S "$sock.fds" ] && break; sleep 0.05; done

for set in large small; do
  echo "== $set: page cache (pagecache-read, $conc threads)"
  "$bin/pagecache-read" "$files/$set" "$conc" 3
  for delivery in shm stream; do
    echo "== $set: sluice session, $delivery delivery (window $conc)"
    "$bin/sluice" --address "unix://$sock" bench "file://$files/$set/" --delivery "$delivery" \
      --concurrency "$conc" --passes 3
  done
done
echo "== sluiced peak RSS: $(grep VmHWM /proc/$dpid/status)"
