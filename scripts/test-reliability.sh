#!/usr/bin/env bash
# Reliability checks that are not cargo tests (scripts/test.sh calls this after `cargo test`,
# which already ran the bad-input corpus, the kill harness and the concurrency tests):
#   1. every `unsafe` block has a SAFETY comment (scripts/check_safety_comments.py);
#   2. Miri over the C API's misuse tests and the runtime's unit tests (the nightly toolchain
#      with miri and rust-src, installed with rustup when missing);
#   3. every cargo-fuzz target for FUZZ_SECONDS (default 20) in the dev build
#      (scripts/fuzz-smoke.sh with FUZZ_PROFILE=dev; FERRITE_FUZZ_SMOKE=0 skips it).
# See RELIABILITY.md for what each part covers and the numbers of the long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check_safety_comments.py

# Miri needs a nightly toolchain with miri and rust-src: installed here when missing (a failed
# install fails the run; Miri is not skipped).
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal --component miri,rust-src
fi
# No files, no model runs: Miri cannot mmap (isolation) and interpreting tract takes hours.
# The chat-template tests are skipped too: they run minijinja's interpreter up to its fuel limit
# (minutes under Miri) and chat/ has no unsafe code; `cargo test` runs them natively.
cargo +nightly miri test -p ferrite-ffi --no-default-features --lib
cargo +nightly miri test -p ferrite-runtime --no-default-features --features text --lib -- \
  --skip locations_outside_the_directory --skip chat::template::tests

if [ "${FERRITE_FUZZ_SMOKE:-1}" != 0 ]; then
  FUZZ_PROFILE="${FUZZ_PROFILE:-dev}" FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz-smoke.sh
fi
