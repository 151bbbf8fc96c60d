#!/usr/bin/env bash
# Python read benchmark: the sluice Python client (cold pass on a fresh
# daemon, then cached passes) against boto3, s3dlio, obstore and
# s3torchconnector, each driven the way its docs recommend for throughput,
# on the same objects of the same S3-compatible server (s3s-fs), in one run.
# Reports MB/s, objects/s and the ratio to the best peer per set; writes the
# same as JSON to WORKDIR/python_peers.json.
#
#   bash tests/bench/python_peers.sh [--small] [workdir] [-- extra args of python_peers.py run]
#
# Data: 32 x 32 MiB (large/) and 4000 x 128 KiB (small/), as backbone.sh
# (default workdir /tmp/sluice-bench, shared with it); --small: 4 x 16 MiB and
# 200 x 128 KiB in /tmp/sluice-bench-small, for a quick check.
# Needs s3s-fs (scripts/test.sh installs it; or S3S_FS_BIN). Builds sluiced
# (release) if missing, installs the Python peers with pip and the sluice
# package from ./client-py (release build; PY_PEERS_SKIP_SLUICE_INSTALL=1 keeps
# the installed one). If the sluice package cannot be installed or imported,
# sluice is skipped with a message and the peers still run.
# Extra args, e.g.: -- --libs sluice,obstore --sets small --concurrency 64 --workers 4
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

bin="${CARGO_TARGET_DIR:-$repo/target}/release"
s3s=$(require_s3s_fs)

echo "== build"
[ -x "$bin/sluiced" ] || cargo build --release --locked -p sluiced

echo "== python packages"
# A virtual environment of the benchmark's own that sees the system's packages
# (torch is big): the release build of sluice installed into it never replaces
# a development build installed in the system environment. PYTHON=... uses
# that interpreter's environment instead.
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
else
  venv="$work/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
  python="$venv/bin/python"
fi
"$python" -m pip install --quiet --disable-pip-version-check boto3 numpy s3dlio obstore s3torchconnector
if [ "${PY_PEERS_SKIP_SLUICE_INSTALL:-0}" != 1 ]; then
  # Release build of the extension (the benchmark must not time a debug build).
  if ! MATURIN_PEP517_ARGS="--profile release --locked" "$python" -m pip install --quiet --disable-pip-version-check \
      --force-reinstall --no-deps ./client-py; then
    echo "!! pip install ./client-py failed: sluice will be skipped unless an installed sluice imports" >&2
  fi
fi

files="$work/files"
want_last="$files/small/o-$((n_small - 1))"
if [ ! -f "$want_last" ] || [ ! -f "$files/large/o-$((n_large - 1))" ] \
   || [ "$(ls "$files/large" | wc -l)" != "$n_large" ] || [ "$(ls "$files/small" | wc -l)" != "$n_small" ] \
   || [ "$(stat -c %s "$files/large/o-0")" != "$((large_mib << 20))" ]; then
  echo "== generating data in $files: $n_large x $large_mib MiB, $n_small x $small_kib KiB"
  rm -rf "$files" "$work/s3-python-peers"
  mkdir -p "$files/large" "$files/small"
  for i in $(seq 0 $((n_large - 1))); do head -c $((large_mib << 20)) /dev/urandom > "$files/large/o-$i"; done
  for i in $(seq 0 $((n_small - 1))); do head -c $((small_kib << 10)) /dev/urandom > "$files/small/o-$i"; done
else
  echo "== reusing data in $files"
fi

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
# Our own s3s-fs data directory (backbone.sh wipes $work/s3 on every run).
s3dir="$work/s3-python-peers"
mkdir -p "$s3dir"
"$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$s3dir" \
  > "$work/python_peers.s3s-fs.log" 2>&1 &
s3pid=$!
runpid=""
rm -f "$work/python_peers.sluiced.pid"
cleanup() {
  [ -n "$runpid" ] && kill "$runpid" 2>/dev/null || true
  kill "$s3pid" 2>/dev/null || true
  # The sluiced python_peers.py runs, should it have been killed without cleaning up.
  if [ -f "$work/python_peers.sluiced.pid" ]; then
    dpid=$(cat "$work/python_peers.sluiced.pid")
    [ "$(readlink "/proc/$dpid/exe" 2>/dev/null)" = "$(readlink -f "$bin/sluiced")" ] && kill "$dpid" 2>/dev/null
    rm -f "$work/python_peers.sluiced.pid"
  fi
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

endpoint="http://127.0.0.1:$port"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
# sluiced (started by python_peers.py, fresh for each set) reads these.
export SLUICE_STORAGE__S3__ENDPOINT="$endpoint" SLUICE_STORAGE__S3__FORCE_PATH_STYLE=true
# Keep stray config files from changing any library's behaviour.
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

echo "== s3s-fs on $endpoint, data in $s3dir"
"$python" tests/bench/python_peers.py prepare --endpoint "$endpoint" --files "$files"
# Every library then finds the server's files in the page cache.
find "$s3dir" -type f -exec cat {} + > /dev/null

"$python" tests/bench/python_peers.py run --endpoint "$endpoint" --files "$files" --work "$work" \
  --sluiced "$bin/sluiced" "${extra[@]}" &
runpid=$!
rc=0
wait "$runpid" || rc=$?
runpid=""
exit $rc
