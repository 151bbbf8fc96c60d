#!/usr/bin/env bash
# Read benchmark of the backbone: `sluice bench` (cold pass, then cached
# pass) against file:// and a real S3-compatible server (s3s-fs), for
# 32 × 32 MiB and 4000 × 128 KiB, next to plain sequential reads of the same
# objects (boto3 get_object for S3, `cat` for files in the page cache), with
# the daemon's peak RSS. Needs a release build and s3s-fs (scripts/test.sh
# installs it); boto3 is installed with pip if missing.
#
#   bash tests/bench/backbone.sh [workdir]
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-/tmp/sluice-bench}"
bin="${CARGO_TARGET_DIR:-$PWD/target}/release"
s3s="${S3S_FS_BIN:-$HOME/.cache/sluice-tools/bin/s3s-fs}"
[ -x "$bin/sluiced" ] || cargo build --release --locked -p sluiced -p sluice-client
python3 -c 'import boto3' 2>/dev/null || pip install -q boto3
mkdir -p "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

files="$work/files"
if [ ! -f "$files/small/o-3999" ]; then
  echo "== generating data in $files"
  mkdir -p "$files/large" "$files/small"
  for i in $(seq 0 31); do head -c $((32 << 20)) /dev/urandom > "$files/large/o-$i"; done
  for i in $(seq 0 3999); do head -c $((128 << 10)) /dev/urandom > "$files/small/o-$i"; done
fi

port=$(free_port)
rm -rf "$work/s3"; mkdir -p "$work/s3"
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$work/s3" >/dev/null 2>&1 &
s3pid=$!
http_port=$(free_port)
cleanup() { kill "$s3pid" "${dpid:-}" 2>/dev/null || true; }
trap cleanup EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
endpoint="http://127.0.0.1:$port"
python3 - "$endpoint" "$files" <<'PY'
import sys, os, time, boto3
from botocore.config import Config
ep, root = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=ep, config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))
for _ in range(100):
    try:
        s3.list_buckets(); break
    except Exception:
        time.sleep(0.1)
s3.create_bucket(Bucket="bench")
from concurrent.futures import ThreadPoolExecutor
def up(rel):
    with open(os.path.join(root, rel), "rb") as f:
        s3.put_object(Bucket="bench", Key=rel, Body=f.read())
rels = [f"large/{n}" for n in os.listdir(os.path.join(root, "large"))] + [f"small/{n}" for n in os.listdir(os.path.join(root, "small"))]
with ThreadPoolExecutor(16) as ex:
    list(ex.map(up, rels))
print(f"uploaded {len(rels)} objects to {ep}/bench")
PY

sock="$work/sluiced.sock"
export SLUICE_STORAGE__S3__ENDPOINT="$endpoint" SLUICE_STORAGE__S3__FORCE_PATH_STYLE=true
"$bin/sluiced" --socket "$sock" --http "127.0.0.1:$http_port" --file-root "$files" --memory-budget 3GiB \
  --log-level warn &
dpid=$!
for _ in $(seq 1 200); do [ -S "$sock" ] && break; sleep 0.05; done

for set in large small; do
  for prefix in "file://$files/$set/" "s3://bench/$set/"; do
    echo "== sluice bench $prefix"
    "$bin/sluice" --address "unix://$sock" bench "$prefix" --concurrency 32 --passes 2
  done
done
echo "== sluiced peak RSS: $(grep VmHWM /proc/$dpid/status)"

echo "== baseline: plain sequential reads"
for set in large small; do
  start=$(date +%s.%N)
  cat "$files/$set"/* > /dev/null
  end=$(date +%s.%N)
  python3 -c "import os,sys; d='$files/$set'; n=len(os.listdir(d)); b=sum(os.path.getsize(os.path.join(d,f)) for f in os.listdir(d)); t=$end-$start; print(f'cat (page cache) $set: {n} objects {b/1e6:.0f} MB in {t:.2f}s: {b/1e6/t:.0f} MB/s, {n/t:.0f} obj/s')"
done
python3 - "$endpoint" <<'PY'
import sys, time, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
for prefix in ["large/", "small/"]:
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix) for o in p.get("Contents", [])]
    t = time.perf_counter(); n = 0
    for k in keys:
        n += len(s3.get_object(Bucket="bench", Key=k)["Body"].read())
    t = time.perf_counter() - t
    print(f"boto3 sequential get_object {prefix}: {len(keys)} objects {n/1e6:.0f} MB in {t:.2f}s: {n/1e6/t:.0f} MB/s, {len(keys)/t:.0f} obj/s")
PY
