"""ferrite against llama.cpp (and PyTorch `generate()`) on SmolLM2-135M-Instruct, in one sitting.

llama.cpp is built from the source PyPI's llama-cpp-python==0.3.36 vendors
(scripts/build-llama-cpp.sh); the SmolLM2 Q4_1 GGUF comes from models/fetch-smollm2.sh and
`llama-quantize --allow-requantize` makes its Q4_0, Q8_0 and F16 siblings. ferrite exports its
fp32, int8 and q4 bundles from the same Q4_1 file. Then, for 1 and 2 threads:

- `llama-bench -m GGUF -p P -n N -t T -r R -o json` (pp P and tg N, medians of R samples), its
  peak RSS from /usr/bin/time;
- `ferrite bench BUNDLE --backend tract|ort --threads T --prompt-tokens P --gen-tokens N
  --repeat R --json` (medians of R runs after a warm-up), peak RSS from the same /usr/bin/time;
- PyTorch `generate()` on the fp32 model (scripts/bench_llm_torch.py), when the dev venv has torch
  and `.deps/smollm2/hf` exists (scripts/make_smollm2_goldens.py --hf .deps/smollm2/hf).

Pairs at equal bits: q4 ↔ Q4_1 (the source; ferrite keeps its codes) and Q4_0, int8 (exported
with `--requantize-4bit`, so its layers are int8 rather than the source's kept 4-bit codes) ↔ Q8_0,
fp32 ↔ F16 (llama.cpp has no f32 matmul path worth racing; F16 is its float reference). Prints a
markdown table (paste into BENCHMARKS.md) and writes docs/bench/llm-peers.png when matplotlib is
present.

    scripts/bench-llm-peers [--threads 1,2] [--repeat 5] [--prompt-tokens 128] [--gen-tokens 128]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FERRITE = ROOT / "target/release/ferrite"
PLOT = ROOT / "docs/bench/llm-peers.png"
RESULTS = ROOT / "docs/bench/llm-peers.json"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def timed(cmd: list[str], env: dict | None = None) -> tuple[str, float]:
    """Runs `cmd` under /usr/bin/time; returns (stdout, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        out = run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=env).stdout
        return out, int(rss.read().split()[-1]) / 1024


def llama_bench(bin_dir: Path, gguf: Path, threads: int, args) -> dict:
    out, rss = timed([
        str(bin_dir / "llama-bench"), "-m", str(gguf), "-p", str(args.prompt_tokens),
        "-n", str(args.gen_tokens), "-t", str(threads), "-r", str(args.repeat), "-o", "json",
    ])
    rows = json.loads(out)
    pick = lambda key: next(r for r in rows if r[key] > 0)  # noqa: E731
    pp, tg = pick("n_prompt"), pick("n_gen")
    prefill = statistics.median(pp["samples_ts"])
    return {
        "prefill": prefill,
        "decode": statistics.median(tg["samples_ts"]),
        "ttft_ms": args.prompt_tokens / prefill * 1e3,
        "rss": rss,
        "build": pp.get("build_commit", "?"),
    }


def ferrite_bench(bundle: Path, backend: str, threads: int, args) -> dict:
    out, rss = timed([
        str(FERRITE), "bench", str(bundle), "--backend", backend, "--threads", str(threads),
        "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
        "--repeat", str(args.repeat), "--json",
    ])
    r = json.loads(out.strip().splitlines()[-1])
    return {
        "prefill": r["prefill_tokens_per_s"]["median"],
        "decode": r["decode_tokens_per_s"]["median"],
        "ttft_ms": r["time_to_first_token_ms"]["median"],
        "rss": rss,
    }


def torch_bench(hf: Path, threads: int, args) -> dict | None:
    py = Path(os.environ.get("PYTHON_DEV", ROOT / ".venv-dev/bin/python"))
    if not hf.is_dir() or not py.exists():
        return None
    if subprocess.run([str(py), "-c", "import torch, transformers"], capture_output=True).returncode:
        return None
    out = run([
        str(py), str(ROOT / "scripts/bench_llm_torch.py"), str(hf), "--threads", str(threads),
        "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
        "--repeat", str(min(args.repeat, 2)),
    ]).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {
        "prefill": r["prefill_tokens_per_s"],
        "decode": r["decode_tokens_per_s"],
        "ttft_ms": r["time_to_first_token_ms"],
        "rss": r["peak_rss_bytes"] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--bundles", type=Path, help="reuse fp32/int8/q4 bundles in this directory (int8 exported with --requantize-4bit)")
    ap.add_argument("--replot", action="store_true", help=f"redraw the plot from {RESULTS.name} only")
    args = ap.parse_args()
    if args.replot:
        draw(json.loads(RESULTS.read_text())["decode_ratios"])
        return
    threads = [int(t) for t in args.threads.split(",")]

    bin_dir = Path(run(["bash", str(ROOT / "scripts/build-llama-cpp.sh")]).stdout.strip().splitlines()[-1])
    bin_dir = bin_dir if bin_dir.is_absolute() else ROOT / bin_dir
    source = Path(run(["bash", str(ROOT / "models/fetch-smollm2.sh")]).stdout.strip().splitlines()[-1])
    ggufs = {"Q4_1": source}
    for kind in ("Q4_0", "Q8_0", "F16"):
        out = ROOT / ".deps/llama.cpp/models" / source.name.replace("Q4_1", kind)
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(tmp), kind])
            tmp.rename(out)
        ggufs[kind] = out

    work = Path(tempfile.mkdtemp(prefix="ferrite-llm-peers-"))
    try:
        report(args, threads, bin_dir, source, ggufs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, threads: list[int], bin_dir: Path, source: Path, ggufs: dict, work: Path) -> None:
    bundles = {}
    for quant in ("fp32", "int8", "q4"):
        if args.bundles:
            bundles[quant] = args.bundles / quant
            continue
        bundles[quant] = work / quant
        # int8 races llama.cpp's Q8_0, so its layers are int8 too: by default ferrite keeps the
        # Q4_1 codes under int8 (docs/quantisation.md), which would race q4 against Q8_0.
        extra = ["--requantize-4bit"] if quant == "int8" else []
        run([str(FERRITE), "export", str(source), "-o", str(bundles[quant]), "--quant", quant, "--quiet", *extra])
    size = lambda d: sum(f.stat().st_size for f in Path(d).iterdir()) / 1e6  # noqa: E731
    llama_size = lambda g: g.stat().st_size / 1e6  # noqa: E731

    pairs = [("q4", ["Q4_1", "Q4_0"]), ("int8", ["Q8_0"]), ("fp32", ["F16"])]
    rows, plot = [], []
    build = "?"
    for t in threads:
        for quant, kinds in pairs:
            peers = {k: llama_bench(bin_dir, ggufs[k], t, args) for k in kinds}
            build = next(iter(peers.values()))["build"]
            if build in ("?", "unknown"):
                build = "of llama-cpp-python 0.3.36 (vendored source, no git)"
            best = max(peers.values(), key=lambda r: r["decode"])
            for k, r in peers.items():
                rows.append((t, f"llama.cpp {k} ({llama_size(ggufs[k]):.0f} MB)", r, None))
            for backend in ("tract", "ort"):
                r = ferrite_bench(bundles[quant], backend, t, args)
                rows.append((t, f"ferrite {quant} {backend} ({size(bundles[quant]):.0f} MB)", r, best))
                plot.append((t, quant, backend, r["decode"] / best["decode"]))
        torch = torch_bench(ROOT / ".deps/smollm2/hf", t, args)
        if torch:
            rows.append((t, "PyTorch generate() fp32", torch, None))

    print(f"SmolLM2-135M-Instruct, prompt {args.prompt_tokens}, {args.gen_tokens} new tokens, "
          f"medians of {args.repeat}; llama.cpp build {build}. Ratios against the fastest "
          "llama.cpp file of the same bits at the same thread count.\n")
    print("| threads | runner (file size) | prefill tok/s | decode tok/s | first token ms | peak RSS MiB "
          "| prefill × llama.cpp | decode × llama.cpp |")
    print("|---|---|---|---|---|---|---|---|")
    for t, name, r, best in rows:
        ratio = lambda key: f"{r[key] / best[key]:.2f}" if best else "—"  # noqa: E731
        print(f"| {t} | {name} | {r['prefill']:.0f} | {r['decode']:.1f} | {r['ttft_ms']:.0f} "
              f"| {r['rss']:.0f} | {ratio('prefill')} | {ratio('decode')} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "repeat": args.repeat,
        "llama_cpp_build": build,
        "rows": [{"threads": t, "runner": name, **r} for t, name, r, _ in rows],
        "decode_ratios": plot,
    }, indent=1) + "\n")
    draw(plot)


def draw(plot: list) -> None:
    """Bar chart of decode tok/s ÷ llama.cpp per (threads, scheme, backend), when matplotlib is
    installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib missing: no plot)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{q} {b}\n{t} thr" for t, q, b, _ in plot]
    colours = ["#4477aa" if p[2] == "tract" else "#cc6677" for p in plot]
    ax.bar(range(len(plot)), [p[3] for p in plot], color=colours)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(plot)), labels, fontsize=7)
    ax.set_ylabel("decode tok/s ÷ llama.cpp")
    ax.set_title("SmolLM2-135M decode, ferrite ÷ llama.cpp at equal bits")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    print(f"(plot: {PLOT.relative_to(ROOT)})", file=sys.stderr)


if __name__ == "__main__":
    main()
