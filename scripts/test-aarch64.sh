#!/usr/bin/env bash
# ferrite on aarch64, under qemu-user (issue 7): cross-builds the runtime's tests, the CLI and the
# C library for the Raspberry Pi 4 (boards/rpi4.toml: target-cpu cortex-a72) and runs them with
# `-cpu cortex-a72` and with `-cpu cortex-a76` (where tract picks its SDOT int8 kernels):
#   1. the runtime's unit tests (built with the `ort` feature too);
#   2. parity with the x86 CLI (same script, same inputs) on every bundle under models/*/{int8,fp32}/
#      plus LSTM and GPT-2 test bundles exported here in both quantisations and a Llama GGUF fixture
#      in fp32, int8 and q4, on tract and on ONNX
#      Runtime (the aarch64 wheel's library under qemu >= 8 vs the x86 one): greedy ids identical,
#      prompt logits within 1e-4 (fp32), 1e-3 (q4: tract codes its activations in 16 bits) or
#      half the bundle's own int8 logit error, at least 1e-3 (int8, see int8_tolerance below
#      and boards/README.md); `infer`
#      outputs on models/tiny-lstm-lm and tests/models/* within 1e-4;
#   3. the C examples (examples/c), cross-compiled, against the x86 CLI's output;
#   4. `boards/build rpi4` and the README's "Deploy to a Raspberry Pi" lines, run as written
#      (the board's binary under qemu instead of on a Pi, `cc` replaced by the cross compiler).
# Missing packages are installed with apt-get; when that fails the script FAILS, it never skips.
# Environment: FERRITE_CLI (x86 reference, default target/debug/ferrite, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
started=$(date +%s)
step() { printf '\n==> aarch64: %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }
fail() { echo "test-aarch64: FAIL: $*" >&2; exit 1; }

FP32_TOLERANCE=1e-4
# int8 prompt logits: another platform's kernels round differently, so an activation that lands
# on a quantisation boundary takes the neighbouring code, and the logits move by a fraction of
# the bundle's own int8 error. Allowed: half the max abs logit error the exporter measured
# against fp32 (ferrite.json, accuracy.outputs.logits.max_abs_error; 2e-2 when absent), or
# INT8_TOLERANCE when set. A GPT int8 export with 8-bit codes has differed by 0.039 on
# cortex-a72 (its own error 0.157): a fixed 2e-2 is too tight.
# Never below QUANT_TOLERANCE (below): an int8 bundle of a 4-bit GGUF keeps the file's 4-bit
# codes, so its own error is only that activation coding's.
int8_tolerance() { # BUNDLE
    if [ -n "${INT8_TOLERANCE:-}" ]; then echo "$INT8_TOLERANCE"; return; fi
    python3 - "$1/ferrite.json" "$QUANT_TOLERANCE" <<'EOF'
import json, sys
logits = json.load(open(sys.argv[1])).get("accuracy", {}).get("outputs", {}).get("logits", {})
print(max(logits["max_abs_error"] / 2 if "max_abs_error" in logits else 2e-2, float(sys.argv[2])))
EOF
}
# q4 on tract codes each block of 32 activations in 16 bits (runtime/src/kernels/matmul_q4.rs,
# the same integers on both platforms): a last-bit difference in an f32 op upstream (x86 and
# aarch64 kernels round differently, ~3e-7 on the fp32 bundles) can move an activation one
# code, 1/65534 of its block's range. Measured on the Llama GGUF's int8 bundle: 2.4e-4.
QUANT_TOLERANCE=1e-3
profile=cross-test
target=aarch64-unknown-linux-gnu
target_dir="$root/target-aarch64"
out_dir="$target_dir/$target/$profile"
work="$root/target/aarch64-test"
cpus=(cortex-a72 cortex-a76)
# -E LD_LIBRARY_PATH: without it the cross ld.so (libc6-arm64-cross) loads libc.so.6 of libc6:arm64
# (pulled in by libstd-rust-web-dev:arm64) through the host ld.so.cache; the two glibc builds
# disagree on private ABI and every pthread_create hangs (docs/pitfalls.md).
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib)

step "toolchain (Debian rustc-web, libstd-rust-web-dev:arm64, gcc-aarch64-linux-gnu, qemu-user-static)"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "test-aarch64: adding the arm64 architecture to dpkg"
    $sudo dpkg --add-architecture arm64 || fail "dpkg --add-architecture arm64"
fi
missing=()
for p in rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu qemu-user-static; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
minor() { /usr/bin/rustc -V 2>/dev/null | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p'; }
if [ ${#missing[@]} -gt 0 ] || [ "$(minor || echo 0)" -lt 91 ]; then
    echo "test-aarch64: installing ${missing[*]:-a newer rustc-web} with apt-get (tract needs rustc >= 1.91)"
    { $sudo apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web libstd-rust-web-dev:arm64 \
            gcc-aarch64-linux-gnu qemu-user-static; } || fail "apt-get could not install the cross toolchain"
fi
[ "$(minor || echo 0)" -ge 91 ] || fail "/usr/bin/rustc is $(/usr/bin/rustc -V 2>&1): tract 0.23 needs >= 1.91"
command -v "${qemu[0]}" >/dev/null || fail "qemu-aarch64-static is missing"
# qemu-user < 8 shows the host's /proc/cpuinfo to an aarch64 guest: tract then cannot see dotprod
# (no SDOT kernels on cortex-a76) and ONNX Runtime's cpuinfo crashes in dlopen. Debian bookworm
# has 7.2; bookworm-backports has 10.0, which emulates /proc/cpuinfo for the chosen -cpu.
qemu_major() { "${qemu[0]}" --version | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p'; }
if [ "$(qemu_major || echo 0)" -lt 8 ]; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ "$codename" = bookworm ] || fail "qemu-user $(qemu_major) < 8 and no known backports suite for '$codename': install qemu-user >= 8"
    echo "test-aarch64: qemu-user $(qemu_major) < 8: installing qemu-user-static from bookworm-backports"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    { $sudo apt-get update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-user-static; } \
        || fail "apt-get could not install qemu-user-static from bookworm-backports"
    [ "$(qemu_major || echo 0)" -ge 8 ] || fail "qemu-user is still $(qemu_major) after the install"
fi
command -v aarch64-linux-gnu-gcc >/dev/null || fail "aarch64-linux-gnu-gcc is missing"
echo "$(/usr/bin/rustc -V); $(aarch64-linux-gnu-gcc --version | head -n 1); $(${qemu[0]} --version | head -n 1)"

# Every cross build: Debian's compiler, the cross linker, the Pi 4 CPU, one target dir.
xcargo() {
    env RUSTC=/usr/bin/rustc CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_DIR="$target_dir" RUSTFLAGS="-C target-cpu=cortex-a72" \
        cargo "$@" --profile "$profile" --target "$target"
}

step "x86 reference CLI"
x86="${FERRITE_CLI:-$root/target/debug/ferrite}"
# With the ONNX Runtime backend: the ORT parity runs compare ORT on aarch64 with ORT on x86.
[ -n "${FERRITE_CLI:-}" ] || cargo build --bin ferrite --features ort
"$x86" --version
x86_ort="${ORT_DYLIB_PATH:-$(bash scripts/setup-test-env.sh | tail -n 1)}"

step "ONNX Runtime for aarch64 (manylinux_2_28_aarch64 wheel, version pinned in requirements-test.txt)"
ort_version="$(sed -n 's/^onnxruntime==//p' scripts/requirements-test.txt)"
[ -n "$ort_version" ] || fail "no onnxruntime pin in scripts/requirements-test.txt"
arm_ort="$root/.deps/onnxruntime-aarch64/libonnxruntime.so.$ort_version"
if [ ! -f "$arm_ort" ]; then
    wheels="$(mktemp -d)"
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --python-version 3.11 "onnxruntime==$ort_version" -d "$wheels" \
        || fail "pip could not download the aarch64 onnxruntime $ort_version wheel"
    mkdir -p "$(dirname "$arm_ort")"
    python3 - "$wheels" "$arm_ort" "$ort_version" <<'EOF'
import glob, os, sys, zipfile
wheels, dest, version = sys.argv[1:]
(wheel,) = glob.glob(os.path.join(wheels, "onnxruntime-*.whl"))
with zipfile.ZipFile(wheel) as z, open(dest + ".tmp", "wb") as f:
    f.write(z.read(f"onnxruntime/capi/libonnxruntime.so.{version}"))
os.replace(dest + ".tmp", dest)
EOF
    rm -rf "$wheels"
fi
echo "aarch64 ONNX Runtime: $arm_ort"

step "cross-build: runtime tests (tract + ort), CLI (tract + ort), libferrite"
mkdir -p "$target_dir"
xcargo test -p ferrite-runtime --features ort,npy --no-run --message-format=json > "$target_dir/runtime-tests.json" \
    || { grep -h '"rendered"' "$target_dir/runtime-tests.json" | tail -n 20 >&2; fail "cross-building the runtime's tests"; }
runtime_tests=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
' "$target_dir/runtime-tests.json")
[ -n "$runtime_tests" ] || fail "no runtime test executable was built"
xcargo build --bin ferrite --no-default-features --features tract,ort
arm="$out_dir/ferrite"
have_ffi=0
if [ -f runtime/ffi/Cargo.toml ]; then
    xcargo build -p ferrite-ffi --no-default-features --features tract
    have_ffi=1
fi

step "runtime unit tests under qemu"
for cpu in "${cpus[@]}"; do
    for t in $runtime_tests; do
        echo "-- $(basename "$t") on $cpu"
        (cd runtime && "${qemu[@]}" -cpu "$cpu" "$t" -q) || fail "runtime tests on $cpu"
    done
done

step "bundles: shipped ones, LSTM/GPT-2 test bundles in both quantisations, a Llama GGUF in three"
mkdir -p "$work"
bundles=()
for b in models/*/int8 models/*/fp32; do [ -f "$b/ferrite.json" ] && bundles+=("$root/$b"); done
for arch in lstm gpt2; do
    for quant in fp32 int8; do
        dir="$work/bundles/$arch-$quant"
        [ -f "$dir/ferrite.json" ] || "$x86" export "exporter/tests/golden/$arch" -o "$dir" --quant "$quant" --force >/dev/null
        bundles+=("$dir")
    done
done
# A Llama-family bundle from a GGUF file (grouped-query attention, llama3 rotary scaling, Q4_1
# blocks: q4 keeps the file's codes).
for quant in fp32 int8 q4; do
    dir="$work/bundles/llama-$quant"
    [ -f "$dir/ferrite.json" ] || "$x86" export exporter/tests/golden/llama3/model-q4_1.gguf -o "$dir" \
        --quant "$quant" --force --quiet >/dev/null
    bundles+=("$dir")
done

# Compares two `generate --json` outputs and two .npy logit dumps (pure Python, no numpy).
compare() { # compare X86_JSON ARM_JSON X86_NPY ARM_NPY TOLERANCE WHAT
    python3 - "$@" <<'EOF'
import json, struct, sys
x_json, a_json, x_npy, a_npy, tol, what = sys.argv[1:]
def npy(path):
    b = open(path, "rb").read()
    n = struct.unpack("<H", b[8:10])[0]
    assert b"'<f4'" in b[10:10 + n], path
    data = b[10 + n:]
    return struct.unpack("<%df" % (len(data) // 4), data)
x, a = json.load(open(x_json)), json.load(open(a_json))
if x["ids"] != a["ids"]:
    sys.exit(f"{what}: greedy ids differ\n  x86:     {x['ids']}\n  aarch64: {a['ids']}")
lx, la = npy(x_npy), npy(a_npy)
if len(lx) != len(la):
    sys.exit(f"{what}: {len(lx)} logits on x86, {len(la)} on aarch64")
diff = max(abs(p - q) for p, q in zip(lx, la))
print(f"{what}: {len(x['ids'])} ids identical, max |logit diff| {diff:.2e} (tolerance {tol})")
if not diff <= float(tol):
    sys.exit(f"{what}: logits differ by {diff:.3e} > {tol}")
EOF
}

step "parity with x86: generate (greedy ids, prompt logits)"
for b in "${bundles[@]}"; do
    name="$(basename "$(dirname "$b")")-$(basename "$b")"
    quant=fp32
    grep -q '"int8"' "$b/ferrite.json" && quant=int8
    grep -q '"quantisation": "q4"' "$b/ferrite.json" && quant=q4
    tol=$FP32_TOLERANCE
    [ "$quant" = int8 ] && tol=$(int8_tolerance "$b")
    [ "$quant" = q4 ] && tol=$QUANT_TOLERANCE
    if [[ "$b" == "$root/models/"* ]]; then
        prompt=(--prompt "ROMEO: ")
    else
        prompt=(--ids 3,1,4,1,5,9,2,6)
    fi
    args=(generate "$b" "${prompt[@]}" --temperature 0 --max-tokens 16 --json)
    out="$work/parity/$name"
    mkdir -p "$out"
    "$x86" "${args[@]}" --dump-logits "$out/x86.npy" > "$out/x86.json"
    for cpu in "${cpus[@]}"; do
        "${qemu[@]}" -cpu "$cpu" "$arm" "${args[@]}" --dump-logits "$out/$cpu.npy" > "$out/$cpu.json" \
            || fail "$name on $cpu"
        compare "$out/x86.json" "$out/$cpu.json" "$out/x86.npy" "$out/$cpu.npy" "$tol" "$name ($quant, $cpu)" \
            || fail "$name on $cpu differs from x86"
    done
    # ONNX Runtime: the aarch64 wheel's library under qemu against the x86 wheel's (same version).
    ORT_DYLIB_PATH="$x86_ort" "$x86" "${args[@]}" --backend ort --dump-logits "$out/x86-ort.npy" > "$out/x86-ort.json"
    for cpu in "${cpus[@]}"; do
        ORT_DYLIB_PATH="$arm_ort" "${qemu[@]}" -cpu "$cpu" "$arm" "${args[@]}" --backend ort \
            --dump-logits "$out/$cpu-ort.npy" > "$out/$cpu-ort.json" || fail "$name on $cpu with ONNX Runtime"
        compare "$out/x86-ort.json" "$out/$cpu-ort.json" "$out/x86-ort.npy" "$out/$cpu-ort.npy" "$tol" \
            "$name ($quant, $cpu, ort)" || fail "$name on $cpu with ONNX Runtime differs from x86"
    done
done

step "parity with x86: infer on raw ONNX models"
compare_npz() { # compare_npz X86_NPZ ARM_NPZ WHAT
    python3 - "$@" <<'EOF'
import struct, sys, zipfile
def arrays(path):
    out = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            b = z.read(name)
            n = struct.unpack("<H", b[8:10])[0]
            header = b[10:10 + n].decode("latin1")
            fmt = {"'<f4'": "f", "'<i8'": "q", "'<i4'": "i"}
            code = next(v for k, v in fmt.items() if k in header)
            size = struct.calcsize(code)
            data = b[10 + n:]
            out[name] = struct.unpack("<%d%s" % (len(data) // size, code), data)
    return out
x, a = arrays(sys.argv[1]), arrays(sys.argv[2])
assert x.keys() == a.keys(), (x.keys(), a.keys())
diff = max(max((abs(p - q) for p, q in zip(x[k], a[k])), default=0.0) for k in x)
print(f"{sys.argv[3]}: {len(x)} outputs, max |diff| {diff:.2e}")
sys.exit(0 if diff <= 1e-4 else f"{sys.argv[3]}: outputs differ by {diff:.3e}")
EOF
}
for case in models/tiny-lstm-lm tests/models/lstm tests/models/external_data tests/models/dynamic_batch tests/models/matmul_integer; do
    inputs=()
    while IFS=$'\t' read -r input file; do inputs+=(--input "$input=$case/$file"); done < <(
        python3 -c 'import json,sys; [print(k, v, sep="\t") for k, v in json.load(open(sys.argv[1]))["inputs"].items()]' "$case/case.json")
    out="$work/infer/$(basename "$case")"
    mkdir -p "$out"
    "$x86" infer "$case/model.onnx" "${inputs[@]}" --output "$out/x86.npz"
    for cpu in "${cpus[@]}"; do
        "${qemu[@]}" -cpu "$cpu" "$arm" infer "$case/model.onnx" "${inputs[@]}" --output "$out/$cpu.npz" \
            || fail "infer $case on $cpu"
        compare_npz "$out/x86.npz" "$out/$cpu.npz" "$(basename "$case") ($cpu)" || fail "infer $case on $cpu differs"
    done
done

step "C examples, cross-compiled, against the x86 CLI"
if [ "$have_ffi" -eq 1 ] && [ -f examples/c/Makefile ]; then
    [ -f target/c-test/minilm-fp32/ferrite.json ] \
        || fail "target/c-test/minilm-fp32 is missing: scripts/test-c.sh makes it (run it first)"
    for cpu in "${cpus[@]}"; do
        make -C examples/c test CC=aarch64-linux-gnu-gcc RUNNER="${qemu[*]} -cpu $cpu" VALGRIND= \
            FERRITE_LIB_DIR="$out_dir" FERRITE_CLI="$x86" BUNDLE_DIR="$root/target/c-test" \
            BUILD="$work/c-$cpu" || fail "C examples on $cpu"
    done
else
    fail "the C API (runtime/ffi) or examples/c is missing"
fi

step "boards/build rpi4 and the README's deploy lines"
# The README's block, run as written: on "the Pi" the binaries run under qemu with the Pi 4 CPU.
readme_block="$(awk '/^## Deploy to a Raspberry Pi/{s=1} s && /^```sh$/{c=1; next} c && /^```$/{exit} c' README.md)"
[ -n "$readme_block" ] || fail "README.md has no \"Deploy to a Raspberry Pi\" sh block"
pi_home="$work/pi-home"
rm -rf "$pi_home" && mkdir -p "$pi_home"
cp examples/c/readme_example.c "$pi_home/app.c"
[ -f models/shakespeare-gpt/int8/ferrite.json ] || fail "models/shakespeare-gpt/int8 (the README's bundle) is missing"
script="$work/readme-deploy.sh"
{
    echo 'set -euxo pipefail'
    echo "export FERRITE_BOARD_PROFILE=$profile FERRITE_DIST='$work/dist'"
    echo "cd '$root'"
    printf '%s\n' "$readme_block" | sed \
        -e "s|^scp \(.*\) pi@raspberrypi.local:$|cp '$work/dist/'\$(basename \1) '$pi_home/' \&\& cd '$pi_home'|" \
        -e "s|^\./|${qemu[*]} -cpu cortex-a72 ./|" \
        -e "s|^cc |aarch64-linux-gnu-gcc |"
} > "$script"
cat "$script"
bash "$script" || fail "a README deploy line failed"
echo "test-aarch64: all passed in $(( $(date +%s) - started ))s"
