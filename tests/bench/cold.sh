#!/usr/bin/env bash
# Cold-read benchmark that sees the client side (details in cold.py): sluice
# against boto3, s3dlio, obstore and s3torchconnector, cold and cached
# throughput, CPU seconds per object and per GiB of the daemon and of the
# client process, a 2-worker DataLoader epoch, and a perf profile of the
# daemon's cold 128 KiB path; in one run.
#
#   bash tests/bench/cold.sh [--small] [--origins nginx,s3s-fs] [workdir] [-- extra args of cold.py run]
#
# Origins: nginx (a static server from Debian, started here on a free port,
# serving the data directory as bucket `bench`, path style, with Range and
# If-Match; it answers ranged GETs from the page cache with almost no CPU, so
# the client side is what is measured) and s3s-fs (a real S3-compatible
# server; used when found, as in python_peers.sh). nginx serves no listing:
# every library is given the objects' URIs.
# Data: 32 x 32 MiB and 4000 x 128 KiB (default workdir /tmp/sluice-bench,
# shared with python_peers.sh); --small: 4 x 16 MiB and 200 x 128 KiB in
# /tmp/sluice-bench-small, for a quick check.
# Needs nginx (apt-get install nginx-light), python3; perf (apt-get install
# linux-perf) for the profile, skipped with a message without it. Builds
# sluiced (release) if missing (SLUICED_BIN=... uses another binary);
# installs the peers with pip and the sluice
# package from ./client-py (release build) into WORKDIR/venv
# (PY_PEERS_SKIP_SLUICE_INSTALL=1 keeps the one installed there).
# Writes WORKDIR/cold.json and, with perf, WORKDIR/cold.perf.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
repo=$PWD

small=0
work=""
origins="nginx,s3s-fs"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --origins) shift; origins="$1" ;;
    --) shift; extra=("$@"); break ;;
    *) work="$1" ;;
  esac
  shift
done
if [ "$small" = 1 ]; then
  work="${work:-/tmp/sluice-bench-small}"; n_large=4; large_mib=16; n_small=200
else
  work="${work:-/tmp/sluice-bench}"; n_large=32; large_mib=32; n_small=4000
fi
small_kib=128
mkdir -p "$work"
work=$(cd "$work" && pwd)

die() { echo "cold.sh: $*" >&2; exit 1; }
want() { case ",$origins," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# Tools: nginx and perf live in sbin / bin; fail early with what to install.
PATH="$PATH:/usr/sbin:/sbin"
command -v python3 >/dev/null || die "python3 not found"
nginx_bin="${NGINX_BIN:-$(command -v nginx || true)}"
if want nginx; then
  [ -n "$nginx_bin" ] && [ -x "$nginx_bin" ] || die "nginx not found: apt-get install -y nginx-light (or set NGINX_BIN)"
fi
perf_bin="${PERF_BIN:-$(command -v perf || true)}"
if [ -n "$perf_bin" ] && ! "$perf_bin" record -o /dev/null -- true >/dev/null 2>&1; then
  echo "!! perf cannot record here ($("$perf_bin" record -o /dev/null -- true 2>&1 | head -1)): no profile" >&2
  perf_bin=""
elif [ -z "$perf_bin" ]; then
  echo "!! perf not found (apt-get install -y linux-perf): no profile" >&2
fi
s3s=""
if want s3s-fs; then
  s3s=$(find_s3s_fs)
  if [ -z "$s3s" ]; then
    echo "!! s3s-fs not found (set S3S_FS_BIN or run scripts/test.sh): origin s3s-fs left out" >&2
    s3s=""
  fi
fi

bin="${CARGO_TARGET_DIR:-$repo/target}/release"
sluiced="${SLUICED_BIN:-$bin/sluiced}"
if [ -z "${SLUICED_BIN:-}" ] && [ ! -x "$sluiced" ]; then
  echo "== build"
  cargo build --release --locked -p sluiced
fi

echo "== python packages"
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
else
  venv="$work/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
  python="$venv/bin/python"
fi
"$python" -m pip install --quiet --disable-pip-version-check boto3 numpy s3dlio obstore s3torchconnector \
  || die "pip install of the peers failed"
if [ "${PY_PEERS_SKIP_SLUICE_INSTALL:-0}" != 1 ]; then
  if ! MATURIN_PEP517_ARGS="--profile release --locked" "$python" -m pip install --quiet --disable-pip-version-check \
      --force-reinstall --no-deps ./client-py; then
    echo "!! pip install ./client-py failed: sluice will be skipped unless an installed sluice imports" >&2
  fi
fi

files="$work/files"
if [ ! -f "$files/small/o-$((n_small - 1))" ] || [ ! -f "$files/large/o-$((n_large - 1))" ] \
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
# Two tiny objects for the warm-up reads (not part of any measured set).
mkdir -p "$files/warm"
for i in 0 1; do [ -s "$files/warm/w-$i" ] || head -c 4096 /dev/urandom > "$files/warm/w-$i"; done

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ngpid=""
s3pid=""
runpid=""
cleanup() {
  [ -n "$runpid" ] && kill "$runpid" 2>/dev/null || true
  [ -n "$ngpid" ] && kill "$ngpid" 2>/dev/null || true
  [ -n "$s3pid" ] && kill "$s3pid" 2>/dev/null || true
  # What cold.py started, should it have been killed without cleaning up.
  if [ -f "$work/cold.perf.pid" ]; then
    ppid_=$(cat "$work/cold.perf.pid")
    [ "$(readlink "/proc/$ppid_/exe" 2>/dev/null)" = "$(readlink -f "${perf_bin:-/nonexistent}")" ] && kill -INT "$ppid_" 2>/dev/null
    rm -f "$work/cold.perf.pid"
  fi
  if [ -f "$work/cold.sluiced.pid" ]; then
    dpid=$(cat "$work/cold.sluiced.pid")
    [ "$(readlink "/proc/$dpid/exe" 2>/dev/null)" = "$(readlink -f "$sluiced")" ] && kill "$dpid" 2>/dev/null
    rm -f "$work/cold.sluiced.pid"
  fi
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export SLUICE_STORAGE__S3__FORCE_PATH_STYLE=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
origin_args=()

if want nginx; then
  # One foreground nginx process of our own (no master, no user switch),
  # its own config, logs and temp paths under $work/nginx; bucket `bench` is
  # a link to the data directory. Keep-alive without a request limit, open
  # file cache, sendfile: the origin's CPU per request is as small as it gets.
  ngdir="$work/nginx"
  mkdir -p "$ngdir/root" "$ngdir/tmp"
  ln -sfn "$files" "$ngdir/root/bench"
  port=$(free_port)
  cat > "$ngdir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $ngdir/nginx.pid;
error_log $ngdir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 600s;
  open_file_cache max=20000 inactive=600s;
  open_file_cache_valid 600s;
  server_tokens off;
  client_body_temp_path $ngdir/tmp/body;
  proxy_temp_path $ngdir/tmp/proxy;
  fastcgi_temp_path $ngdir/tmp/fastcgi;
  uwsgi_temp_path $ngdir/tmp/uwsgi;
  scgi_temp_path $ngdir/tmp/scgi;
  server {
    listen 127.0.0.1:$port;
    root $ngdir/root;
    location / {
      limit_except GET { deny all; }
    }
  }
}
EOF
  "$nginx_bin" -p "$ngdir" -e "$ngdir/error.log" -c "$ngdir/nginx.conf" > "$ngdir/stdout.log" 2>&1 &
  ngpid=$!
  endpoint="http://127.0.0.1:$port"
  "$python" tests/bench/cold.py check-origin --endpoint "$endpoint" --require-if-match \
    || die "nginx on $endpoint does not answer as needed; see $ngdir/error.log"
  kill -0 "$ngpid" 2>/dev/null || die "nginx exited; see $ngdir/error.log"
  echo "== nginx $("$nginx_bin" -v 2>&1 | sed 's/.*: //') on $endpoint (pid $ngpid), serving $files as bucket bench"
  origin_args+=(--origin nginx "$endpoint" "$ngpid")
fi

if [ -n "$s3s" ]; then
  port=$(free_port)
  s3dir="$work/s3-python-peers"   # shared with python_peers.sh
  mkdir -p "$s3dir"
  "$s3s" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchsecret "$s3dir" \
    > "$work/cold.s3s-fs.log" 2>&1 &
  s3pid=$!
  endpoint="http://127.0.0.1:$port"
  echo "== s3s-fs on $endpoint (pid $s3pid), data in $s3dir"
  "$python" tests/bench/cold.py prepare --endpoint "$endpoint" --files "$files"
  find "$s3dir" -type f -exec cat {} + > /dev/null
  origin_args+=(--origin s3s-fs "$endpoint" "$s3pid")
fi
[ ${#origin_args[@]} -gt 0 ] || die "no origin to read from (--origins $origins)"
# Every origin finds its files in the page cache.
find "$files" -type f -exec cat {} + > /dev/null

perf_args=()
[ -n "$perf_bin" ] && perf_args=(--perf "$perf_bin")
"$python" tests/bench/cold.py run "${origin_args[@]}" --files "$files" --work "$work" \
  --sluiced "$sluiced" "${perf_args[@]}" "${extra[@]}" &
runpid=$!
rc=0
wait "$runpid" || rc=$?
runpid=""
exit $rc
