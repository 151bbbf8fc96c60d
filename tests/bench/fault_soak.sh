#!/usr/bin/env bash
# The long fault soak: a real sluiced reads objects of 1 KiB–64 MiB, whole
# and ranged, through shared memory and stream delivery, from a real
# S3-compatible server (s3s-fs) behind the fault proxy, which injects 503
# SlowDown (with and without Retry-After), stalls, resets and truncated
# bodies mid-body and wrong Content-Ranges into a share of the requests.
# Every byte is checked against the source; the test fails on a single
# wrong byte, an unclear error code, a hang, or retries beyond the rules.
# Prints one summary line: reads, failures by code, corrupt reads, proxy
# requests and faults by kind, backend calls and part retries.
#
#   bash tests/bench/fault_soak.sh [reads] [max_mib] [rate] [seed]
#
# Defaults: 10000 reads, objects up to 64 MiB, 5 % faults, seed 1.
# PROFILE=debug reuses the debug build of `cargo test` instead of release.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile="${PROFILE:-release}"
flag=()
[ "$profile" = release ] && flag=(--release)
export SOAK_READS="${1:-10000}" SOAK_MAX_MIB="${2:-64}" SOAK_RATE="${3:-0.05}" SOAK_SEED="${4:-1}"
export SOAK_OBJECTS="${SOAK_OBJECTS:-64}" SOAK_CONCURRENCY="${SOAK_CONCURRENCY:-8}"
echo "== fault soak: $SOAK_READS reads, objects 1 KiB–$SOAK_MAX_MIB MiB ($SOAK_OBJECTS), rate $SOAK_RATE, seed $SOAK_SEED, $profile build"
cargo test "${flag[@]}" --locked -p sluice-tests --test fault_soak -- --nocapture 2>&1 |
  grep -E '^(fault soak|  failed|test result)|panicked|wrong bytes|unclear'
