#!/usr/bin/env bash
# The disk tier: a dataset three times the RAM budget on an S3-compatible
# origin (s3s-fs on loopback), three epochs, then a daemon restart and a
# fourth: per epoch MB/s and the bytes fetched from the backend.
#
#   bash tests/bench/disk_tier.sh [--small] [workdir]
#
# 48 x 32 MiB with a 512 MiB budget (--small: 24 x 8 MiB, 64 MiB), disk
# tier in WORKDIR/disk (default /var/tmp/sluice-disk-tier: on a disk). The
# page cache is dropped before every epoch (root). Needs s3s-fs (S3S_FS_BIN,
# or scripts/test.sh's install). Writes WORKDIR/disk_tier.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

small=0
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    *) work="$1" ;;
  esac
  shift
done
if [ "$small" = 1 ]; then n=24; mib=8; budget=64MiB; else n=48; mib=32; budget=512MiB; fi
work="${work:-/var/tmp/sluice-disk-tier}"
mkdir -p "$work"
work=$(cd "$work" && pwd)

s3s="${S3S_FS_BIN:-$HOME/.cache/sluice-tools/bin/s3s-fs}"
[ -x "$s3s" ] || { echo "s3s-fs not found: set S3S_FS_BIN or run scripts/test.sh" >&2; exit 1; }

echo "== build"
cargo build --release --locked -p sluiced -p sluice-client --bin sluiced --bin sluice
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

data="$work/s3/bench/data"
if [ "$(ls "$data" 2>/dev/null | wc -l)" != "$n" ] || [ "$(stat -c %s "$data/o-0" 2>/dev/null)" != "$((mib << 20))" ]; then
  echo "== generating $n x $mib MiB"
  rm -rf "$work/s3"; mkdir -p "$data"
  for i in $(seq 0 $((n - 1))); do head -c $((mib << 20)) /dev/urandom > "$data/o-$i"; done
fi
total=$((n * mib << 20))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$work/s3" \
  > "$work/s3s-fs.log" 2>&1 &
s3pid=$!
daemon=""
cleanup() { kill $s3pid $daemon 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export SLUICE_STORAGE__S3__ENDPOINT="http://127.0.0.1:$port" SLUICE_STORAGE__S3__FORCE_PATH_STYLE=true
export SLUICE_CACHE__SEGMENT_SIZE=64MiB SLUICE_CACHE__MAX_OBJECT_SIZE=64MiB
rm -rf "$work/disk"
cat > "$work/sluiced.toml" <<EOF
[cache.disk]
dirs = ["$work/disk"]
EOF
sock="$work/sluiced.sock"

start() {
  rm -f "$sock"
  "$bin/sluiced" --config "$work/sluiced.toml" --socket "$sock" --http "127.0.0.1:$http" \
    --memory-budget "$budget" --log-level info 2>> "$work/sluiced.log" &
  daemon=$!
  for _ in $(seq 200); do grep -q "disk tier index loaded" "$work/sluiced.log" 2>/dev/null && [ -S "$sock" ] && break; sleep 0.1; done
}
metric() { curl -s "http://127.0.0.1:$http/metrics" | awk -v k="$1" 'index($0, k) == 1 { s += $NF } END { print s + 0 }'; }
epoch() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  local before t0 t1 after
  before=$(metric 'sluice_backend_transferred_bytes_total{backend="s3",direction="read"}')
  t0=$(date +%s.%N)
  "$bin/sluice" --address "unix://$sock" bench s3://bench/data/ --passes 1 --concurrency 8 > /dev/null
  t1=$(date +%s.%N)
  after=$(metric 'sluice_backend_transferred_bytes_total{backend="s3",direction="read"}')
  # Write-back of this epoch done before the next.
  for _ in $(seq 600); do [ "$(metric sluice_disk_queue_bytes)" = 0 ] && break; sleep 0.1; done
  python3 -c "print($total / ($t1 - $t0) / 1e6, ($after - $before) / 2**20, $(metric sluice_disk_hits_total))"
}

: > "$work/sluiced.log"
start
results=()
for e in 1 2 3; do echo "== epoch $e"; results+=("$(epoch)"); done
kill $daemon; wait $daemon 2>/dev/null || true
echo "== restart, epoch 4"
start
results+=("$(epoch)")

python3 - "$work/disk_tier.json" "$n" "$mib" "$budget" "${results[@]}" <<'EOF'
import json, sys
out, n, mib, budget, *epochs = sys.argv[1:]
rows = []
for i, e in enumerate(epochs, 1):
    mbps, backend_mib, hits = map(float, e.split())
    rows.append({"epoch": i, "MBps": mbps, "backend_MiB": backend_mib, "disk_hits_so_far": hits})
res = {"dataset": f"{n} x {mib} MiB", "memory_budget": budget, "epochs": rows,
       "note": "epoch 4 runs on a restarted daemon"}
json.dump(res, open(out, "w"), indent=2)
for r in rows:
    print(f"epoch {r['epoch']}: {r['MBps']:8.1f} MB/s  backend {r['backend_MiB']:8.1f} MiB  disk hits {r['disk_hits_so_far']:.0f}")
EOF
