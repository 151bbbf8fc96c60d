#!/usr/bin/env bash
# Epoch plans benchmark (details in plans.py): data-stall seconds of a
# DataLoader epoch with and without sluice's epoch plan against
# s3torchconnector and boto3 map datasets; three epochs of a dataset twice
# the cache, LRU against plans; cold reads against obstore. On s3s-fs over
# plain loopback, and on the same server behind a proxy that adds 20 ms to
# every request (tests/src/bin/latency_proxy.rs; only the benchmark's own
# connections go through it).
#
#   bash tests/bench/plans.sh [--small] [--latency-ms N] [workdir] [-- extra args of plans.py run]
#
# Data: 32 x 32 MiB and 4000 x 128 KiB (default workdir /tmp/sluice-bench,
# shared with python_peers.sh); --small: 4 x 16 MiB and 200 x 128 KiB in
# /tmp/sluice-bench-small. Needs s3s-fs (scripts/test.sh installs it; or
# S3S_FS_BIN). Builds sluiced and latency-proxy (release) if missing,
# installs boto3, obstore and s3torchconnector with pip and the sluice
# package from ./client-py (release build) into WORKDIR/venv (with the
# system's site packages, where torch is). Writes WORKDIR/plans.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
. tests/bench/lib.sh

small=0
work=""
latency=20
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --latency-ms) shift; latency="$1" ;;
    --) shift; extra=("$@"); break ;;
    *) work="$1" ;;
  esac
  shift
done
bench_sets "$small" "$work"

bin="${CARGO_TARGET_DIR:-$repo/target}/release"
s3s=$(require_s3s_fs)

echo "== build"
cargo build --release --locked -p sluiced -p sluice-tests --bin sluiced --bin latency-proxy

echo "== python packages"
venv="$work/venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
python="$venv/bin/python"
"$python" -m pip install --quiet --disable-pip-version-check boto3 numpy obstore s3torchconnector
MATURIN_PEP517_ARGS="--profile release --locked" "$python" -m pip install --quiet --disable-pip-version-check \
  --force-reinstall --no-deps ./client-py

files="$work/files"
if [ ! -f "$files/small/o-$((n_small - 1))" ] || [ ! -f "$files/large/o-$((n_large - 1))" ] \
   || [ "$(ls "$files/large" | wc -l)" != "$n_large" ] || [ "$(ls "$files/small" | wc -l)" != "$n_small" ] \
   || [ "$(stat -c %s "$files/large/o-0")" != "$((large_mib << 20))" ]; then
  echo "== generating data in $files: $n_large x $large_mib MiB, $n_small x $small_kib KiB"
  rm -rf "$files" "$work/s3-plans"
  mkdir -p "$files/large" "$files/small"
  for i in $(seq 0 $((n_large - 1))); do head -c $((large_mib << 20)) /dev/urandom > "$files/large/o-$i"; done
  for i in $(seq 0 $((n_small - 1))); do head -c $((small_kib << 10)) /dev/urandom > "$files/small/o-$i"; done
fi

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
s3dir="$work/s3-plans"
mkdir -p "$s3dir"
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$s3dir" \
  > "$work/plans.s3s-fs.log" 2>&1 &
s3pid=$!
"$bin/latency-proxy" 127.0.0.1:0 "127.0.0.1:$port" "$latency" > "$work/plans.proxy.addr" 2> "$work/plans.proxy.log" &
proxypid=$!
runpid=""
cleanup() {
  [ -n "$runpid" ] && kill "$runpid" 2>/dev/null || true
  kill "$s3pid" "$proxypid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for _ in $(seq 100); do [ -s "$work/plans.proxy.addr" ] && break; sleep 0.1; done
proxy="http://$(cat "$work/plans.proxy.addr")"
endpoint="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export SLUICE_STORAGE__S3__FORCE_PATH_STYLE=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

echo "== s3s-fs on $endpoint, the same through $latency ms of added latency on $proxy"
"$python" tests/bench/python_peers.py prepare --endpoint "$endpoint" --files "$files"
find "$s3dir" -type f -exec cat {} + > /dev/null

"$python" tests/bench/plans.py run --origin loopback "$endpoint" --origin "latency-${latency}ms" "$proxy" \
  --files "$files" --work "$work" --sluiced "$bin/sluiced" "${extra[@]}" &
runpid=$!
rc=0
wait "$runpid" || rc=$?
runpid=""
exit $rc
