#!/usr/bin/env bash
# Builds llama.cpp (llama-bench, llama-quantize, llama-completion) from the source tree PyPI's
# llama-cpp-python==0.3.36 sdist vendors (vendor/llama.cpp: the crate llama-cpp-sys-2 strips the
# tools), once, into .deps/llama.cpp/ (git-ignored). CMake and Ninja come from PyPI. Prints the
# directory holding the binaries. ~15 minutes on 2 cores the first time; instant after.
#
#   bash scripts/build-llama-cpp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
root=.deps/llama.cpp
bin="$root/build/bin"
if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-quantize" ] && [ -x "$bin/llama-completion" ]; then
  echo "$bin"; exit 0
fi
venv="$root/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet cmake ninja scikit-build-core >&2
mkdir -p "$root/sdist"
sdist="$root/sdist/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  echo "build-llama-cpp: fetching llama-cpp-python==$version (sdist) from PyPI" >&2
  "$venv/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
    "llama-cpp-python==$version" -d "$root/sdist" >&2
fi
src="$root/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  rm -rf "$src" "$root/unpack" && mkdir -p "$root/unpack"
  tar -xzf "$sdist" -C "$root/unpack"
  mv "$root/unpack/llama_cpp_python-$version/vendor/llama.cpp" "$src"
  rm -rf "$root/unpack"
fi
export PATH="$PWD/$venv/bin:$PATH"
# Static, native (this CPU's SIMD, as ferrite's release build with the host's features), no
# network code. Only the three tools ferrite measures against.
cmake -S "$src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$root/build" --target llama-bench llama-quantize llama-completion -j "$(nproc)" >&2
echo "$bin"
