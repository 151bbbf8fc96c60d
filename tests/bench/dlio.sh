#!/usr/bin/env bash
# DLIO (dlio-benchmark 2.0.0, MLPerf Storage's engine): unet3d and resnet50,
# scaled to a 2-core, 24 GiB machine, each read once with DLIO's own POSIX
# reader and once with sluice.dlio.SluiceReader through a daemon serving the
# same data folder as file://. Prints DLIO's accelerator utilisation (AU) and
# samples/s for the cold first epoch (page cache dropped, fresh daemon) and
# the warm epochs after it (page cache, or the daemon's cache).
#
#   bash tests/bench/dlio.sh [workdir]        # as root (drop_caches)
#
# Workloads (DLIO's h100 configs with these overrides; sizes by environment):
# - unet3d: npz, UNET3D_FILES=56 files of 32 MiB +- 8 MiB (1.75 GiB), batch
#   7, computation 0.074 s a step (the h100 config's 0.323 s scaled to
#   32 of its 140 MiB samples);
# - resnet50: jpeg with the PyTorch data loader (DLIO's tfrecord needs
#   TensorFlow and its own tf.data loader, which takes no reader class; the
#   PyTorch pipelines read ImageNet as JPEG files), RESNET50_FILES=8192
#   images of 338 x 338 pixels (DLIO's 112 KiB record; 63 KB as JPEG, 0.5
#   GiB in all), batch 400, computation 0.224 s a step (h100).
# Both with 2 read threads (the cores), EPOCHS=3, DLIO's tracer off.
#
# Needs DLIO installed (docs/BENCHMARKS.md, DLIO) and a release sluiced
# (built if missing; SLUICED_BIN=... for another). The client goes into
# WORKDIR/venv (system site packages: DLIO and torch), built in the release
# profile; DLIO_SKIP_SLUICE_INSTALL=1 keeps the one there.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
work=$(realpath -m "${1:-/tmp/sluice-bench/dlio}")
mkdir -p "$work"
sluiced="${SLUICED_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/sluiced}"
if [ -z "${SLUICED_BIN:-}" ] && [ ! -x "$sluiced" ]; then
  cargo build --release --locked -p sluiced
fi
venv="$work/venv"
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
python="$venv/bin/python"
if [ "${DLIO_SKIP_SLUICE_INSTALL:-0}" != 1 ]; then
  MATURIN_PEP517_ARGS="--profile release --locked" "$python" -m pip install --quiet \
    --disable-pip-version-check --force-reinstall --no-deps ./client-py
fi
"$python" -c 'import dlio_benchmark, sluice.dlio' \
  || { echo "install dlio-benchmark first (docs/BENCHMARKS.md, DLIO)" >&2; exit 1; }
epochs="${EPOCHS:-3}"
budget="${DLIO_BENCH_BUDGET:-4GiB}"
export DFTRACER_ENABLE=0

unet3d=(
  workload=unet3d_h100
  ++workload.dataset.num_files_train="${UNET3D_FILES:-56}"
  ++workload.dataset.record_length=33554432
  ++workload.dataset.record_length_stdev=8388608
  ++workload.train.computation_time=0.074
)
resnet50=(
  workload=resnet50_h100
  ++workload.framework=pytorch
  ++workload.reader.data_loader=pytorch
  ++workload.dataset.format=jpeg
  ++workload.dataset.num_samples_per_file=1
  ++workload.dataset.num_files_train="${RESNET50_FILES:-8192}"
)
common=(
  ++workload.workflow.checkpoint=False
  ++workload.reader.read_threads=2
  ++workload.train.epochs="$epochs"
)

# dlio NAME OUTPUT ARGS...: one DLIO run, its log next to its output folder.
dlio() {
  local name=$1 out=$2
  shift 2
  rm -rf "$out"
  (cd "$work" && "$python" -m sluice.dlio "$@" "${common[@]}" \
    ++workload.dataset.data_folder="$work/data/$name" ++workload.output.folder="$out") \
    > "$out.log" 2>&1 || { tail -30 "$out.log" >&2; return 1; }
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

start_daemon() {
  sock="$work/sluiced.sock"
  rm -f "$sock" "$sock.fds"
  "$sluiced" --socket "$sock" --file-root "$work/data" --memory-budget "$budget" \
    --log-level warn > "$work/sluiced.log" 2>&1 &
  daemon=$!
  for _ in $(seq 300); do [ -S "$sock" ] && [ -S "$sock.fds" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "sluiced did not start; see $work/sluiced.log" >&2; exit 1; }
  # The arena resident first (cache.prefault), as on a node up for a while.
  local want
  want=$("$python" -c "import re,sys; n,u=re.fullmatch(r'(\d+)([KMG]i?B)?','$budget').groups(); print(int(n)<<{'KiB':10,'MiB':20,'GiB':30}.get(u,0))")
  for _ in $(seq 600); do
    [ "$(awk '/^RssShmem:/ {printf "%d", $2 * 1024}' "/proc/$daemon/status")" -ge "$want" ] && break
    sleep 0.1
  done
}

stop_daemon() { kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true; daemon=""; }
daemon=""
trap '[ -z "$daemon" ] || stop_daemon' EXIT

report() {
  "$python" - "$@" <<'EOF'
import json, statistics, sys
rows = {}
for out in sys.argv[1:]:
    name, reader = out.rsplit("/", 1)[1].split("-")
    m = json.load(open(f"{out}/summary.json"))["metric"]
    au, sps = m["train_au_percentage"], m["train_throughput_samples_per_second"]
    rows[(name, reader)] = (au[0], sps[0], statistics.mean(au[1:]), statistics.mean(sps[1:]))
print(f"{'workload':9} {'reader':7} {'cold AU %':>9} {'cold samples/s':>14} {'warm AU %':>9} {'warm samples/s':>14}")
for (name, reader), r in rows.items():
    print(f"{name:9} {reader:7} {r[0]:9.1f} {r[1]:14.1f} {r[2]:9.1f} {r[3]:14.1f}")
def ratio(a, b):
    return f"{a / b:.2f}" if b else "n/a"
for name in dict.fromkeys(n for n, _ in rows):
    p, s = rows[(name, "posix")], rows[(name, "sluice")]
    print(f"{name}: sluice / posix  cold AU {ratio(s[0], p[0])}  cold samples/s {ratio(s[1], p[1])}"
          f"  warm AU {ratio(s[2], p[2])}  warm samples/s {ratio(s[3], p[3])}")
EOF
}

outs=()
for name in unet3d resnet50; do
  declare -n workload="$name"
  if [ ! -f "$work/data/$name/.generated" ]; then
    echo "== $name: generating"
    rm -rf "$work/data/$name"
    dlio "$name" "$work/gen-$name" "${workload[@]}" \
      ++workload.workflow.generate_data=True ++workload.workflow.train=False
    touch "$work/data/$name/.generated"
  fi
  du -sh "$work/data/$name"

  echo "== $name: DLIO's POSIX reader"
  drop_caches
  dlio "$name" "$work/$name-posix" "${workload[@]}"
  outs+=("$work/$name-posix")

  echo "== $name: sluice reader"
  start_daemon
  drop_caches
  dlio "$name" "$work/$name-sluice" "${workload[@]}" \
    ++workload.reader.reader_classname=sluice.dlio.SluiceReader \
    ++workload.sluice.address="unix://$sock"
  grep -q "Discovered custom data reader SluiceReader" "$work/$name-sluice.log"
  stop_daemon
  outs+=("$work/$name-sluice")
  unset -n workload
done
report "${outs[@]}"
