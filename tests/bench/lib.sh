# Shared by the benchmark scripts; sourced from the repository root.

# The s3s-fs binary: $S3S_FS_BIN, else the one scripts/test.sh installs,
# else s3s-fs on PATH; prints nothing when there is none.
find_s3s_fs() {
  local c
  for c in "${S3S_FS_BIN:-}" "$HOME/.cache/sluice-tools/bin/s3s-fs" /tmp/s3sfs/bin/s3s-fs \
           "$(command -v s3s-fs || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
}

# find_s3s_fs, or exit saying how to get it.
require_s3s_fs() {
  local s
  s=$(find_s3s_fs)
  [ -n "$s" ] || { echo "s3s-fs not found: set S3S_FS_BIN or run scripts/test.sh" >&2; exit 1; }
  echo "$s"
}

# The shared data set, full or --small (SMALL=1): sets n_large, large_mib,
# n_small, small_kib, and work (WORK, else the default workdir of the size),
# made absolute and created.
bench_sets() {
  local small=$1
  work=$2
  if [ "$small" = 1 ]; then
    work="${work:-/tmp/sluice-bench-small}"; n_large=4; large_mib=16; n_small=200
  else
    work="${work:-/tmp/sluice-bench}"; n_large=32; large_mib=32; n_small=4000
  fi
  small_kib=128
  mkdir -p "$work"
  work=$(cd "$work" && pwd)
}
