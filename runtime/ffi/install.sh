#!/usr/bin/env bash
# Installs the C API: libferrite.a, libferrite.so, ferrite.h and ferrite.pc under PREFIX.
#
#   runtime/ffi/install.sh PREFIX [LIB_DIR]
#
# LIB_DIR is the cargo output directory holding libferrite.{a,so} (default: target/release of
# this checkout, after `cargo build --release -p ferrite-ffi`); for a cross build pass e.g.
# target-aarch64/aarch64-unknown-linux-gnu/release. Writes
#   PREFIX/lib/libferrite.a  PREFIX/lib/libferrite.so  PREFIX/include/ferrite.h
#   PREFIX/lib/pkgconfig/ferrite.pc
# Then: cc app.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs ferrite)
# or, static: cc app.c $(pkg-config --cflags ferrite) PREFIX/lib/libferrite.a $(pkg-config --libs-only-l --static ferrite | sed s/-lferrite//)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
prefix="$1"
lib_dir="${2:-$root/target/release}"
for f in libferrite.a libferrite.so; do
    [ -f "$lib_dir/$f" ] || { echo "install.sh: $lib_dir/$f is missing (cargo build --release -p ferrite-ffi)" >&2; exit 1; }
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n 1)"
# What a static link needs besides libferrite.a (rustc's --print native-static-libs for Linux).
static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
prefix="$(cd "$prefix" && pwd)" # ferrite.pc needs an absolute path
install -m 644 "$lib_dir/libferrite.a" "$prefix/lib/libferrite.a"
install -m 755 "$lib_dir/libferrite.so" "$prefix/lib/libferrite.so"
install -m 644 "$here/include/ferrite.h" "$prefix/include/ferrite.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" -e "s|@STATIC_LIBS@|$static_libs|g" \
    "$here/ferrite.pc.in" > "$prefix/lib/pkgconfig/ferrite.pc"
echo "installed ferrite $version into $prefix (lib/libferrite.{a,so}, include/ferrite.h, lib/pkgconfig/ferrite.pc)"
