#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, checks
# formatting and lints, builds the workspace once, runs every test against
# real servers (the daemon, an S3-compatible server) that the tests start.
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

step "rustfmt"
cargo fmt --all --check

step "build"
cargo build --workspace --all-targets --locked

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked -- --test-threads 2

step "all tests passed"
