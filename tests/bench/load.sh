#!/usr/bin/env bash
# Load and fair shares at full size: 1000 concurrent Read streams and 200
# shared-memory sessions against a 64 MiB budget, next to a client that
# stopped reading, while an idle client reads a small cached object and
# health checks and /metrics are polled (tests/tests/load.rs at the size
# the suite runs it smaller). Prints reads, RESOURCE_EXHAUSTED answers, the
# daemon's peak RSS against budget + allowance, and the idle client's p50/p99.
#
#   bash tests/bench/load.sh [streams] [sessions] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --locked -p sluiced -p sluice-client --bins
SLUICE_LOAD_STREAMS="${1:-1000}" SLUICE_LOAD_SESSIONS="${2:-200}" SLUICE_LOAD_ROUNDS="${3:-3}" \
  cargo test --locked -p sluice-tests --test load -- --nocapture 2>&1 | grep -E '^load:|test result'
