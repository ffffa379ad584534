#!/usr/bin/env bash
# Peak RSS of running each bundle with an aarch64 ferrite binary under qemu (Pi 4 CPU model) and
# natively on x86, next to the runtime's memory estimate and the Pi Zero 2 W budget; prints a
# Markdown table for BENCHMARKS.md ("Boards").
#
#   bash scripts/bench-boards.sh ARM_FERRITE [X86_FERRITE] [BUNDLE...]
#
# ARM_FERRITE: e.g. dist/ferrite-rpi4/bin/ferrite (boards/build rpi4). X86_FERRITE default:
# target/release/ferrite. Bundles default to models/*/{int8,fp32} and target/c-test/minilm.
# qemu-user's RSS includes its own translator (tens of MB), so it overstates a Pi's RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
arm="${1:?usage: bench-boards.sh ARM_FERRITE [X86_FERRITE] [BUNDLE...]}"
x86="${2:-target/release/ferrite}"
shift $(( $# >= 2 ? 2 : 1 ))
bundles=("$@")
if [ ${#bundles[@]} -eq 0 ]; then
    for b in models/*/int8 models/*/fp32 target/c-test/minilm; do [ -f "$b/ferrite.json" ] && bundles+=("$b"); done
fi
budget=$(sed -n 's/^memory-budget *= *\([0-9]*\).*/\1/p' boards/rpi-zero2w.toml)
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib -cpu cortex-a72)

peak_kib() { /usr/bin/time -v "$@" 2>&1 >/dev/null | sed -n 's/.*Maximum resident set size (kbytes): //p'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "| bundle | weights (MiB) | estimate (MiB) | peak RSS aarch64/qemu (MiB) | peak RSS x86 (MiB) | within Zero 2 W budget ($(( budget >> 20 )) MiB) |"
echo "|---|---|---|---|---|---|"
for b in "${bundles[@]}"; do
    if grep -q '"bert"' "$b/ferrite.json"; then
        args=(embed "$b" --text "A man is eating food." --text "ok")
    elif [ -f "$b/tokenizer.json" ] || [ -f "$b/vocab.json" ]; then
        args=(generate "$b" --prompt "ROMEO: " --max-tokens 64 --temperature 0)
    else
        args=(generate "$b" --ids 3,1,4,1,5,9,2,6 --max-tokens 64 --temperature 0)
    fi
    # The estimate, as the runtime states it when refusing (a 1-byte budget always refuses).
    line=$("$x86" "${args[@]}" --memory-budget 1 2>&1 >/dev/null || true)
    estimate=$(sed -n 's/.*needs an estimated \([0-9.]*\) MiB.* (\([0-9.]*\) MiB of weights.*/\1 \2/p' <<<"$line")
    read -r est weights <<<"${estimate:-? ?}"
    arm_kib=$(peak_kib "${qemu[@]}" "$arm" "${args[@]}")
    x86_kib=$(peak_kib "$x86" "${args[@]}")
    fits=no
    [ $(( arm_kib * 1024 )) -le "$budget" ] && fits=yes
    echo "| $b | $weights | $est | $(mib "$arm_kib") | $(mib "$x86_kib") | $fits |"
done
