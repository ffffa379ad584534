"""Write the GGUF reader's test fixtures with llama.cpp's own Python package (`gguf`).

    .venv-dev/bin/python scripts/make_gguf_fixtures.py      # needs gguf and numpy

Writes, under gguf/tests/fixtures/ (all committed, a few KB each):

- tensors.gguf: one small tensor of each type ferrite dequantises (F32, F16, BF16, Q8_0, Q4_0,
  Q4_1 quantised by gguf-py from random values; Q4_K, Q5_K, Q6_K, which gguf-py cannot quantise,
  as random raw blocks with finite f16 scales), metadata of every GGUF value type (scalars, an
  array of each element type, nested arrays) and llama-style hyper-parameters.
- tensors.npz: every tensor of tensors.gguf as `gguf.quants.dequantize` gives it, read back with
  `gguf.GGUFReader` (float32, NumPy shape = the GGUF dims reversed).
- metadata.json: every metadata key of tensors.gguf with its GGUF value type and value.
- aligned64.gguf / aligned64.npz: two tensors in a file with `general.alignment = 64`.

Everything is deterministic (fixed seed); gguf/tests/fixtures.rs compares ferrite's reader with
these files.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "gguf" / "tests" / "fixtures"

# (key, GGUF value type, element type for arrays, value). Floats are chosen exactly
# representable in f32 so the JSON value is the stored value.
METADATA = [
    ("test.u8", V.UINT8, None, 200),
    ("test.i8", V.INT8, None, -100),
    ("test.u16", V.UINT16, None, 60000),
    ("test.i16", V.INT16, None, -30000),
    ("test.u32", V.UINT32, None, 4000000000),
    ("test.i32", V.INT32, None, -2000000000),
    ("test.f32", V.FLOAT32, None, 0.15625),
    ("test.bool", V.BOOL, None, True),
    ("test.string", V.STRING, None, "héllo, wörld \u2603 \"quoted\"\nnew line"),
    ("test.u64", V.UINT64, None, 2**40 + 3),
    ("test.i64", V.INT64, None, -(2**40) - 5),
    ("test.f64", V.FLOAT64, None, -2.5e-300),
    ("test.array.u8", V.ARRAY, V.UINT8, [0, 1, 255]),
    ("test.array.i8", V.ARRAY, V.INT8, [-128, 0, 127]),
    ("test.array.u16", V.ARRAY, V.UINT16, [0, 65535]),
    ("test.array.i16", V.ARRAY, V.INT16, [-32768, 32767]),
    ("test.array.u32", V.ARRAY, V.UINT32, [1, 4294967295]),
    ("test.array.i32", V.ARRAY, V.INT32, [-1, 2147483647]),
    ("test.array.f32", V.ARRAY, V.FLOAT32, [0.5, -1.25, 3.0]),
    ("test.array.bool", V.ARRAY, V.BOOL, [True, False, True]),
    ("test.array.string", V.ARRAY, V.STRING, ["a", "", "\u00e9t\u00e9"]),
    ("test.array.u64", V.ARRAY, V.UINT64, [2**64 - 1]),
    ("test.array.i64", V.ARRAY, V.INT64, [-(2**63), 2**63 - 1]),
    ("test.array.f64", V.ARRAY, V.FLOAT64, [1e300, -0.0]),
    ("test.array.nested", V.ARRAY, None, [[1, 2], [3]]),
    ("test.array.nested_strings", V.ARRAY, None, [["x"], ["y", "z"]]),
    ("llama.block_count", V.UINT32, None, 2),
    ("llama.context_length", V.UINT32, None, 128),
    ("llama.embedding_length", V.UINT32, None, 64),
    ("llama.feed_forward_length", V.UINT32, None, 128),
    ("llama.attention.head_count", V.UINT32, None, 4),
    ("llama.attention.head_count_kv", V.UINT32, None, 2),
    ("llama.rope.freq_base", V.FLOAT32, None, 10000.0),
    ("llama.attention.layer_norm_rms_epsilon", V.FLOAT32, None, 9.5367431640625e-07),
    ("tokenizer.ggml.model", V.STRING, None, "gpt2"),
    ("tokenizer.ggml.tokens", V.ARRAY, V.STRING, ["<s>", "</s>", "a", "b", "ab"]),
    ("tokenizer.ggml.scores", V.ARRAY, V.FLOAT32, [0.0, 0.0, -1.0, -2.0, -3.0]),
    ("tokenizer.ggml.token_type", V.ARRAY, V.INT32, [3, 3, 1, 1, 1]),
]

NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32", V.INT32: "i32",
         V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "string", V.ARRAY: "array", V.UINT64: "u64",
         V.INT64: "i64", V.FLOAT64: "f64"}


def random_k_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    """Random raw K-quant blocks whose f16 super-block scales are finite and moderate."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)

    def f16(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)

    if qtype in (T.Q4_K, T.Q5_K):  # d, dmin first
        blocks[:, 0:2] = f16(1e-3, 5e-2)
        blocks[:, 2:4] = f16(1e-3, 5e-2)
    elif qtype == T.Q6_K:  # d last
        blocks[:, type_size - 2:] = f16(1e-4, 5e-3)
    else:
        raise ValueError(qtype)
    return blocks


def add_tensors(w: gguf.GGUFWriter, rng: np.random.Generator, specs) -> None:
    for name, qtype, shape in specs:
        values = rng.standard_normal(shape).astype(np.float32)
        if qtype == T.F32:
            w.add_tensor(name, values)
        elif qtype == T.F16:
            w.add_tensor(name, values.astype(np.float16))
        elif qtype in (T.BF16, T.Q8_0, T.Q4_0, T.Q4_1):
            w.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            block, _ = gguf.GGML_QUANT_SIZES[qtype]
            rows, cols = shape
            raw = random_k_blocks(rng, qtype, rows * cols // block).reshape(rows, -1)
            w.add_tensor(name, raw, raw_dtype=qtype)


def write(path: Path, specs, metadata=(), alignment: int | None = None, seed: int = 22) -> None:
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, vtype, sub, value in metadata:
        w.add_key_value(key, value, vtype, sub_type=sub)
    add_tensors(w, rng, specs)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def expected(path: Path, npz: Path) -> None:
    """Dequantises every tensor of `path` with gguf-py and saves the values."""
    reader = gguf.GGUFReader(str(path))
    arrays = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        arrays[t.name] = values.reshape(shape)
    np.savez_compressed(npz, **arrays)


def metadata_json() -> list:
    out = [{"key": "general.architecture", "type": "string", "value": "llama"}]
    for key, vtype, sub, value in METADATA:
        entry = {"key": key, "type": NAMES[vtype], "value": value}
        if vtype == V.ARRAY:
            entry["element_type"] = NAMES[sub] if sub is not None else "array"
        out.append(entry)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    specs = [
        ("f32.3d", T.F32, (2, 3, 4)),
        ("f16", T.F16, (4, 32)),
        ("bf16", T.BF16, (4, 32)),
        ("q8_0", T.Q8_0, (4, 64)),
        ("q4_0", T.Q4_0, (4, 64)),
        ("q4_1", T.Q4_1, (4, 64)),
        ("q4_k", T.Q4_K, (2, 512)),
        ("q5_k", T.Q5_K, (2, 512)),
        ("q6_k", T.Q6_K, (2, 512)),
    ]
    write(OUT / "tensors.gguf", specs, METADATA)
    expected(OUT / "tensors.gguf", OUT / "tensors.npz")
    (OUT / "metadata.json").write_text(json.dumps(metadata_json(), indent=1, ensure_ascii=False) + "\n")
    write(OUT / "aligned64.gguf", [("a", T.F32, (3, 5)), ("b", T.Q8_0, (2, 32))], alignment=64, seed=23)
    expected(OUT / "aligned64.gguf", OUT / "aligned64.npz")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(json.dumps({p.name: p.stat().st_size for p in sorted(OUT.iterdir())} | {"total": total}))


if __name__ == "__main__":
    main()
