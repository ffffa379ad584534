"""PyTorch `generate()` on a Hugging Face causal LM directory, measured as `ferrite bench` measures
a bundle: prefill tokens/s and time to first token for a prompt of P synthetic ids, decode
tokens/s over G greedy steps (`generate` with min_new_tokens = max_new_tokens = G, the prefill
subtracted), and the process's peak RSS. Median over --repeat runs after one warm-up. Prints one
JSON object. The peer beside `ferrite bench` in BENCHMARKS.md's SmolLM2 table.

    .venv-dev/bin/python scripts/bench_llm_torch.py DIR --threads 1 --prompt-tokens 128 --gen-tokens 64
"""

import argparse
import json
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a Hugging Face model directory (save_pretrained)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    load_ms = (time.perf_counter() - started) * 1e3
    vocab = model.config.vocab_size
    # The same kind of prompt as `ferrite bench`: fixed pseudo-random ids over the vocabulary.
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (1, args.prompt_tokens), generator=gen)
    prefill, decode = [], []
    with torch.inference_mode():
        for run in range(args.repeat + 1):
            t0 = time.perf_counter()
            model(ids, use_cache=True)
            t1 = time.perf_counter()
            model.generate(ids, do_sample=False, max_new_tokens=args.gen_tokens,
                           min_new_tokens=args.gen_tokens, pad_token_id=0)
            t2 = time.perf_counter()
            if run == 0:
                continue
            first = t1 - t0
            prefill.append(first)
            # generate() = one prefill + G - 1 decode steps (its last token needs no step).
            decode.append(max((t2 - t1) - first, 1e-9) / max(args.gen_tokens - 1, 1))
    p, d = statistics.median(prefill), statistics.median(decode)
    print(json.dumps({
        "peer": f"PyTorch {torch.__version__} generate()",
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "load_ms": load_ms,
        "time_to_first_token_ms": p * 1e3,
        "prefill_tokens_per_s": args.prompt_tokens / p,
        "decode_tokens_per_s": 1.0 / d,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
