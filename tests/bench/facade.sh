#!/usr/bin/env bash
# S3-compatible facade benchmark: boto3 and s3torchconnector reading the same
# objects straight from an S3-compatible server (s3s-fs) and through the
# daemon's facade, cold (fresh daemon, empty cache) and warm (second pass),
# in one run. Reports MB/s, objects/s and facade/direct ratios; writes the
# same as JSON to WORKDIR/facade.json (details in facade_bench.py).
#
#   bash tests/bench/facade.sh [--small] [workdir] [-- extra args of facade_bench.py]
#
# Data: 32 x 32 MiB (large/) and 4000 x 128 KiB (small/), shared with
# python_peers.sh (default workdir /tmp/sluice-bench); --small: 4 x 16 MiB and
# 200 x 128 KiB in /tmp/sluice-bench-small, for a quick check.
# Concurrency, the same direct and through the facade: boto3 with 16 threads
# (8 MiB ranged parts for the large objects), s3torchconnector's S3MapDataset
# in a DataLoader with 4 workers.
# Needs s3s-fs (scripts/test.sh installs it; or S3S_FS_BIN) and boto3,
# s3torchconnector and torch in python3 (or PYTHON=...). Uses the release
# sluiced, built if missing (SLUICED_BIN=... uses another binary).
# Extra args, e.g.: -- --sets small --concurrency 32 --workers 8
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
. tests/bench/lib.sh

small=0
work=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --) shift; extra=("$@"); break ;;
    *) work="$1" ;;
  esac
  shift
done
bench_sets "$small" "$work"

die() { echo "facade.sh: $*" >&2; exit 1; }

s3s=$(require_s3s_fs)
python="${PYTHON:-python3}"
"$python" -c 'import boto3, s3torchconnector, torch' 2>/dev/null \
  || die "$python lacks boto3, s3torchconnector or torch (pip install boto3 s3torchconnector)"

sluiced="${SLUICED_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/sluiced}"
if [ -z "${SLUICED_BIN:-}" ] && [ ! -x "$sluiced" ]; then
  echo "== build"
  CARGO_INCREMENTAL=0 cargo build --release --locked -p sluiced
fi

files="$work/files"
if [ ! -f "$files/small/o-$((n_small - 1))" ] || [ ! -f "$files/large/o-$((n_large - 1))" ] \
   || [ "$(ls "$files/large" | wc -l)" != "$n_large" ] || [ "$(ls "$files/small" | wc -l)" != "$n_small" ] \
   || [ "$(stat -c %s "$files/large/o-0")" != "$((large_mib << 20))" ]; then
  echo "== generating data in $files: $n_large x $large_mib MiB, $n_small x $small_kib KiB"
  rm -rf "$files" "$work/s3-python-peers" "$work/s3-facade"
  mkdir -p "$files/large" "$files/small"
  for i in $(seq 0 $((n_large - 1))); do head -c $((large_mib << 20)) /dev/urandom > "$files/large/o-$i"; done
  for i in $(seq 0 $((n_small - 1))); do head -c $((small_kib << 10)) /dev/urandom > "$files/small/o-$i"; done
else
  echo "== reusing data in $files"
fi

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
s3dir="$work/s3-facade"
mkdir -p "$s3dir"
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$s3dir" \
  > "$work/facade.s3s-fs.log" 2>&1 &
s3pid=$!
runpid=""
rm -f "$work/facade.sluiced.pid"
cleanup() {
  [ -n "$runpid" ] && kill "$runpid" 2>/dev/null || true
  kill "$s3pid" 2>/dev/null || true
  # The sluiced facade_bench.py runs, should it have been killed without cleaning up.
  if [ -f "$work/facade.sluiced.pid" ]; then
    dpid=$(cat "$work/facade.sluiced.pid")
    [ "$(readlink "/proc/$dpid/exe" 2>/dev/null)" = "$(readlink -f "$sluiced")" ] && kill "$dpid" 2>/dev/null
    rm -f "$work/facade.sluiced.pid"
  fi
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

endpoint="http://127.0.0.1:$port"
# The server's keys: the direct runs sign with them, and the daemon does
# towards the server; the facade's clients sign with the facade's own key.
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
# Keep stray config files from changing any library's behaviour.
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

echo "== s3s-fs on $endpoint, data in $s3dir"
"$python" tests/bench/python_peers.py prepare --endpoint "$endpoint" --files "$files"
# Every run then finds the server's files in the page cache.
find "$s3dir" -type f -exec cat {} + > /dev/null

echo "== sluiced $sluiced"
"$python" tests/bench/facade_bench.py --endpoint "$endpoint" --files "$files" --work "$work" \
  --sluiced "$sluiced" "${extra[@]}" &
runpid=$!
rc=0
wait "$runpid" || rc=$?
runpid=""
exit $rc
