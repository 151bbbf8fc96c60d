#!/usr/bin/env bash
# Checkpoint-style writes: `sluice put` of one large local file (1 GiB by
# default) to file:// against `cp` + `fsync` of the same file on the same
# filesystem, and to a real S3-compatible server (s3s-fs) against obstore's
# multipart `put` of the same file with the same part size (16 MiB, the
# daemon's `write.part_size`) — in one run, rounds interleaved, with the
# daemon's CPU and (S3) the server's CPU per upload. The source file is read once first, so every
# contender reads it from the page cache; `sync` runs between rounds.
#
#   bash tests/bench/put.sh [workdir] [size_mib] [rounds]
#
# Needs a release build (built if missing), s3s-fs (scripts/test.sh installs
# it; set S3S_FS_BIN), and python3 (obstore is installed into
# WORKDIR/venv with pip if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/sluice-bench}"
size_mib="${2:-1024}"
rounds="${3:-3}"
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
s3s="${S3S_FS_BIN:-$HOME/.cache/sluice-tools/bin/s3s-fs}"
[ -x "$bin/sluiced" ] && [ -x "$bin/sluice" ] || cargo build --release --locked -p sluiced -p sluice-client
[ -x "$s3s" ] || { echo "s3s-fs not found at $s3s (run scripts/test.sh or set S3S_FS_BIN)" >&2; exit 1; }
mkdir -p "$work"
work=$(cd "$work" && pwd)
venv="$work/venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
python="$venv/bin/python"
"$python" -c 'import obstore' 2>/dev/null || "$python" -m pip install --quiet --disable-pip-version-check obstore
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }

src="$work/put-source.bin"
if [ ! -f "$src" ] || [ "$(stat -c %s "$src")" -ne $((size_mib << 20)) ]; then
  echo "== generating $size_mib MiB in $src"
  head -c $((size_mib << 20)) /dev/urandom > "$src"
fi
cat "$src" > /dev/null
root="$work/put-root"
rm -rf "$root" "$work/put-s3"
mkdir -p "$root" "$work/put-s3/bench"

port=$(free_port)
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$work/put-s3" \
  > "$work/put.s3s-fs.log" 2>&1 &
s3pid=$!
endpoint="http://127.0.0.1:$port"
sock="$work/put.sock"
rm -f "$sock" "$sock.fds"
budget_gib=2
SLUICE_STORAGE__S3__ENDPOINT="$endpoint" SLUICE_STORAGE__S3__FORCE_PATH_STYLE=true \
  SLUICE_STORAGE__S3__REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret \
  "$bin/sluiced" --socket "$sock" --file-root "$root" --memory-budget "${budget_gib}GiB" --log-level warn \
  > "$work/put.sluiced.log" 2>&1 &
dpid=$!
trap 'kill $dpid $s3pid 2>/dev/null; wait $dpid $s3pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "sluiced did not start; see $work/put.sluiced.log" >&2; exit 1; }
# The arena resident first (cache.prefault), as on a node up for a while.
for _ in $(seq 600); do
  shm=$(awk '/^RssShmem:/ {printf "%d", $2 * 1024}' "/proc/$dpid/status")
  [ "$shm" -ge $((budget_gib << 30)) ] && break
  sleep 0.1
done
for _ in $(seq 100); do
  curl -s -o /dev/null "$endpoint" && break
  sleep 0.1
done

results="$work/put.results"
: > "$results"
obstore_put() {
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret "$python" - "$endpoint" "$src" "$1" <<'PY'
import sys, time
import obstore
from obstore.store import S3Store
endpoint, src, key = sys.argv[1:]
store = S3Store("bench", endpoint=endpoint, region="us-east-1", client_options={"allow_http": True},
                virtual_hosted_style_request=False)
with open(src, "rb") as f:
    t = time.perf_counter()
    obstore.put(store, key, f, use_multipart=True, chunk_size=16 << 20)
    print(f"{time.perf_counter() - t:.3f}")
PY
}
for round in $(seq "$rounds"); do
  rm -f "$root"/*; sync
  t0=$(now); cp "$src" "$root/cp.bin"; sync "$root/cp.bin"; t1=$(now)
  echo "cp $(echo "$t1 - $t0" | bc) 0" >> "$results"
  rm -f "$root/cp.bin"; sync
  c0=$(cpu_of $dpid); t0=$(now)
  "$bin/sluice" --address "unix://$sock" put "$src" "file://$root/put.bin" > /dev/null
  t1=$(now); c1=$(cpu_of $dpid)
  echo "sluice-file $(echo "$t1 - $t0" | bc) $((c1 - c0))" >> "$results"
  rm -f "$root/put.bin"; sync
  # The two S3 contenders take turns going first: the server's disk is
  # still writing back the previous upload when the next one starts.
  if [ $((round % 2)) -eq 1 ]; then s3_order="obstore sluice"; else s3_order="sluice obstore"; fi
  for who in $s3_order; do
    if [ "$who" = obstore ]; then
      s0=$(cpu_of $s3pid)
      secs=$(obstore_put "obstore-$round.bin")
      echo "obstore-s3 $secs 0 $(($(cpu_of $s3pid) - s0))" >> "$results"
    else
      c0=$(cpu_of $dpid); s0=$(cpu_of $s3pid); t0=$(now)
      "$bin/sluice" --address "unix://$sock" put "$src" "s3://bench/sluice-$round.bin" > /dev/null
      t1=$(now); c1=$(cpu_of $dpid)
      echo "sluice-s3 $(echo "$t1 - $t0" | bc) $((c1 - c0)) $(($(cpu_of $s3pid) - s0))" >> "$results"
    fi
    sync
  done
  rm -rf "$work/put-s3/bench/"*; sync
  echo "== round $round: $(tail -4 "$results" | awk '{printf "%s %.2fs  ", $1, $2}')"
done
python3 - "$results" "$size_mib" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
path, size_mib, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs, server = {}, {}
for line in open(path):
    name, secs, ticks, *srv = line.split()
    runs.setdefault(name, []).append((float(secs), int(ticks)))
    if srv:
        server.setdefault(name, []).append(int(srv[0]))
med = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
print(f"put of {size_mib} MiB, median of {len(runs['cp'])} rounds")
for k, v in runs.items():
    cpu = statistics.median(t for _, t in v) / tck
    extra = f"  daemon CPU {cpu:.2f} s" if k.startswith("sluice") else ""
    if k in server:
        extra += f"  server CPU {statistics.median(server[k]) / tck:.2f} s"
    print(f"  {k:12s} {med[k]:6.2f} s  {size_mib / med[k]:7.0f} MiB/s  (all: "
          + ", ".join(f"{s:.2f}" for s, _ in v) + f"){extra}")
print(f"  sluice file:// / cp+fsync: {med['cp'] / med['sluice-file']:.2f}x")
print(f"  sluice s3:// / obstore:    {med['obstore-s3'] / med['sluice-s3']:.2f}x")
PY
