#!/usr/bin/env bash
# direct:// against file:// and fio (io_uring, O_DIRECT) reading the same
# files cold: MB/s, and CPU seconds of the reader (fio; sluiced plus the
# `sluice bench` client).
#
#   bash tests/bench/direct.sh [--small] [workdir]
#
# 32 x 256 MiB (--small: 8 x 64 MiB) in WORKDIR/files (default
# /var/tmp/sluice-direct: on a disk, not tmpfs). The page cache is dropped
# before every pass (root). Each reader keeps 8 files in flight; fio reads
# 1 MiB blocks at queue depth 8 per file, as sluiced's ring does. The daemon's
# cache is smaller than the data, so every pass reads the disk.
# Writes WORKDIR/direct.json.
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
if [ "$small" = 1 ]; then n=8; mib=64; else n=32; mib=256; fi
work="${work:-/var/tmp/sluice-direct}"
mkdir -p "$work"
work=$(cd "$work" && pwd)
files="$work/files"

command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }

echo "== build"
cargo build --release --locked -p sluiced -p sluice-client --bin sluiced --bin sluice
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

if [ "$(ls "$files" 2>/dev/null | wc -l)" != "$n" ] || [ "$(stat -c %s "$files/o-0" 2>/dev/null)" != "$((mib << 20))" ]; then
  echo "== generating $n x $mib MiB in $files"
  rm -rf "$files"; mkdir -p "$files"
  for i in $(seq 0 $((n - 1))); do
    dd if=/dev/urandom of="$files/o-$i" bs=1M count="$mib" status=none
  done
  sync
fi
total=$((n * mib << 20))

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
cpu_of() { awk '{print ($14 + $15 + $16 + $17) / 100}' "/proc/$1/stat"; }
now() { date +%s.%N; }

echo "== fio"
drop
names=$(for i in $(seq 0 $((n - 1))); do printf '%s:' "$files/o-$i"; done)
fio --name=direct --ioengine=io_uring --direct=1 --rw=read --bs=1M --iodepth=8 \
  --numjobs=1 --filename="${names%:}" --file_service_type=roundrobin:8 \
  --size=$total --output-format=json > "$work/fio.json"
read -r fio_bw fio_cpu < <(python3 - "$work/fio.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
secs = j["read"]["runtime"] / 1000
print(j["read"]["bw_bytes"], (j["usr_cpu"] + j["sys_cpu"]) / 100 * secs)
EOF
)

run_sluice() {
  local scheme=$1 sock="$work/sluiced.sock"
  rm -f "$sock"
  "$bin/sluiced" --socket "$sock" --http 127.0.0.1:0 --memory-budget 1GiB \
    --file-root "$files" --direct-root "$files" --log-level warn &
  local pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "sluiced did not start" >&2; exit 1; }
  drop
  local c0 t0 t1 c1
  c0=$(cpu_of $pid); t0=$(now)
  /usr/bin/time -f "%U %S" -o "$work/client.time" \
    "$bin/sluice" --address "unix://$sock" bench "$scheme://$files/" --passes 1 --concurrency 8 > "$work/$scheme.out"
  t1=$(now); c1=$(cpu_of $pid)
  kill $pid; wait $pid 2>/dev/null || true
  local client
  client=$(awk '{print $1 + $2}' "$work/client.time")
  python3 -c "print($total / ($t1 - $t0), ($c1 - $c0) + $client)"
}

echo "== sluiced direct://"
read -r direct_bw direct_cpu < <(run_sluice direct)
echo "== sluiced file://"
read -r file_bw file_cpu < <(run_sluice file)

python3 - "$work/direct.json" "$fio_bw" "$fio_cpu" "$direct_bw" "$direct_cpu" "$file_bw" "$file_cpu" "$n" "$mib" <<'EOF'
import json, sys
out, fb, fc, db, dc, lb, lc, n, mib = sys.argv[1:]
fb, fc, db, dc, lb, lc = map(float, (fb, fc, db, dc, lb, lc))
res = {
    "files": f"{n} x {mib} MiB",
    "fio_MBps": fb / 1e6, "fio_cpu_s": fc,
    "direct_MBps": db / 1e6, "direct_cpu_s": dc,
    "file_MBps": lb / 1e6, "file_cpu_s": lc,
    "direct_vs_fio": db / fb, "direct_vs_file": db / lb,
}
json.dump(res, open(out, "w"), indent=2)
for k, v in res.items():
    print(f"{k:16} {v:.3f}" if isinstance(v, float) else f"{k:16} {v}")
EOF
