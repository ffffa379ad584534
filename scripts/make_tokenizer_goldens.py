"""Goldens for the tokenizer ferrite builds from a GGUF's metadata (exporter/src/gguf_tokenizer.rs).

    .venv-dev/bin/python scripts/make_tokenizer_goldens.py
    # needs transformers, tokenizers, gguf, sentencepiece and llama-cpp-python (llama.cpp's own
    # tokenizer; pip builds it from source) in .venv-dev

    .venv-dev/bin/python scripts/make_tokenizer_goldens.py --check DIR
    # loads every DIR/*.json with Python `tokenizers` and encodes the golden texts with it
    # (DIR: the tokenizer.json files the Rust test writes when FERRITE_TOKENIZER_JSON_DIR is set)

Writes, under exporter/tests/golden/gguf-tokenizer/ (committed, small):

- smollm2_ids.json: the real SmolLM2-135M-Instruct GGUF (`models/fetch-smollm2.sh`; byte-level
  BPE, `tokenizer.ggml.pre = smollm`). For each text of a varied set, the ids
  `AutoTokenizer.from_pretrained(dir, gguf_file=name).encode(text)` returns (its defaults: special
  tokens written in the text are matched whole, and this file adds no BOS), and the ids llama.cpp
  gives (`llama_tokenize` with add_special and parse_special, the way llama.cpp reads a prompt).
- spm.gguf: a tokenizer-only GGUF (`tokenizer.ggml.model = llama`) holding a small SentencePiece
  BPE vocabulary (byte fallback, a control and a user-defined symbol) trained here with the
  `sentencepiece` package, written with the `gguf` package; a dummy 1-element tensor keeps it a
  well-formed model file.
- spm_ids.json: for each text, the ids transformers gives for spm.gguf (`gguf_file=`, BOS added as
  the file asks), the ids llama.cpp gives, and the ids the trained SentencePiece model itself gives
  (BOS prepended; texts that spell a control or user-defined token carry `"sentencepiece": null`:
  SentencePiece reads control symbols as plain text, and puts no `▁` after a user-defined one
  where llama.cpp does).

- bpe-<pre>.gguf and bpe-<pre>_ids.json for pre = llama-bpe (Llama 3), qwen2 and gpt-2: a small
  byte-level BPE vocabulary (trained here with `tokenizers`, across word boundaries so that the
  split rule decides the ids) written as a `gpt2`-type GGUF with that `tokenizer.ggml.pre`, and
  the ids transformers and llama.cpp give for each text.

Everything is deterministic (SentencePiece trains single-threaded on a fixed corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exporter" / "tests" / "golden" / "gguf-tokenizer"

# Texts that exercise every branch of a pre-tokenizer: code, numbers, accents, CJK, emoji, runs
# of spaces / newlines / tabs, contractions, special tokens inside text, leading and trailing
# space, the empty string.
COMMON_TEXTS = [
    "",
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) {\n\tx[i] = i * 2;\n}",
    "The numbers 12345 and 3.14159, and -0.5e10.",
    "Prices: $1,299.99 or 45€ (about 1000000 yen)",
    "Café déjà vu, naïve façade, Ångström, Straße, São Paulo",
    "日本語のテキストと中文字符",
    "Ελληνικά και русский текст",
    "Emoji: 🙂🚀👍🏽 and the family 👨‍👩‍👧!",
    "tabs\tand\t\ttabs\t",
    "lines\n\n\nand more\r\nwindows\r\n",
    "spaces     inside    text",
    "List:\n\n1. first\n2. second\n\n\n3. third",
    "x  1 y   22 z\t\t3",
    "   \n\t  ",
    "I'm sure they'll say it's fine; we've done it, you'd agree. DON'T SHOUT",
    "URL: https://example.com/path?q=1&b=two#frag",
    "mixed UPPER lower CamelCase snake_case kebab-case",
    "a\u00a0non-breaking\u00a0space and a zero\u200bwidth",
]

SMOLLM2_SPECIAL_TEXTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|>",
    "<|im_start",
    " <|im_end|> spaced ",
]

# SentencePiece corpus: a few paragraphs in several scripts, repeated so the BPE learns merges.
SPM_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
It is a truth universally acknowledged that a single man in possession of a good fortune must be in want of a wife.
Numbers like 12345, 3.14159 and 2024 appear in text; so do prices such as $19.99 and 45 euros.
def main():
    for i in range(10):
        print(i * 2)
Café, naïve, façade, déjà vu and the Straße in São Paulo are spelled with accents.
The weather today is sunny with a chance of rain in the evening, and the wind is calm.
Machine learning models turn text into tokens, and tokens into numbers, and numbers into text again.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
"""

SPM_SPECIAL_TEXTS = [
    "<s>hello</s>",
    "<|user|>What is the weather?<|end|>",
    "a <|user|> b",
    "</s",
    "<unk> is unknown",
]

SPM_CONTROL = ["<|end|>"]
SPM_USER_DEFINED = ["<|user|>"]


def llama_cpp_ids(gguf_path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's own tokenization (vocabulary only), as its tools read a prompt."""
    from llama_cpp import Llama

    model = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        # `add_bos` is llama_tokenize's add_special: BOS/EOS as the file asks.
        return [model.tokenize(t.encode("utf-8"), add_bos=True, special=True) for t in texts]
    finally:
        model.close()


def transformers_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def smollm2() -> None:
    fetched = subprocess.run(
        ["bash", str(ROOT / "models" / "fetch-smollm2.sh")], check=True, capture_output=True, text=True
    )
    gguf_path = Path(fetched.stdout.strip().splitlines()[-1])
    texts = COMMON_TEXTS + SMOLLM2_SPECIAL_TEXTS
    tok = transformers_tokenizer(gguf_path)
    hf = [tok.encode(t) for t in texts]
    cpp = llama_cpp_ids(gguf_path, texts)
    cases = [
        {"text": t, "transformers": a, "llama_cpp": b} for t, a, b in zip(texts, hf, cpp, strict=True)
    ]
    differ = [c["text"] for c in cases if c["transformers"] != c["llama_cpp"]]
    golden = {
        "source": f"{gguf_path.name} (models/fetch-smollm2.sh)",
        "encode": "transformers: AutoTokenizer(gguf_file=).encode(text) with its defaults; "
        "llama_cpp: llama_tokenize(add_special=true, parse_special=true)",
        "adds_bos": bool(hf[1] and hf[1][0] == tok.bos_token_id),
        "cases": cases,
    }
    write_json(OUT / "smollm2_ids.json", golden)
    print(f"smollm2: {len(cases)} texts; transformers and llama.cpp differ on {len(differ)}: {differ!r}")


def train_spm(workdir: Path) -> Path:
    import sentencepiece as spm

    corpus = workdir / "corpus.txt"
    corpus.write_text(SPM_CORPUS * 4, encoding="utf-8")
    prefix = workdir / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        character_coverage=1.0,
        control_symbols=SPM_CONTROL,
        user_defined_symbols=SPM_USER_DEFINED,
        num_threads=1,
        minloglevel=2,
        # No normalisation and whitespace kept as the text has it, as in Llama's SentencePiece models
        # (a GGUF stores no normaliser).
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
    )
    return prefix.with_suffix(".model")


def write_spm_gguf(model_path: Path, out: Path) -> None:
    import gguf
    import numpy as np
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif tokens[-1] in SPM_USER_DEFINED:
            t = gguf.TokenType.USER_DEFINED
        else:
            t = gguf.TokenType.NORMAL
        types.append(t)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("ferrite tokenizer fixture")
    # Hyper-parameters llama.cpp reads before the vocabulary (vocab-only loads still parse them).
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_tensor("dummy", np.zeros(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_goldens() -> None:
    import sentencepiece as spm

    OUT.mkdir(parents=True, exist_ok=True)
    gguf_path = OUT / "spm.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        model_path = train_spm(Path(tmp))
        sp = spm.SentencePieceProcessor(model_file=str(model_path))
        write_spm_gguf(model_path, gguf_path)
        texts = COMMON_TEXTS + SPM_SPECIAL_TEXTS
        sp_ids = [
            None if any(c in t for c in SPM_CONTROL + SPM_USER_DEFINED + ["<s>", "</s>", "<unk>"])
            else [sp.bos_id()] + sp.encode(t)
            for t in texts
        ]
    size = gguf_path.stat().st_size
    if size >= 100_000:
        raise SystemExit(f"{gguf_path} is {size} bytes; keep it under 100 KB")
    tok = transformers_tokenizer(gguf_path)
    hf = [tok.encode(t) for t in texts]
    cpp = llama_cpp_ids(gguf_path, texts)
    cases = [
        {"text": t, "transformers": a, "llama_cpp": b, "sentencepiece": s}
        for t, a, b, s in zip(texts, hf, cpp, sp_ids, strict=True)
    ]
    golden = {
        "source": "spm.gguf (scripts/make_tokenizer_goldens.py)",
        "encode": "transformers: AutoTokenizer(gguf_file=).encode(text) with its defaults; "
        "llama_cpp: llama_tokenize(add_special=true, parse_special=true); "
        "sentencepiece: [bos] + SentencePieceProcessor.encode(text)",
        "adds_bos": bool(hf[1] and hf[1][0] == tok.bos_token_id),
        "cases": cases,
    }
    write_json(OUT / "spm_ids.json", golden)
    for name, key in [("llama.cpp", "llama_cpp"), ("sentencepiece", "sentencepiece")]:
        differ = [c["text"] for c in cases if c[key] is not None and c[key] != c["transformers"]]
        print(f"spm: transformers and {name} differ on {len(differ)}: {differ!r}")
    print(f"spm: {gguf_path} ({size} bytes, {sp.get_piece_size()} tokens), {len(cases)} texts")


BYTE_LEVEL_PRES = ["llama-bpe", "qwen2", "gpt-2"]
BYTE_LEVEL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTE_LEVEL_USER_DEFINED = ["<think>"]
BYTE_LEVEL_SPECIAL_TEXTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>",
    "text<|im_end|>more<|endoftext|>",
    "<|im_start",
]


def train_byte_level() -> tuple[list[str], list[str]]:
    """A small byte-level BPE vocabulary and its merges, learned across word boundaries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=BYTE_LEVEL_SPECIAL + BYTE_LEVEL_USER_DEFINED,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = (SPM_CORPUS + "\n".join(COMMON_TEXTS)).split("\n")
    tok.train_from_iterator([line + "\n" for line in lines] * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert [i for _, i in vocab] == list(range(len(tokens)))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, merges


def write_byte_level_gguf(tokens: list[str], merges: list[str], pre: str, out: Path) -> None:
    import gguf
    import numpy as np

    types = [
        gguf.TokenType.CONTROL
        if t in BYTE_LEVEL_SPECIAL
        else gguf.TokenType.USER_DEFINED
        if t in BYTE_LEVEL_USER_DEFINED
        else gguf.TokenType.NORMAL
        for t in tokens
    ]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("ferrite tokenizer fixture")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    # Llama 3 files say add_bos_token = true; the others add nothing.
    w.add_add_bos_token(pre == "llama-bpe")
    w.add_tensor("dummy", np.zeros(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def byte_level_goldens() -> None:
    tokens, merges = train_byte_level()
    texts = COMMON_TEXTS + BYTE_LEVEL_SPECIAL_TEXTS
    for pre in BYTE_LEVEL_PRES:
        gguf_path = OUT / f"bpe-{pre}.gguf"
        write_byte_level_gguf(tokens, merges, pre, gguf_path)
        size = gguf_path.stat().st_size
        if size >= 100_000:
            raise SystemExit(f"{gguf_path} is {size} bytes; keep it under 100 KB")
        tok = transformers_tokenizer(gguf_path)
        hf = [tok.encode(t) for t in texts]
        cpp = llama_cpp_ids(gguf_path, texts)
        cases = [
            {"text": t, "transformers": a, "llama_cpp": b} for t, a, b in zip(texts, hf, cpp, strict=True)
        ]
        golden = {
            "source": f"bpe-{pre}.gguf (scripts/make_tokenizer_goldens.py)",
            "encode": "transformers: AutoTokenizer(gguf_file=).encode(text) with its defaults; "
            "llama_cpp: llama_tokenize(add_special=true, parse_special=true)",
            "adds_bos": bool(hf[1] and hf[1][0] == tok.bos_token_id),
            "cases": cases,
        }
        write_json(OUT / f"bpe-{pre}_ids.json", golden)
        differ = [c["text"] for c in cases if c["transformers"] != c["llama_cpp"]]
        print(f"bpe-{pre}: {size} bytes, {len(tokens)} tokens; transformers and llama.cpp differ on {len(differ)}: {differ!r}")


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check(directory: Path) -> None:
    """Python `tokenizers` loads each tokenizer.json ferrite wrote and encodes like the goldens."""
    from tokenizers import Tokenizer

    failures = 0
    for path in sorted(directory.glob("*.json")):
        golden = json.loads((OUT / f"{path.stem}_ids.json").read_text(encoding="utf-8"))
        tok = Tokenizer.from_file(str(path))
        for case in golden["cases"]:
            got = tok.encode(case["text"]).ids
            if got != case["llama_cpp"]:  # ferrite follows llama.cpp (see gguf_tokenizer.rs)
                failures += 1
                print(f"{path.name}: {case['text']!r}: {got} != llama.cpp {case['llama_cpp']}")
        print(f"{path.name}: loaded by tokenizers, {len(golden['cases'])} texts checked")
    if failures:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", type=Path, help="check the tokenizer.json files in this folder")
    args = parser.parse_args()
    if args.check:
        check(args.check)
        return
    smollm2()
    spm_goldens()
    byte_level_goldens()


if __name__ == "__main__":
    main()
