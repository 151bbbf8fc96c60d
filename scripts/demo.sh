#!/usr/bin/env bash
# Runs sluiced on its embedded defaults, serving file:// from a local
# directory (no cloud account needed), and shows it serving: lists the
# objects, reads them twice with `sluice bench` (cold, then cached) and
# prints the cache counters from /metrics. Then keeps serving until Ctrl-C
# (or exits at once with --exit).
set -euo pipefail
cd "$(dirname "$0")/.."

exit_after=0
[ "${1:-}" = "--exit" ] && exit_after=1

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "== building sluiced and sluice (release)"
cargo build --release --locked -p sluiced -p sluice-client
bin="$CARGO_TARGET_DIR/release"

work="${SLUICE_DEMO_DIR:-$PWD/.demo}"
data="$work/data"
socket="$work/sluiced.sock"
http="127.0.0.1:${SLUICE_DEMO_HTTP_PORT:-7421}"
mkdir -p "$data/train"
if [ ! -f "$data/train/shard-0063.bin" ]; then
  echo "== writing 64 sample shards of 1 MiB to $data/train"
  for i in $(seq -f '%04g' 0 63); do
    head -c 1048576 /dev/urandom > "$data/train/shard-$i.bin"
  done
fi

echo "== starting sluiced (socket $socket, metrics http://$http/metrics)"
"$bin/sluiced" --socket "$socket" --http "$http" --file-root "$data" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  [ -S "$socket" ] && break
  kill -0 $pid 2>/dev/null || { echo "sluiced exited during startup" >&2; exit 1; }
  sleep 0.05
done
[ -S "$socket" ] || { echo "sluiced did not start in 10 s" >&2; exit 1; }

addr="unix://$socket"
echo "== sluice ls file://$data/train/ (first 5)"
"$bin/sluice" --address "$addr" ls -l "file://$data/train/" | head -5
echo "== sluice bench (pass 1 reads from disk, pass 2 from the node-wide cache)"
"$bin/sluice" --address "$addr" bench "file://$data/train/" --concurrency 16
echo "== /metrics (cache)"
curl -fsS "http://$http/metrics" | grep -E '^sluice_cache_(hits|misses)_total|^sluice_cache_size_bytes' || true

if [ "$exit_after" = 1 ]; then
  exit 0
fi
echo "== sluiced is serving on $addr — try: $bin/sluice --address $addr cat file://$data/train/shard-0000.bin | wc -c"
echo "   press Ctrl-C to stop"
wait $pid
