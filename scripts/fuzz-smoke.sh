#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 20).
#
#   FUZZ_PROFILE=dev bash scripts/fuzz-smoke.sh      # CI smoke: unoptimised build (~5 min cold on
#                                                    # 2 cores instead of tens of minutes), 20 s each
#   FUZZ_SECONDS=1800 bash scripts/fuzz-smoke.sh     # the long runs (release build, the default)
#   FUZZ_TARGETS="c_api" FUZZ_RUNS=1000000 ...       # some targets; stop after N executions too
#   FUZZ_LOG_DIR=/tmp/logs ...                       # keep each target's libFuzzer log
#   FUZZ_TIMEOUT=120 ...                             # per-input limit in s (default 10): raise it
#                                                    # for runs at nice 19 beside other work, where
#                                                    # a 0.2 s input can wait > 10 s for a CPU
#
# Both profiles keep debug assertions and overflow checks on (`--dev` has them; release adds -a).
# cargo fuzz needs nightly-only rustc flags; on the stable toolchain RUSTC_BOOTSTRAP=1 allows
# them (stable 1.95 builds and runs these targets). No sanitizer (-s none): the targets look for
# panics, overflows, hangs (-timeout) and big allocations (-rss_limit_mb), and the only unsafe
# code they reach is the C API's (checked under Miri, see RELIABILITY.md) and one mmap.
# Installs cargo-fuzz if missing. Build output: fuzz/target only; crashes go to
# fuzz/artifacts/<target>. Release runs start from and grow fuzz/corpus/<target> (git-ignored);
# dev runs (the smoke) start from the seeds alone in a temporary corpus (FUZZ_CORPUS=keep to use
# fuzz/corpus): libFuzzer first replays every unit it is given, whatever -max_total_time says,
# and a grown corpus of a few thousand units takes minutes in the unoptimised build.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
profile="${FUZZ_PROFILE:-release}"
case "$profile" in
  dev) flags=(--dev -s none) ;;
  release) flags=(-O -s none -a) ;;
  *) echo "FUZZ_PROFILE must be dev or release, not $profile" >&2; exit 2 ;;
esac
read -r -a targets <<<"${FUZZ_TARGETS:-model_open bundle_manifest tokenizer c_api gguf chat_template}"
runs=()
if [ -n "${FUZZ_RUNS:-}" ]; then runs=(-runs="$FUZZ_RUNS"); fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/fuzz/target"
(cd fuzz && cargo fuzz build "${flags[@]}")
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
if [ -n "${FUZZ_LOG_DIR:-}" ]; then mkdir -p "$FUZZ_LOG_DIR"; fi
for t in "${targets[@]}"; do
  if [ "$profile" = release ] || [ "${FUZZ_CORPUS:-}" = keep ]; then
    corpus="$PWD/fuzz/corpus/$t"
  else
    corpus="$scratch/corpus/$t"
  fi
  mkdir -p "$corpus"
  log="${FUZZ_LOG_DIR:-$scratch}/$t.log"
  echo "fuzz $t ($profile): ${seconds}s"
  start=$(date +%s)
  if ! (cd fuzz && FERRITE_FUZZ_SCRATCH="$scratch" cargo fuzz run "${flags[@]}" "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$seconds" "${runs[@]}" -timeout="${FUZZ_TIMEOUT:-10}" -malloc_limit_mb=2048 -rss_limit_mb=4096 \
        -max_len=65536 -print_final_stats=1 >"$log" 2>&1); then
    tail -n 40 "$log"
    echo "fuzz $t: FAILED (crash input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  echo "  $t wall_s: $(( $(date +%s) - start ))"
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log" \
    | sed "s/^/  $t /"
  grep -E "^#[0-9]+ +DONE" "$log" | sed "s/^/  $t /" || true
done
