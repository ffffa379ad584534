#!/usr/bin/env bash
# Runtime benchmarks of issue "Foundation": load-to-first-output and steady run time (criterion)
# and peak RSS during load per weight byte, per backend, on a generated >= 20 MB model.
# Prints a markdown section for BENCHMARKS.md (and writes it to target/bench-foundation.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_DYLIB_PATH="$(bash scripts/setup-test-env.sh | tail -n 1)"
export ORT_DYLIB_PATH
.venv/bin/python scripts/make_bench_model.py target/bench-model >/dev/null
cargo bench --features ort --bench runtime -- --noplot >target/bench-runtime.log 2>&1 \
  || { tail -20 target/bench-runtime.log; exit 1; }
cargo bench --features ort --bench load_memory 2>/dev/null | grep '^{' >target/bench-memory.jsonl
.venv/bin/python - <<'PY' | tee target/bench-foundation.md
import json, pathlib, platform, subprocess
root = pathlib.Path("target/criterion")
def median_ms(group, label):
    p = root / group / label.replace("/", "_") / "new" / "estimates.json"
    if not p.exists():
        p = next((root / group).glob(label.split("/")[0] + "*" + label.split("/")[1] + "/new/estimates.json"))
    return json.loads(p.read_text())["median"]["point_estimate"] / 1e6
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Machine: {cpu}, {subprocess.check_output(['nproc']).decode().strip()} cores; 1 compute thread; model: 5 x (1024x1024 MatMul + Add + Relu), 21.0 MB f32 weights.\n")
print("| config | load to first output (ms) | ratio to tract/external | steady run (ms) |")
print("|---|---|---|---|")
base = median_ms("load_to_first_output", "tract/external")
for label in ["tract/embedded", "tract/external", "ort/embedded", "ort/external", "ort-noprepack/external"]:
    load = median_ms("load_to_first_output", label)
    try:
        run = f"{median_ms('steady_run', label):.3f}"
    except StopIteration:
        run = "(same plan as external)"
    print(f"| {label} | {load:.1f} | {load / base:.2f}x | {run} |")
print("\n| config | peak RSS during load / weight bytes | private (anon) / weight bytes | file-backed / weight bytes |")
print("|---|---|---|---|")
for line in open("target/bench-memory.jsonl"):
    r = json.loads(line)
    w = r["weight_bytes"]
    print(f"| {r['config']} | {r['peak_rss_delta'] / w:.2f} | {r['anon_delta'] / w:.2f} | {r['file_delta'] / w:.2f} |")
PY
