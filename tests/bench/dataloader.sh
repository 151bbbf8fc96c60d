#!/usr/bin/env bash
# A 2-worker PyTorch DataLoader over cached 128 KiB samples: sluice
# (SluiceMapDataset over file:// URIs the daemon has cached) against the same
# DataLoader reading the same files from the page cache with open().read();
# samples/s and CPU per sample of the client processes and of the daemon.
# Details in dataloader.py.
#
#   bash tests/bench/dataloader.sh [workdir] [-- extra args of dataloader.py]
#
# Data: the 4000 x 128 KiB objects of cold.sh (WORKDIR/files/small, made here
# if missing), read 5 times per epoch (20,000 samples). Uses WORKDIR/venv
# (as cold.sh; PY_PEERS_SKIP_SLUICE_INSTALL=1 keeps the sluice installed
# there) and a release sluiced (SLUICED_BIN=... for another).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
work="/tmp/sluice-bench"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; extra=("$@"); break ;;
    *) work="$1" ;;
  esac
  shift
done
mkdir -p "$work"
work=$(cd "$work" && pwd)

bin="${CARGO_TARGET_DIR:-$repo/target}/release"
sluiced="${SLUICED_BIN:-$bin/sluiced}"
if [ -z "${SLUICED_BIN:-}" ] && [ ! -x "$sluiced" ]; then
  cargo build --release --locked -p sluiced
fi
venv="$work/venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
python="$venv/bin/python"
"$python" -c 'import torch' 2>/dev/null || "$python" -m pip install --quiet --disable-pip-version-check torch
if [ "${PY_PEERS_SKIP_SLUICE_INSTALL:-0}" != 1 ]; then
  MATURIN_PEP517_ARGS="--profile release --locked" "$python" -m pip install --quiet --disable-pip-version-check \
    --force-reinstall --no-deps ./client-py
fi

small="$work/files/small"
if [ ! -f "$small/o-3999" ]; then
  echo "== generating 4000 x 128 KiB in $small"
  mkdir -p "$small"
  for i in $(seq 0 3999); do head -c $((128 << 10)) /dev/urandom > "$small/o-$i"; done
fi

sock="$work/dataloader.sock"
rm -f "$sock" "$sock.fds"
"$sluiced" --socket "$sock" --file-root "$small" --memory-budget 1GiB --log-level warn \
  > "$work/dataloader.sluiced.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -S "$sock" ] && [ -S "$sock.fds" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "sluiced did not start; see $work/dataloader.sluiced.log" >&2; exit 1; }
# The arena resident first (cache.prefault), as on a node up for a while.
budget=$((1 << 30))
for _ in $(seq 600); do
  shm=$(awk '/^RssShmem:/ {printf "%d", $2 * 1024}' "/proc/$daemon/status")
  [ "$shm" -ge "$budget" ] && break
  sleep 0.1
done
"$python" tests/bench/dataloader.py --root "$small" --socket "$sock" --daemon-pid "$daemon" "${extra[@]}"
