#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly (CI smoke; default 20 s each, FUZZ_SECONDS to
# change, at most 60 in CI). Longer runs: FUZZ_SECONDS=1800 bash scripts/fuzz-smoke.sh.
#
# cargo fuzz needs nightly-only rustc flags; on the stable toolchain RUSTC_BOOTSTRAP=1 allows
# them (measured: stable 1.95 builds and runs these targets). No sanitizer (-s none): the targets
# look for panics, overflows (debug assertions on, -a), hangs (-timeout) and big allocations
# (-malloc_limit_mb), and the runtime's only unsafe code is one mmap. Installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/fuzz/target"
targets=(model_open bundle_manifest tokenizer)
(cd fuzz && cargo fuzz build -s none -a)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  log="$scratch/$t.log"
  echo "fuzz $t: ${seconds}s"
  if ! (cd fuzz && FERRITE_FUZZ_SCRATCH="$scratch" cargo fuzz run -s none -a "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -malloc_limit_mb=2048 -rss_limit_mb=4096 \
        -max_len=65536 -print_final_stats=1 >"$log" 2>&1); then
    tail -n 40 "$log"
    echo "fuzz $t: FAILED (crash input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$log" | sed "s/^/  $t /"
done
