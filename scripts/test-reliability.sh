#!/usr/bin/env bash
# Reliability checks that are not cargo tests (scripts/test.sh calls this after `cargo test`,
# which already ran the bad-input corpus, the kill harness and the concurrency tests):
#   1. every `unsafe` block has a SAFETY comment (scripts/check_safety_comments.py);
#   2. every cargo-fuzz target runs briefly (scripts/fuzz-smoke.sh, FUZZ_SECONDS each, default 15).
# See RELIABILITY.md for what each part covers and the numbers of the long runs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check_safety_comments.py
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz-smoke.sh
