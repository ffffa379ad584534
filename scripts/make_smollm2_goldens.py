"""SmolLM2-135M-Instruct goldens: what transformers computes from the real GGUF, for
exporter/tests/smollm2.rs.

transformers loads `SmolLM2-135M-Instruct.Q4_1.gguf` (models/fetch-smollm2.sh) with
`from_pretrained(dir, gguf_file=...)`, which dequantises every tensor to f32 — the same weights
ferrite's fp32 bundle of that file holds. For three prompts (a short sentence, a chat turn
rendered by the GGUF's own template with the generation prompt, and a ~200-token paragraph) it
records the prompt ids transformers' tokenizer gives, the last position's logits (all of them) and
32 greedy ids from a loop over the KV cache (no stop at end-of-turn, as the test decodes), with the
smallest top-1 margin along the way so a near-tie is visible. Writes
exporter/tests/golden/smollm2/{expected.npz,prompts.json}.

`--hf DIR` also writes the model with `save_pretrained` (f32 safetensors, ~540 MB) to DIR, the
Hugging Face directory route of the same model; it is not committed.

Run once in the dev venv (torch + transformers + gguf + accelerate; never needed in CI):

    .venv-dev/bin/python scripts/make_smollm2_goldens.py [--hf .deps/smollm2/hf]
"""

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exporter/tests/golden/smollm2"
STEPS = 32

SHORT = "The three primary colours are"
CHAT = "What is the boiling point of water at sea level?"
LONG = (
    "A microcontroller in a thermostat wakes every few seconds, reads a temperature sensor over "
    "I2C, filters the reading, and decides whether the furnace relay should change state. The "
    "firmware is written in C, fits in a few hundred kilobytes of flash, and has run unchanged for "
    "years. Product engineers now want the same device to answer short questions in plain "
    "language: why the heating came on at 3 a.m., what the schedule is on Sunday, how much energy "
    "the last week used. A cloud service could answer, but the device must keep working when the "
    "network is down, customers do not want their routines leaving the house, and every request "
    "would cost money for the lifetime of the product. So the model has to run on the board "
    "itself, next to the control loop, within a memory budget measured in megabytes and without "
    "a Python interpreter. That constraint shapes everything: the size of the model, the number "
    "format of its weights, the way the key-value cache grows with each token, and the way "
    "errors are reported when a file on the flash is corrupt. Summarise the constraints above in "
    "one sentence:"
)


def gguf_path() -> Path:
    out = subprocess.run(["bash", str(ROOT / "models/fetch-smollm2.sh")], check=True,
                         capture_output=True, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def greedy(model, ids: torch.Tensor):
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, last = out.past_key_values, out.logits[0, -1]
        first = last.clone()
        tokens, margin = [], float("inf")
        for _ in range(STEPS):
            top = torch.topk(last, 2).values
            margin = min(margin, float(top[0] - top[1]))
            nxt = int(torch.argmax(last))
            tokens.append(nxt)
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1]
    return first.numpy().astype(np.float32), tokens, margin


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", type=Path, help="also save_pretrained the model here")
    args = ap.parse_args()
    gguf = gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32).eval()
    chat = tok.apply_chat_template([{"role": "user", "content": CHAT}], tokenize=False,
                                   add_generation_prompt=True)
    prompts = {"short": SHORT, "chat": chat, "long": LONG}
    arrays = {}
    for name, text in prompts.items():
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        logits, tokens, margin = greedy(model, ids)
        arrays[f"{name}_ids"] = ids.numpy().astype(np.int64)
        arrays[f"{name}_logits"] = logits
        arrays[f"{name}_greedy"] = np.array(tokens, dtype=np.int64)
        print(f"{name}: {ids.shape[1]} prompt tokens, greedy {tok.decode(tokens)!r}, "
              f"smallest top-1 margin {margin:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez(OUT / "expected.npz", **arrays)
    (OUT / "prompts.json").write_text(json.dumps(
        {"short": SHORT, "chat_message": CHAT, "chat": chat, "long": LONG}, indent=2) + "\n")
    if args.hf:
        # The GGUF-loaded model carries transformers' gguf quantizer, which refuses to save: the
        # same weights in a plain model of the same config save as an ordinary checkpoint.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(args.hf, safe_serialization=True)
        tok.save_pretrained(args.hf)
        print(f"Hugging Face directory: {args.hf}")


if __name__ == "__main__":
    main()
