#!/usr/bin/env bash
# The whole test suite on a fresh clone: installs what the tests need (a project-local Python venv
# with onnx + onnxruntime, and the ONNX Runtime shared library from the same PyPI wheel), then
# runs the format check, clippy with -D warnings, and every test with the `ort` backend on.
# .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }

step "test environment (.venv, .deps/onnxruntime)"
ORT_DYLIB_PATH="$(bash scripts/setup-test-env.sh | tail -n 1)"
export ORT_DYLIB_PATH
echo "ONNX Runtime: $ORT_DYLIB_PATH"

# Every package's backend-dependent tests run on both engines.
features="ferrite/ort,ferrite-runtime/ort"
for crate in exporter trainer; do
  if [ -f "$crate/Cargo.toml" ] && grep -q '^ort *=' "$crate/Cargo.toml"; then
    features="$features,ferrite-$crate/ort"
  fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --features "$features" -- -D warnings

step "cargo test"
cargo test --workspace --features "$features"

step "C API" && bash scripts/test-c.sh

# aarch64 under qemu-user: the runtime's tests cross-built, tract and ONNX Runtime parity with
# this x86 CLI on every bundle, the C examples, and `boards/build rpi4` + the README's deploy
# lines (installs the cross toolchain with apt when missing). Uses target/c-test from the C step.
step "aarch64 (qemu-user)" && FERRITE_CLI="$PWD/target/debug/ferrite" bash scripts/test-aarch64.sh

# SAFETY comments, Miri over the C API's misuse paths and the runtime's unit tests, and every
# fuzz target for 20 s in the dev build (~5 min cold on 2 cores; FERRITE_FUZZ_SMOKE=0 skips the
# fuzzing). The bad-input corpus, kill harness and concurrency tests ran in `cargo test` (issue 9).
step "reliability (SAFETY comments, Miri, fuzz smoke)" && bash scripts/test-reliability.sh

step "done"
echo "scripts/test.sh finished in $(( $(date +%s) - started ))s"
