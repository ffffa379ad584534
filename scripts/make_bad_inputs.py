"""Generate ferrite's bad-input corpus: hundreds of broken models, bundles, tokenizers and inputs.

Run with the project venv (scripts/setup-test-env.sh); tests/bad_input_corpus.rs runs it into a
temporary directory on every `cargo test`, so nothing generated is committed:

    .venv/bin/python scripts/make_bad_inputs.py --ferrite target/debug/ferrite --out DIR

It exports three tiny base bundles with `ferrite export` (the exporter's golden LSTM, GPT-2 and
BERT checkpoints; the BERT one gets a small WordPiece tokenizer.json written here), then writes
one directory per case under DIR/cases/ and the list DIR/cases.json. Each case says what to do
with it and what must come out:

    {"id": "truncated/lstm-0097", "category": "truncated", "kind": "model" | "bundle" | "gguf",
     "path": "cases/...",                  # model.onnx, the bundle directory, or model.gguf
     "inputs": {"X": "cases/.../x.npy"},   # model: run these after opening (optional)
     "generate": {"ids": [...] | "prompt": "...", "max_tokens": N, ...},   # bundle (optional)
     "embed": ["text", ...],               # bundle (optional)
     "chat": "message",                    # bundle: render a one-message conversation (optional)
     "expect": "error" | "ok" | "any",     # any: a typed error or a result, never a crash
     "errors": ["InvalidModel", ...]}      # when set, the error kinds that are acceptable

The `gguf` category damages the GGUF reader's fixture (gguf/tests/fixtures/, written by
llama.cpp's gguf package) field by field: the test opens each file, reads every tensor, and runs
`ferrite inspect --json` on it.

Everything is deterministic (fixed seeds). The script does not judge anything: the Rust test
runs every case through the Rust API, the CLI and (when built) the C API.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = ROOT / "tests" / "models"
GOLDEN = ROOT / "exporter" / "tests" / "golden"
GGUF_FIXTURES = ROOT / "gguf" / "tests" / "fixtures"

MODEL_ERRORS = ["InvalidModel", "NotOnnx", "ResourceLimit", "UnsupportedOp", "Backend", "Io"]


class Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.cases: list[dict] = []
        self.ids: set[str] = set()

    def new_dir(self, category: str, name: str) -> Path:
        d = self.out / "cases" / category / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    def add(self, category: str, name: str, kind: str, path: Path, expect: str, errors=None, **extra):
        case_id = f"{category}/{name}"
        assert case_id not in self.ids, case_id
        assert re.fullmatch(r"[A-Za-z0-9._^-]+", name), name
        self.ids.add(case_id)
        case = {
            "id": case_id,
            "category": category,
            "kind": kind,
            "path": str(path.relative_to(self.out)),
            "expect": expect,
        }
        if errors:
            case["errors"] = errors
        for key, value in extra.items():
            if key == "inputs":
                value = {k: str(Path(v).relative_to(self.out)) for k, v in value.items()}
            case[key] = value
        self.cases.append(case)


# --- helpers ---------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_dir(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def rehash(bundle: Path) -> None:
    """Rewrites ferrite.json's sha256 entries so damage reaches the loader, not the hash check."""
    manifest_path = bundle / "ferrite.json"
    m = json.loads(manifest_path.read_text())
    for entry in m.get("files", []):
        p = bundle / entry["name"]
        if p.is_file():
            entry["sha256"] = sha256(p)
            entry["bytes"] = p.stat().st_size
    manifest_path.write_text(json.dumps(m, indent=2))


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def save(model: onnx.ModelProto, path: Path, raw: bytes | None = None) -> None:
    """Writes `model`, or `raw` when a mutation produced bytes the protobuf runtime cannot build."""
    path.write_bytes(raw if isinstance(raw, bytes) else model.SerializeToString())


def write_npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array, allow_pickle=False)
    return path


def npy_header(shape: tuple, descr: str = "<f4", fortran: bool = False) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    while (10 + len(header) + 1) % 64:
        header += " "
    header += "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()


def pb_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return pb_varint(number << 3 | 2) + pb_varint(len(payload)) + payload


def pb_varint_field(number: int, value: int) -> bytes:
    return pb_varint(number << 3) + pb_varint(value)


def export(ferrite: str, src: Path, out: Path) -> Path:
    if (out / "ferrite.json").is_file():
        return out  # reused from an earlier run into the same --out
    if out.exists():
        shutil.rmtree(out)
    r = subprocess.run([ferrite, "export", str(src), "-o", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ferrite export {src} failed:\n{r.stderr}")
    return out


def bert_tokenizer_json(vocab_size: int) -> dict:
    """A small lower-casing WordPiece tokenizer: specials, letters, digits, punctuation, ##letters."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = specials + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?")
    tokens += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens = tokens[:vocab_size]
    vocab = {t: i for i, t in enumerate(tokens)}
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(specials)
    ]
    special = lambda t: {"id": t, "ids": [vocab[t]], "tokens": [t]}  # noqa: E731
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": special("[CLS]"), "[SEP]": special("[SEP]")},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


# --- the base artifacts ----------------------------------------------------------------------


class Base:
    def __init__(self, corpus: Corpus, ferrite: str):
        base = corpus.out / "base"
        base.mkdir(parents=True, exist_ok=True)
        self.lstm_model = copy_dir(TEST_MODELS / "lstm", base / "lstm-model")
        self.ext_model = copy_dir(TEST_MODELS / "external_data", base / "ext-model")
        src = base / "src"
        if src.exists():
            shutil.rmtree(src)
        bert_src = copy_dir(GOLDEN / "bert", src / "bert")
        vocab = json.loads((GOLDEN / "bert" / "config.json").read_text())["vocab_size"]
        (bert_src / "tokenizer.json").write_text(json.dumps(bert_tokenizer_json(vocab)))
        self.lstm = export(ferrite, GOLDEN / "lstm", base / "bundles" / "lstm")
        self.gpt2 = export(ferrite, GOLDEN / "gpt2", base / "bundles" / "gpt2")
        self.bert = export(ferrite, bert_src, base / "bundles" / "bert")
        # Files outside every case directory that escaping cases point at.
        self.outside = base / "outside"
        self.outside.mkdir(exist_ok=True)
        shutil.copy(self.ext_model / "model.onnx.data", self.outside / "model.onnx.data")
        shutil.copy(self.lstm / "vocab.json", self.outside / "vocab.json")
        lstm_vocab = json.loads((self.lstm / "vocab.json").read_text())
        self.lstm_prompt = "".join(sorted(lstm_vocab, key=lstm_vocab.get)[:6])

    def lstm_inputs(self, case_dir: Path) -> dict:
        return {n: case_dir / f for n, f in
                json.loads((self.lstm_model / "case.json").read_text())["inputs"].items()}


LSTM_GEN = {"ids": [1, 2, 3], "max_tokens": 3}
GPT2_GEN = {"ids": [1, 2, 3], "max_tokens": 3}
BERT_EMBED = ["hello world", "a b c"]


def bundle_action(bundle: Path) -> dict:
    arch = json.loads((bundle / "ferrite.json").read_text()).get("architecture")
    return {"embed": BERT_EMBED} if arch == "bert" else {"generate": LSTM_GEN}


# --- categories ------------------------------------------------------------------------------


def truncated(c: Corpus, b: Base) -> None:
    cat = "truncated"
    data = (b.lstm_model / "model.onnx").read_bytes()
    offsets = sorted(set(list(range(1, len(data), max(1, len(data) // 90))) + [1, 2, 3, 4, len(data) - 1]))
    for cut in offsets:
        d = c.new_dir(cat, f"lstm-{cut:05d}")
        (d / "model.onnx").write_bytes(data[:cut])
        c.add(cat, f"lstm-{cut:05d}", "model", d / "model.onnx", "error", ["InvalidModel", "NotOnnx"])
    data = (b.ext_model / "model.onnx").read_bytes()
    for cut in sorted(set(range(1, len(data), max(1, len(data) // 25)))):
        d = copy_dir(b.ext_model, c.out / "cases" / cat / f"ext-{cut:05d}")
        (d / "model.onnx").write_bytes(data[:cut])
        c.add(cat, f"ext-{cut:05d}", "model", d / "model.onnx", "error", ["InvalidModel", "NotOnnx"])
    ext = (b.ext_model / "model.onnx.data").read_bytes()
    for cut in [0, 1, 100, len(ext) // 2, len(ext) - 1]:
        d = copy_dir(b.ext_model, c.out / "cases" / cat / f"ext-data-{cut:05d}")
        (d / "model.onnx.data").write_bytes(ext[:cut])
        c.add(cat, f"ext-data-{cut:05d}", "model", d / "model.onnx", "error", ["InvalidModel"])
    for name, bundle in [("lstm", b.lstm), ("gpt2", b.gpt2), ("bert", b.bert)]:
        for f in ["model.onnx", "model.onnx.data"]:
            data = (bundle / f).read_bytes()
            for cut in [1, len(data) // 3, len(data) - 1]:
                for hashed in [False, True]:
                    tag = f"bundle-{name}-{f}-{cut}-{'rehashed' if hashed else 'hashed'}"
                    d = copy_dir(bundle, c.out / "cases" / cat / tag)
                    (d / f).write_bytes(data[:cut])
                    if hashed:
                        rehash(d)
                    errors = ["InvalidModel", "NotOnnx"] if hashed else ["HashMismatch"]
                    c.add(cat, tag, "bundle", d, "error", errors, **bundle_action(d))


def bitflip(c: Corpus, b: Base) -> None:
    cat = "bitflip"
    rng = random.Random(7)
    data = (b.lstm_model / "model.onnx").read_bytes()
    for i in range(100):
        flipped = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 3, 8])):
            pos = rng.randrange(len(flipped))
            flipped[pos] ^= 1 << rng.randrange(8)
        d = copy_dir(b.lstm_model, c.out / "cases" / cat / f"lstm-{i:03d}")
        (d / "model.onnx").write_bytes(bytes(flipped))
        c.add(cat, f"lstm-{i:03d}", "model", d / "model.onnx", "any", inputs=b.lstm_inputs(d))
    data = (b.ext_model / "model.onnx").read_bytes()
    for i in range(30):
        flipped = bytearray(data)
        pos = rng.randrange(len(flipped))
        flipped[pos] ^= 1 << rng.randrange(8)
        d = copy_dir(b.ext_model, c.out / "cases" / cat / f"ext-{i:03d}")
        (d / "model.onnx").write_bytes(bytes(flipped))
        c.add(cat, f"ext-{i:03d}", "model", d / "model.onnx", "any", inputs={"x": d / "input_x.npy"})
    for name, bundle, n in [("gpt2", b.gpt2, 40), ("lstm", b.lstm, 20)]:
        data = (bundle / "model.onnx").read_bytes()
        for i in range(n):
            flipped = bytearray(data)
            pos = rng.randrange(len(flipped))
            flipped[pos] ^= 1 << rng.randrange(8)
            tag = f"bundle-{name}-{i:03d}"
            d = copy_dir(bundle, c.out / "cases" / cat / tag)
            (d / "model.onnx").write_bytes(bytes(flipped))
            rehash(d)
            c.add(cat, tag, "bundle", d, "any", generate=LSTM_GEN)


def mutate_cases(model: onnx.ModelProto, limit: int = 1000) -> list[tuple[str, str, list | None, object]]:
    """(name, expect, errors, mutate(model) -> None) for one model; `limit` caps how many
    initializers and graph inputs are mutated one by one (bundles: the first few)."""
    g = model.graph
    out: list = []
    inits = list(range(min(limit, len(g.initializer))))

    def on_init(i, f):
        return lambda m: f(m.graph.initializer[i])

    for i in inits:
        out += [
            (f"init{i}-negative-dim", "error", ["InvalidModel"], on_init(i, lambda t: t.dims.__setitem__(0, -1) if t.dims else t.dims.append(-1))),
            (f"init{i}-negative-last-dim", "error", ["InvalidModel"], on_init(i, lambda t: t.dims.append(-7))),
            (f"init{i}-huge-dim", "error", ["InvalidModel", "ResourceLimit"], on_init(i, lambda t: t.dims.append(1 << 40))),
            (f"init{i}-overflowing-dims", "error", ["ResourceLimit", "InvalidModel"], on_init(i, lambda t: t.dims.extend([1 << 62, 1 << 62, 4]))),
            (f"init{i}-overflowing-bits", "error", ["ResourceLimit", "InvalidModel"], on_init(i, lambda t: (t.ClearField("dims"), t.dims.extend([1 << 61, 3])))),
            (f"init{i}-zero-dim", "any", None, on_init(i, lambda t: t.dims.append(0))),
            (f"init{i}-dtype-0", "error", ["InvalidModel"], on_init(i, lambda t: setattr(t, "data_type", 0))),
            (f"init{i}-dtype-99", "error", ["InvalidModel"], on_init(i, lambda t: setattr(t, "data_type", 99))),
            (f"init{i}-dtype-i64", "any", None, on_init(i, lambda t: setattr(t, "data_type", TensorProto.INT64))),
            (f"init{i}-dtype-f16", "any", None, on_init(i, lambda t: setattr(t, "data_type", TensorProto.FLOAT16))),
            (f"init{i}-dtype-string", "any", None, on_init(i, lambda t: setattr(t, "data_type", TensorProto.STRING))),
            (f"init{i}-dtype-int4", "any", None, on_init(i, lambda t: setattr(t, "data_type", TensorProto.INT4))),
            (f"init{i}-missing", "any", None, lambda m, i=i: m.graph.initializer.__delitem__(i)),
            (f"init{i}-renamed", "any", None, on_init(i, lambda t: setattr(t, "name", t.name + "_gone"))),
        ]
        t = g.initializer[i]
        if t.raw_data:
            out += [
                (f"init{i}-raw-short", "error", ["InvalidModel"], on_init(i, lambda t: setattr(t, "raw_data", t.raw_data[:-1]))),
                (f"init{i}-raw-long", "error", ["InvalidModel"], on_init(i, lambda t: setattr(t, "raw_data", t.raw_data + b"\0" * 4))),
            ]
        if t.data_location == TensorProto.EXTERNAL:
            def set_kv(key, value):
                def f(t):
                    for kv in t.external_data:
                        if kv.key == key:
                            kv.value = value
                            return
                    t.external_data.add(key=key, value=value)
                return f
            out += [
                (f"init{i}-ext-offset-huge", "error", ["InvalidModel"], on_init(i, set_kv("offset", str(2**64 - 1)))),
                (f"init{i}-ext-offset-past-end", "error", ["InvalidModel"], on_init(i, set_kv("offset", str(1 << 30)))),
                (f"init{i}-ext-offset-negative", "error", ["InvalidModel"], on_init(i, set_kv("offset", "-4096"))),
                (f"init{i}-ext-offset-text", "error", ["InvalidModel"], on_init(i, set_kv("offset", "0x10"))),
                (f"init{i}-ext-length-huge", "error", ["InvalidModel"], on_init(i, set_kv("length", str(2**63)))),
                (f"init{i}-ext-length-short", "error", ["InvalidModel"], on_init(i, set_kv("length", "4"))),
                (f"init{i}-ext-no-location", "error", ["InvalidModel"], on_init(i, lambda t: [t.external_data.remove(kv) for kv in list(t.external_data) if kv.key == "location"])),
                (f"init{i}-ext-location-dir", "error", ["InvalidModel", "Io"], on_init(i, set_kv("location", "."))),
                (f"init{i}-ext-location-missing", "error", ["InvalidModel", "Io"], on_init(i, set_kv("location", "nope.data"))),
            ]

    def on_input(i, f):
        return lambda m: f(m.graph.input[i])

    def set_dim(k, value):
        def f(vi):
            dims = vi.type.tensor_type.shape.dim
            if k < len(dims):
                dims[k].Clear()
                dims[k].dim_value = value
        return f

    for i, vi in enumerate(g.input[:limit]):
        if any(t.name == vi.name for t in g.initializer):
            continue
        rank = len(vi.type.tensor_type.shape.dim)
        for k in range(rank):
            out += [
                (f"input{i}-dim{k}-negative", "error", ["InvalidModel"], on_input(i, set_dim(k, -2))),
                (f"input{i}-dim{k}-huge", "any", None, on_input(i, set_dim(k, 1 << 40))),
                (f"input{i}-dim{k}-max", "any", None, on_input(i, set_dim(k, 2**63 - 1))),
            ]
        out += [
            (f"input{i}-dtype-0", "any", None, on_input(i, lambda vi: setattr(vi.type.tensor_type, "elem_type", 0))),
            (f"input{i}-dtype-99", "any", None, on_input(i, lambda vi: setattr(vi.type.tensor_type, "elem_type", 99))),
            (f"input{i}-dtype-f64", "any", None, on_input(i, lambda vi: setattr(vi.type.tensor_type, "elem_type", TensorProto.DOUBLE))),
            (f"input{i}-no-shape", "any", None, on_input(i, lambda vi: vi.type.tensor_type.ClearField("shape"))),
            (f"input{i}-rank-64", "any", None, on_input(i, lambda vi: [vi.type.tensor_type.shape.dim.add(dim_value=1) for _ in range(64)])),
        ]

    def cycle(m):
        nodes = m.graph.node
        nodes[0].input[0] = nodes[-1].output[0]

    def self_loop(m):
        n = m.graph.node[0]
        n.input[0] = n.output[0]

    def two_cycle(m):
        a = helper.make_node("Relu", ["ferrite_cycle_b"], ["ferrite_cycle_a"])
        bnode = helper.make_node("Relu", ["ferrite_cycle_a"], ["ferrite_cycle_b"])
        m.graph.node.extend([a, bnode])
        m.graph.output.append(helper.make_tensor_value_info("ferrite_cycle_b", TensorProto.FLOAT, None))

    def dangling(m):
        m.graph.node[0].input[0] = "ferrite_no_such_value"

    def no_outputs(m):
        m.graph.ClearField("output")

    def undefined_output(m):
        m.graph.output[0].name = "ferrite_never_computed"

    def no_opset(m):
        m.ClearField("opset_import")

    def opset(v):
        return lambda m: setattr(m.opset_import[0], "version", v)

    def deep(levels):
        # Built as raw protobuf: the Python protobuf runtime refuses to nest this deep itself.
        # A second `graph` field is merged into the first by every protobuf reader.
        def f(m):
            leaf = helper.make_graph([helper.make_node("Identity", ["c"], ["o"])], "leaf", [],
                                     [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])],
                                     [helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])])
            leaf_bytes = leaf.SerializeToString()
            cond = helper.make_tensor("ferrite_cond", TensorProto.BOOL, [], [True]).SerializeToString()
            out_vi = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1]).SerializeToString()

            def if_node(then_bytes):
                attr = lambda name, g: pb_field(1, name.encode()) + pb_field(6, g) + pb_varint_field(20, 5)  # noqa: E731
                return (pb_field(1, b"ferrite_cond") + pb_field(2, b"o") + pb_field(4, b"If")
                        + pb_field(5, attr("then_branch", then_bytes)) + pb_field(5, attr("else_branch", leaf_bytes)))

            body = leaf_bytes
            for _ in range(levels - 1):
                body = pb_field(1, if_node(body)) + pb_field(2, b"nest") + pb_field(5, cond) + pb_field(12, out_vi)
            fragment = pb_field(1, if_node(body)) + pb_field(5, cond) + pb_field(12, out_vi)
            return m.SerializeToString() + pb_field(7, fragment)
        return f

    def constant(dims, raw):
        def f(m):
            t = helper.make_tensor("v", TensorProto.FLOAT, [], [0.0])
            t.ClearField("float_data")
            t.ClearField("dims")
            t.dims.extend(dims)
            t.raw_data = raw
            m.graph.node.append(helper.make_node("Constant", [], ["ferrite_const"], value=t))
            m.graph.output.append(helper.make_tensor_value_info("ferrite_const", TensorProto.FLOAT, None))
        return f

    def sparse(m):
        values = helper.make_tensor("sv", TensorProto.FLOAT, [2], [1.0, 2.0])
        indices = helper.make_tensor("si", TensorProto.INT64, [2], [0, 1 << 40])
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1 << 50, 1 << 50]))

    def long_names(m):
        m.graph.node[0].name = "n" * (1 << 20)

    out += [
        ("cycle-first-reads-last", "error", None, cycle),
        ("cycle-self-loop", "error", None, self_loop),
        ("cycle-two-nodes", "error", None, two_cycle),
        ("dangling-input", "error", None, dangling),
        ("no-outputs", "error", ["InvalidModel"], no_outputs),
        ("undefined-output", "error", None, undefined_output),
        ("no-opset", "error", ["InvalidModel"], no_opset),
        ("opset-1", "any", None, opset(1)),
        ("opset-huge", "any", None, opset(1 << 40)),
        ("ir-version-0", "error", ["NotOnnx", "InvalidModel"], lambda m: setattr(m, "ir_version", 0)),
        ("ir-version-huge", "error", ["NotOnnx", "InvalidModel"], lambda m: setattr(m, "ir_version", 1 << 50)),
        ("op-empty", "error", ["InvalidModel"], lambda m: setattr(m.graph.node[0], "op_type", "")),
        ("op-unknown", "error", ["UnsupportedOp"], lambda m: setattr(m.graph.node[0], "op_type", "FerriteNoSuchOp")),
        ("op-unknown-domain", "any", None, lambda m: setattr(m.graph.node[0], "domain", "com.example.nope")),
        ("nesting-40", "error", ["ResourceLimit", "InvalidModel"], deep(40)),
        ("nesting-8", "any", None, deep(8)),
        ("constant-overflowing-dims", "error", ["ResourceLimit", "InvalidModel"], constant([1 << 62, 1 << 62], b"")),
        ("constant-huge-dims", "error", ["InvalidModel", "ResourceLimit"], constant([1 << 40], b"\0" * 16)),
        ("constant-negative-dims", "error", ["InvalidModel"], constant([-3], b"\0" * 16)),
        ("sparse-initializer-huge", "any", None, sparse),
        ("node-name-1mib", "any", None, long_names),
        ("duplicate-node-output", "any", None, lambda m: m.graph.node.append(copy.deepcopy(m.graph.node[-1]))),
        ("no-nodes", "error", None, lambda m: m.graph.ClearField("node")),
    ]
    return out


def mutated(c: Corpus, b: Base) -> None:
    cat = "mutated"
    for name, src, inputs in [
        ("lstm", b.lstm_model, lambda d: b.lstm_inputs(d)),
        ("ext", b.ext_model, lambda d: {"x": d / "input_x.npy"}),
    ]:
        base = load(src / "model.onnx")
        for mname, expect, errors, mutate in mutate_cases(base):
            m = copy.deepcopy(base)
            raw = mutate(m)
            tag = f"{name}-{mname}"
            d = copy_dir(src, c.out / "cases" / cat / tag)
            save(m, d / "model.onnx", raw)
            c.add(cat, tag, "model", d / "model.onnx", expect, errors, inputs=inputs(d))
    for name, bundle in [("gpt2", b.gpt2), ("lstm", b.lstm), ("bert", b.bert)]:
        base = load(bundle / "model.onnx")
        for mname, expect, errors, mutate in mutate_cases(base, limit=2):
            m = copy.deepcopy(base)
            raw = mutate(m)
            tag = f"bundle-{name}-{mname}"
            d = copy_dir(bundle, c.out / "cases" / cat / tag)
            save(m, d / "model.onnx", raw)
            rehash(d)
            # Damage the model can carry may still leave a bundle that generates (e.g. a renamed
            # initializer nobody reads): "any" keeps those honest without guessing per case.
            c.add(cat, tag, "bundle", d, "any" if expect == "any" else "error", None, **bundle_action(d))


def escape(c: Corpus, b: Base) -> None:
    cat = "escape"
    outside_file = b.outside / "model.onnx.data"
    base = load(b.ext_model / "model.onnx")
    locations = {
        "dotdot": "../outside.data",
        "dotdot-deep": "../../../../../../../../etc/passwd",
        "dot-dotdot": "./../outside.data",
        "inner-dotdot": "sub/../../outside.data",
        "absolute": str(outside_file),
        "absolute-passwd": "/etc/passwd",
        "absolute-proc": "/proc/self/environ",
        "absolute-dev-zero": "/dev/zero",
        "dotdot-only": "..",
        "dot-only": ".",
        "empty": "",
        "file-url": "file:///etc/passwd",
        "backslash": "..\\outside.data",
        "nul-byte": "model.onnx.data\0../../etc/passwd",
        "symlink-file": "link.data",
        "symlink-abs": "link-abs.data",
        "symlink-dir": "linkdir/model.onnx.data",
        "symlink-dev-zero": "zero.data",
        "symlink-loop": "loop.data",
        "fifo": "data.fifo",
        "directory": "sub",
        "inside-symlink-ok": "inside.data",
    }
    for i in range(len(base.graph.initializer)):
        for tag, location in locations.items():
            m = copy.deepcopy(base)
            for kv in m.graph.initializer[i].external_data:
                if kv.key == "location":
                    kv.value = location
            name = f"init{i}-{tag}"
            d = copy_dir(b.ext_model, c.out / "cases" / cat / name / "model")
            shutil.copy(outside_file, d.parent / "outside.data")
            (d / "sub").mkdir()
            os.symlink("../outside.data", d / "link.data")
            os.symlink(str(outside_file), d / "link-abs.data")
            os.symlink(str(b.outside), d / "linkdir")
            os.symlink("/dev/zero", d / "zero.data")
            os.symlink("loop.data", d / "loop.data")
            os.mkfifo(d / "data.fifo")
            os.symlink("model.onnx.data", d / "inside.data")
            save(m, d / "model.onnx")
            expect = "ok" if tag == "inside-symlink-ok" else "error"
            c.add(cat, name, "model", d / "model.onnx", expect,
                  None if expect == "ok" else ["InvalidModel"], inputs={"x": d / "input_x.npy"})
    # Bundles: the model's external data, and the bundle's own files, must stay inside the bundle.
    for tag, location in [("dotdot", "../outside.data"), ("absolute", str(outside_file)),
                          ("symlink", "link.data")]:
        m = load(b.gpt2 / "model.onnx")
        for t in m.graph.initializer:
            for kv in t.external_data:
                if kv.key == "location":
                    kv.value = location
        d = copy_dir(b.gpt2, c.out / "cases" / cat / f"bundle-ext-{tag}" / "bundle")
        shutil.copy(b.gpt2 / "model.onnx.data", d.parent / "outside.data")
        os.symlink("../outside.data", d / "link.data")
        save(m, d / "model.onnx")
        rehash(d)
        c.add(cat, f"bundle-ext-{tag}", "bundle", d, "error", ["InvalidModel"], generate=GPT2_GEN)
    # ferrite.json `files` entries that point outside (hashing them would read outside files).
    for tag, fname in [("dotdot", "../outside.data"), ("absolute", str(outside_file)),
                       ("symlink", "link.data"), ("nested", "sub/../model.onnx")]:
        d = copy_dir(b.lstm, c.out / "cases" / cat / f"manifest-file-{tag}" / "bundle")
        shutil.copy(outside_file, d.parent / "outside.data")
        os.symlink("../outside.data", d / "link.data")
        (d / "sub").mkdir()
        m = json.loads((d / "ferrite.json").read_text())
        m["files"].append({"name": fname, "bytes": outside_file.stat().st_size, "sha256": sha256(outside_file)})
        (d / "ferrite.json").write_text(json.dumps(m))
        c.add(cat, f"manifest-file-{tag}", "bundle", d, "error", ["InvalidBundle"], generate=LSTM_GEN)
    # The bundle's model.onnx, vocab.json or tokenizer.json as a symlink that leaves the bundle.
    for tag, bundle, fname in [("model", b.lstm, "model.onnx"), ("vocab", b.lstm, "vocab.json"),
                               ("tokenizer", b.bert, "tokenizer.json"), ("data", b.lstm, "model.onnx.data")]:
        d = copy_dir(bundle, c.out / "cases" / cat / f"bundle-symlink-{tag}" / "bundle")
        shutil.copytree(bundle, d.parent / "elsewhere")
        (d / fname).unlink()
        os.symlink(f"../elsewhere/{fname}", d / fname)
        for hashed in ["off", "on"]:
            # With hashes on, a listed file is refused by the hash step; vocab/tokenizer may be unlisted.
            c.add(cat, f"bundle-symlink-{tag}-verify-{hashed}", "bundle", d, "error", ["InvalidBundle", "InvalidModel"],
                  no_verify=hashed == "off", **bundle_action(d))


def manifest(c: Corpus, b: Base) -> None:
    cat = "manifest"
    text = (b.lstm / "ferrite.json").read_text()
    good = json.loads(text)

    def case(tag, content: str | bytes, bundle=b.lstm, expect="error", errors=("InvalidBundle",), **action):
        tag = re.sub(r"[^A-Za-z0-9._^-]+", "_", tag)
        while f"{cat}/{tag}" in c.ids:  # two values can slug alike (`"1"` and `[1]`)
            tag += "_"
        d = copy_dir(bundle, c.out / "cases" / cat / tag)
        p = d / "ferrite.json"
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        c.add(cat, tag, "bundle", d, expect, list(errors) if errors else None, **(action or bundle_action(bundle)))

    raw = {
        "empty": "", "brace": "{", "null": "null", "array": "[]", "number": "42", "string": '"x"',
        "garbage": bytes(range(256)), "utf16-bom": "\ufeff{}".encode("utf-16"),
        "deep-nesting": "[" * 100000, "deep-object": '{"a":' * 5000, "trailing-garbage": text + "}}}",
        "nan": text.replace('"format": 1', '"format": NaN'),
    }
    for tag, content in raw.items():
        case(tag, content)
    data = text.encode()
    for cut in range(1, len(data), max(1, len(data) // 20)):
        case(f"truncated-{cut:05d}", data[:cut])

    def field(tag, key, value, bundle=b.lstm, expect="error", errors=("InvalidBundle",), **action):
        m = json.loads((bundle / "ferrite.json").read_text())
        if value is DELETE:
            m.pop(key, None)
        else:
            m[key] = value
        case(tag, json.dumps(m), bundle, expect, errors, **action)

    for v in [0, 2, -1, "1", 1.5, None, 2**40, 2**70, [1]]:
        field(f"format-{json.dumps(v)}", "format", v)
    field("format-missing", "format", DELETE)
    for v in ["LSTM", "", "transformer", 5, None, "x" * 100000]:
        field(f"architecture-{str(v)[:12]}", "architecture", v)
    field("architecture-missing", "architecture", DELETE)
    field("architecture-bert-on-lstm", "architecture", "bert", errors=None)
    field("architecture-gpt2-on-lstm", "architecture", "gpt2", errors=None)
    field("architecture-lstm-on-bert", "architecture", "lstm", b.bert, errors=None, generate=LSTM_GEN)
    field("architecture-bert-on-gpt2", "architecture", "bert", b.gpt2, errors=None, embed=BERT_EMBED)
    for v in [-1, "32", 1.5, 2**64, [32]]:
        field(f"context-{json.dumps(v)}", "context_length", v, b.gpt2)
    field("context-0", "context_length", 0, b.gpt2, errors=["ContextFull"], generate=GPT2_GEN)
    field("context-usize-max", "context_length", 2**64 - 1, b.gpt2, expect="any", errors=None,
          generate=GPT2_GEN)
    # A manifest promising more context than the graph's position table holds.
    field("context-beyond-positions", "context_length", 4096, b.gpt2, expect="any", errors=None,
          generate={"ids": [1] * 40, "max_tokens": 2})
    field("context-usize-max-bert", "context_length", 2**64 - 1, b.bert, expect="any", errors=None,
          embed=["word " * 200])
    for v in [{"eos": -1}, {"eos": 2**40}, {"eos": 63}, {"pad": 10**6}, {"pad": -5}]:
        field(f"special-{json.dumps(v)}", "special_tokens", v, b.gpt2 if "eos" in v else b.bert,
              expect="any", errors=None)
    for v in [{"eos": "x"}, ["eos"], {"eos": 2**64}, {"eos": 1.5}]:
        field(f"special-bad-{json.dumps(v)}", "special_tokens", v, b.gpt2)
    for v in ["x", [1], [{}], [{"name": "model.onnx"}], [{"name": 5, "sha256": ""}]]:
        field(f"files-{json.dumps(v)[:20]}", "files", v)
    entry = good["files"][0]
    field("files-missing-file", "files", good["files"] + [{"name": "nope.bin", "sha256": entry["sha256"]}],
          errors=["Io"])
    field("files-empty-name", "files", [{"name": "", "sha256": entry["sha256"]}], errors=["InvalidBundle", "Io"])
    field("files-dot", "files", [{"name": ".", "sha256": entry["sha256"]}])
    field("files-1000-entries", "files", good["files"] * 250, expect="ok", errors=None)
    field("files-none", "files", [], expect="ok", errors=None)
    field("unknown-fields", "x_ferrite_future", {"a": [1, 2, 3]}, expect="ok", errors=None)
    for v in ["x", [{"name": 1}], 7]:
        field(f"inputs-{json.dumps(v)}", "inputs", v)
    # A missing manifest is an I/O error; a manifest that is a directory too.
    d = copy_dir(b.lstm, c.out / "cases" / cat / "missing")
    (d / "ferrite.json").unlink()
    c.add(cat, "missing", "bundle", d, "error", ["Io"], generate=LSTM_GEN)
    d = copy_dir(b.lstm, c.out / "cases" / cat / "directory")
    (d / "ferrite.json").unlink()
    (d / "ferrite.json").mkdir()
    c.add(cat, "directory", "bundle", d, "error", ["Io", "InvalidBundle"], generate=LSTM_GEN)
    d = c.new_dir(cat, "not-a-directory")
    (d / "file").write_text("x")
    c.add(cat, "not-a-directory", "bundle", d / "file", "error", ["Io"], generate=LSTM_GEN)


DELETE = object()


def tokenizer(c: Corpus, b: Base) -> None:
    cat = "tokenizer"
    prompt = {"prompt": b.lstm_prompt, "max_tokens": 3}
    vocab_text = (b.lstm / "vocab.json").read_text()
    vocab = json.loads(vocab_text)

    def vocab_case(tag, content: str | bytes, expect="error", errors=("Tokenizer",)):
        d = copy_dir(b.lstm, c.out / "cases" / cat / f"vocab-{tag}")
        (d / "vocab.json").write_bytes(content if isinstance(content, bytes) else content.encode())
        rehash(d)
        c.add(cat, f"vocab-{tag}", "bundle", d, expect, list(errors) if errors else None, generate=prompt)

    n = len(vocab)
    for tag, content in {
        "empty": "", "brace": "{", "null": "null", "array": '["a"]', "string": '"a"',
        "negative-id": json.dumps({**vocab, "a": -1}),
        "id-u32-max": json.dumps({**vocab, "\u2603": 2**32 - 1}),
        "id-2^32": json.dumps({**vocab, "\u2603": 2**32}),
        "id-sparse": json.dumps({**vocab, "\u2603": 10**8}),
        "id-float": json.dumps({**vocab, "\u2603": 1.5}),
        "id-string": json.dumps({**vocab, "\u2603": "1"}),
        "deep": '{"a":' * 10000,
        "garbage": bytes(range(256)),
    }.items():
        vocab_case(tag, content)
    # Odd but well-formed vocabularies: the run either works or fails with a typed error.
    for tag, content in {
        "empty-object": "{}",
        "multi-char-token": json.dumps({**vocab, "ab": n}),
        "empty-token": json.dumps({**vocab, "": n}),
        "duplicate-ids": json.dumps({k: 0 for k in vocab}),
        "beyond-model-vocab": json.dumps({**{k: v + 1000 for k, v in vocab.items()}, **{f"x{i}": i for i in range(1000)}}),
        "100k-entries": json.dumps({**vocab, **{f"w{i}": n + i for i in range(100000)}}),
    }.items():
        vocab_case(tag, content, expect="any", errors=None)
    data = vocab_text.encode()
    for cut in range(1, len(data), max(1, len(data) // 12)):
        vocab_case(f"truncated-{cut:05d}", data[:cut])

    tok = json.loads((b.bert / "tokenizer.json").read_text())

    def tok_case(tag, content, expect="error", errors=("Tokenizer",), embed=BERT_EMBED):
        d = copy_dir(b.bert, c.out / "cases" / cat / f"tokenizer-{tag}")
        if not isinstance(content, (str, bytes)):
            content = json.dumps(content)
        (d / "tokenizer.json").write_bytes(content if isinstance(content, bytes) else content.encode())
        rehash(d)
        c.add(cat, f"tokenizer-{tag}", "bundle", d, expect, list(errors) if errors else None, embed=embed)

    def with_(path, value):
        t = copy.deepcopy(tok)
        node = t
        for k in path[:-1]:
            node = node[k]
        if value is DELETE:
            node.pop(path[-1])
        else:
            node[path[-1]] = value
        return t

    for tag, content in {
        "empty": "", "brace": "{", "null": "null", "array": "[]", "garbage": bytes(range(256)),
        "deep": '{"a":' * 10000,
        "model-unknown-type": with_(["model", "type"], "Nope"),
        "model-missing": with_(["model"], DELETE),
        "vocab-not-object": with_(["model", "vocab"], [1, 2]),
        "vocab-negative-id": with_(["model", "vocab", "a"], -1),
        "pre-tokenizer-unknown": with_(["pre_tokenizer", "type"], "Nope"),
        "post-processor-unknown-special": with_(["post_processor", "special_tokens", "[CLS]", "ids"], "x"),
        "added-token-negative-id": with_(["added_tokens", 0, "id"], -1),
    }.items():
        tok_case(tag, content)
    for tag, content in {
        "vocab-u32-max-id": with_(["model", "vocab", "\u2603"], 2**32 - 1),
        # tokenizers accepts (ignores) unknown normalizer and decoder types.
        "normalizer-unknown": with_(["normalizer", "type"], "Nope"),
        "decoder-unknown": with_(["decoder", "type"], "Nope"),
        "vocab-sparse-id": with_(["model", "vocab", "\u2603"], 10**8),
        "added-token-huge-id": with_(["added_tokens", 0, "id"], 2**32 - 1),
        "unk-token-missing": with_(["model", "unk_token"], "[NOPE]"),
        "max-chars-0": with_(["model", "max_input_chars_per_word"], 0),
        "max-chars-huge": with_(["model", "max_input_chars_per_word"], 2**64 - 1),
        "post-processor-ids-out-of-vocab": with_(["post_processor", "special_tokens", "[CLS]", "ids"], [10**6]),
        "decoder-null": with_(["decoder"], None),
        "normalizer-null": with_(["normalizer"], None),
        "truncation-set": with_(["truncation"], {"max_length": 1, "strategy": "LongestFirst", "stride": 0,
                                                  "direction": "Right"}),
        "padding-set": with_(["padding"], {"strategy": {"Fixed": 100000}, "direction": "Right",
                                            "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0,
                                            "pad_token": "[PAD]"}),
        "huge-vocab": with_(["model", "vocab"], {**tok["model"]["vocab"], **{f"t{i}": 64 + i for i in range(50000)}}),
    }.items():
        tok_case(tag, content, expect="any", errors=None)
    data = (b.bert / "tokenizer.json").read_bytes()
    for cut in range(1, len(data), max(1, len(data) // 12)):
        tok_case(f"truncated-{cut:05d}", data[:cut])
    # Text through a good tokenizer: unknown characters, control characters, very long words.
    for tag, texts in {
        "text-empty": [""],
        "text-controls": ["\0\x01\x7f\u200b\ufeff"],
        "text-emoji-cjk": ["\U0001F600 \u4e2d\u6587 \u0645\u0631\u062d\u0628\u0627"],
        "text-long-word": ["a" * 100000],
        "text-many-words": ["ab " * 20000],
        "text-lone-surrogate-escaped": ["\\ud800"],
        "text-batch-64": ["hello"] * 64,
    }.items():
        tok_case(tag, tok, expect="ok", errors=None, embed=texts)
    for tag, text in {"prompt-unknown-char": "\u2603", "prompt-empty": "", "prompt-nul": "\0"}.items():
        d = copy_dir(b.lstm, c.out / "cases" / cat / tag)
        c.add(cat, tag, "bundle", d, "error", ["Tokenizer", "InvalidGeneration"],
              generate={"prompt": text, "max_tokens": 3})


def hashes(c: Corpus, b: Base) -> None:
    cat = "hashes"
    for name, bundle in [("lstm", b.lstm), ("gpt2", b.gpt2), ("bert", b.bert)]:
        files = json.loads((bundle / "ferrite.json").read_text())["files"]
        for k, entry in enumerate(files):
            fname = entry["name"]

            def case(tag, damage, expect="error", errors=("HashMismatch",)):
                d = copy_dir(bundle, c.out / "cases" / cat / f"{name}-{fname}-{tag}")
                damage(d, d / fname)
                c.add(cat, f"{name}-{fname}-{tag}", "bundle", d, expect, list(errors) if errors else None,
                      **bundle_action(d))

            def set_hash(value):
                def f(d, _p):
                    m = json.loads((d / "ferrite.json").read_text())
                    m["files"][k]["sha256"] = value
                    (d / "ferrite.json").write_text(json.dumps(m))
                return f

            def flip(offset):
                def f(_d, p):
                    data = bytearray(p.read_bytes())
                    data[offset % len(data)] ^= 0x01
                    p.write_bytes(bytes(data))
                return f

            case("flip-first", flip(0))
            case("flip-middle", flip(entry["bytes"] // 2))
            case("flip-last", flip(-1))
            case("appended", lambda _d, p: p.write_bytes(p.read_bytes() + b"\0"))
            case("emptied", lambda _d, p: p.write_bytes(b""))
            case("hash-zeros", set_hash("0" * 64))
            case("hash-empty", set_hash(""))
            case("hash-not-hex", set_hash("zz" * 32))
            case("hash-short", set_hash(entry["sha256"][:10]))
            case("hash-upper-ok", set_hash(entry["sha256"].upper()), expect="ok", errors=None)
            case("deleted", lambda _d, p: p.unlink(), errors=["Io"])
            case("directory", lambda _d, p: (p.unlink(), p.mkdir()), errors=["Io", "InvalidBundle"])


def inputs(c: Corpus, b: Base) -> None:
    cat = "inputs"
    case_inputs = json.loads((b.lstm_model / "case.json").read_text())["inputs"]
    arrays = {n: np.load(b.lstm_model / f) for n, f in case_inputs.items()}
    specials = {
        "nan": np.nan, "inf": np.inf, "neg-inf": -np.inf, "max": np.finfo(np.float32).max,
        "min": np.finfo(np.float32).min, "denormal": np.float32(1e-45), "neg-zero": -0.0,
    }
    for target in arrays:
        for tag, value in specials.items():
            d = copy_dir(b.lstm_model, c.out / "cases" / cat / f"lstm-{target}-{tag}")
            a = np.full_like(arrays[target], value)
            write_npy(d / case_inputs[target], a)
            c.add(cat, f"lstm-{target}-{tag}", "model", d / "model.onnx", "ok", inputs=b.lstm_inputs(d))
        d = copy_dir(b.lstm_model, c.out / "cases" / cat / f"lstm-{target}-mixed")
        a = arrays[target].copy().reshape(-1)
        a[::3] = np.nan
        a[1::3] = np.inf
        write_npy(d / case_inputs[target], a.reshape(arrays[target].shape))
        c.add(cat, f"lstm-{target}-mixed", "model", d / "model.onnx", "ok", inputs=b.lstm_inputs(d))
    x = np.load(b.ext_model / "input_x.npy")
    for tag, value in specials.items():
        d = copy_dir(b.ext_model, c.out / "cases" / cat / f"ext-x-{tag}")
        write_npy(d / "input_x.npy", np.full_like(x, value))
        c.add(cat, f"ext-x-{tag}", "model", d / "model.onnx", "ok", inputs={"x": d / "input_x.npy"})
    # A long sequence: bounded time, correct shapes.
    d = copy_dir(b.lstm_model, c.out / "cases" / cat / "lstm-long-sequence")
    shape = arrays["X"].shape
    write_npy(d / case_inputs["X"], np.ones((2000,) + shape[1:], np.float32))
    # The test model's sequence dim is fixed (5): refused before the backend, in bounded time.
    c.add(cat, "lstm-long-sequence", "model", d / "model.onnx", "error", ["ShapeMismatch"], inputs=b.lstm_inputs(d))
    d = copy_dir(b.lstm_model, c.out / "cases" / cat / "lstm-empty-sequence")
    write_npy(d / case_inputs["X"], np.ones((0,) + shape[1:], np.float32))
    c.add(cat, "lstm-empty-sequence", "model", d / "model.onnx", "any", inputs=b.lstm_inputs(d))
    # Broken .npy files (CLI only reads these; the Rust test reads them with the runtime's reader).
    bad_npy = {
        "huge-shape": npy_header((1 << 40, 1 << 20)) + b"\0" * 64,
        "overflowing-shape": npy_header((1 << 62, 1 << 62, 16)),
        "truncated-data": npy_header(shape) + b"\0" * 8,
        "f64": npy_header(shape, "<f8") + b"\0" * (8 * int(np.prod(shape))),
        "big-endian": npy_header(shape, ">f4") + b"\0" * (4 * int(np.prod(shape))),
        "object": npy_header(shape, "|O") + b"\0" * 64,
        "fortran": npy_header(shape, "<f4", True) + b"\0" * (4 * int(np.prod(shape))),
        "bad-magic": b"\x93NUMPX" + npy_header(shape)[6:],
        "header-garbage": b"\x93NUMPY\x01\x00\x40\x00" + b"{" * 64,
        "header-len-huge": b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + b"{",
        "empty": b"",
        "wrong-rank": npy_header((int(np.prod(shape)),)) + b"\0" * (4 * int(np.prod(shape))),
        "i64": npy_header(shape, "<i8") + b"\0" * (8 * int(np.prod(shape))),
    }
    for tag, content in bad_npy.items():
        d = copy_dir(b.lstm_model, c.out / "cases" / cat / f"npy-{tag}")
        (d / case_inputs["X"]).write_bytes(content)
        c.add(cat, f"npy-{tag}", "model", d / "model.onnx", "error",
              ["InvalidInput", "ShapeMismatch", "DTypeMismatch", "ResourceLimit"], inputs=b.lstm_inputs(d))
    # Generation settings and token ids.
    gen = {
        "id-vocab": ({"ids": [64]}, "error", ["UnknownToken"]),
        "id-i32-max": ({"ids": [2**31 - 1]}, "error", ["UnknownToken"]),
        "id-u32-max": ({"ids": [2**32 - 1]}, "error", ["UnknownToken"]),
        "ids-empty": ({"ids": []}, "error", ["InvalidGeneration"]),
        "max-tokens-0": ({"max_tokens": 0}, "error", ["InvalidGeneration"]),
        "temperature-nan": ({"temperature": "nan"}, "error", ["InvalidGeneration"]),
        "temperature-inf": ({"temperature": "inf"}, "any", None),
        "temperature-negative": ({"temperature": "-1"}, "error", ["InvalidGeneration"]),
        "temperature-tiny": ({"temperature": "1e-38", "seed": 3}, "ok", None),
        "temperature-huge": ({"temperature": "3e38", "seed": 3}, "ok", None),
        "top-p-nan": ({"top_p": "nan", "temperature": "1"}, "error", ["InvalidGeneration"]),
        "top-p-0": ({"top_p": "0", "temperature": "1"}, "error", ["InvalidGeneration"]),
        "top-p-tiny": ({"top_p": "1e-30", "temperature": "1"}, "ok", None),
        "top-k-huge": ({"top_k": 2**63, "temperature": "1"}, "error", ["InvalidGeneration"]),
        "top-k-1": ({"top_k": 1, "temperature": "1"}, "ok", None),
        "penalty-nan": ({"repetition_penalty": "nan"}, "error", ["InvalidGeneration"]),
        "penalty-inf": ({"repetition_penalty": "inf"}, "any", None),
        "penalty-huge": ({"repetition_penalty": "3e38"}, "ok", None),
        "stop-empty-string": ({"stop": [""]}, "any", None),
        "stop-long-string": ({"stop": ["x" * 100000]}, "any", None),
        "stop-many": ({"stop": [f"s{i}" for i in range(100)]}, "any", None),
        "seed-max": ({"seed": 2**64 - 1, "temperature": "1"}, "ok", None),
    }
    for name, bundle in [("gpt2", b.gpt2), ("lstm", b.lstm)]:
        for tag, (over, expect, errors) in gen.items():
            d = copy_dir(bundle, c.out / "cases" / cat / f"{name}-gen-{tag}")
            c.add(cat, f"{name}-gen-{tag}", "bundle", d, expect, errors, generate={**GPT2_GEN, **over})
    d = copy_dir(b.gpt2, c.out / "cases" / cat / "gpt2-max-tokens-usize-max")
    c.add(cat, "gpt2-max-tokens-usize-max", "bundle", d, "ok",
          generate={"ids": [1, 2, 3], "max_tokens": 2**64 - 1})
    d = copy_dir(b.gpt2, c.out / "cases" / cat / "gpt2-max-tokens-huge")
    c.add(cat, "gpt2-max-tokens-huge", "bundle", d, "ok", generate={"ids": [1, 2, 3], "max_tokens": 10**12})


def context(c: Corpus, b: Base) -> None:
    cat = "context"
    ctx = json.loads((b.gpt2 / "ferrite.json").read_text())["context_length"]
    for n, expect in [(ctx - 1, "ok"), (ctx, "ok"), (ctx + 1, "error"), (2 * ctx, "error"),
                      (1000, "error"), (20000, "error")]:
        d = copy_dir(b.gpt2, c.out / "cases" / cat / f"gpt2-prompt-{n}")
        c.add(cat, f"gpt2-prompt-{n}", "bundle", d, expect, ["ContextFull"] if expect == "error" else None,
              generate={"ids": [(i * 7) % 64 for i in range(n)], "max_tokens": 100})
    for n in [500, 2000]:
        d = copy_dir(b.lstm, c.out / "cases" / cat / f"lstm-prompt-{n}")
        c.add(cat, f"lstm-prompt-{n}", "bundle", d, "ok",
              generate={"ids": [(i * 5) % 48 for i in range(n)], "max_tokens": 4})
    for n in [31, 32, 33, 1000]:
        d = copy_dir(b.bert, c.out / "cases" / cat / f"bert-words-{n}")
        c.add(cat, f"bert-words-{n}", "bundle", d, "ok", embed=[" ".join(["ab"] * n)])


# --- chat templates ------------------------------------------------------------------------

CHAT_FIXTURE = ROOT / "tests" / "golden" / "chat" / "ferrite-fixture.jinja"
SHIPPED_GPT = ROOT / "models" / "shakespeare-gpt" / "int8"


def chat(c: Corpus, b: Base) -> None:
    """Hostile and broken chat templates in the shipped GPT bundle's ferrite.json (its tokenizer
    has `<|endoftext|>`): each case renders a one-message conversation (and the CLI generates a
    token from it). Templates that loop, recurse, read files or grow without bound must stop with
    an error; a malformed `chat` object must be refused when the bundle opens."""
    cat = "chat"
    eot = "<|endoftext|>"
    good = CHAT_FIXTURE.read_text()
    template_errors = ["ChatTemplate", "ResourceLimit"]
    open_errors = ["InvalidBundle"]
    cases = [
        ("fixture", {"template": good}, "ok", None),
        ("empty-template", {"template": ""}, "any", None),
        ("long-loop", {"template": "{% for i in range(1000000000) %}{{ i }}{% endfor %}"}, "error",
         template_errors),
        ("nested-loops", {"template": "{% for a in range(100000) %}{% for b in range(100000) %}x"
                                      "{% endfor %}{% endfor %}"}, "error", template_errors),
        ("recursive-macro", {"template": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"},
         "error", template_errors),
        ("include-file", {"template": "{% include '/etc/passwd' %}"}, "error", template_errors),
        ("include-self", {"template": "x{% include 'chat_template' %}"}, "error", template_errors),
        ("import", {"template": "{% import 'macros.jinja' as m %}{{ m.f() }}"}, "error",
         template_errors),
        ("extends", {"template": "{% extends 'base.jinja' %}"}, "error", template_errors),
        ("huge-repeat", {"template": "{{ 'x' * 100000000000 }}"}, "error",
         template_errors + ["InvalidGeneration"]),
        ("output-past-bound", {"template": "{% for i in range(3000) %}{{ 'y' * 2000 }}{% endfor %}"},
         "error", template_errors),
        ("raise-exception", {"template": "{{ raise_exception('no system messages') }}"}, "error",
         template_errors),
        ("undefined-call", {"template": "{{ nothing.here() }}"}, "error", template_errors),
        ("syntax-error", {"template": "{% if %}"}, "error", open_errors),
        ("unclosed-block", {"template": "{% for m in messages %}{{ m.content }}"}, "error", open_errors),
        ("deep-nesting", {"template": "{{ " + "[" * 5000 + "]" * 5000 + " }}"}, "error",
         open_errors + template_errors),
        ("template-too-long", {"template": "a" * (300 << 10)}, "error", open_errors),
        ("template-not-string", {"template": 42}, "error", open_errors),
        ("no-template", {"bos_token": eot}, "error", open_errors),
        ("end-of-turn-two-tokens", {"template": good, "end_of_turn": ["hello world"]}, "error",
         open_errors),
        ("end-of-turn-unknown", {"template": good, "end_of_turn": ["<|never_seen|>"]}, "error",
         open_errors),
        ("end-of-turn-many", {"template": good, "end_of_turn": [eot] * 20}, "any", None),
        ("nul-in-template", {"template": "a\u0000b{{ messages[0].content }}"}, "any", None),
    ]
    for name, spec, expect, errors in cases:
        d = copy_dir(SHIPPED_GPT, c.out / "cases" / cat / name)
        manifest_path = d / "ferrite.json"
        m = json.loads(manifest_path.read_text())
        m["chat"] = {"bos_token": eot, "eos_token": eot, **spec}
        manifest_path.write_text(json.dumps(m, indent=2))
        c.add(cat, name, "bundle", d, expect, errors, chat="What is the capital of France?")


# --- GGUF ----------------------------------------------------------------------------------

GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


# ggml type code -> (values per block, bytes per block), for the types in the fixtures.
GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34), 2: (32, 18), 3: (32, 20), 12: (256, 144),
               13: (256, 176), 14: (256, 210)}


def gguf_bytes(tensor: dict) -> int:
    block, size = GGML_BLOCKS[tensor["type"]]
    return int(np.prod(tensor["dims"])) // block * size


def gguf_layout(data: bytes) -> dict:
    """Where every field of a well-formed little-endian GGUF file lies (the fixtures only)."""
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def skip(ty: int, pos: int) -> int:
        if ty in GGUF_SCALAR_BYTES:
            return pos + GGUF_SCALAR_BYTES[ty]
        if ty == 8:
            return pos + 8 + struct.unpack_from("<Q", data, pos)[0]
        elem, n = struct.unpack_from("<IQ", data, pos)
        pos += 12
        for _ in range(n):
            pos = skip(elem, pos)
        return pos

    kvs = []
    for _ in range(n_kv):
        (klen,) = struct.unpack_from("<Q", data, pos)
        kv = {"key_at": pos, "key": data[pos + 8:pos + 8 + klen].decode()}
        pos += 8 + klen
        kv["type_at"], (kv["type"],) = pos, struct.unpack_from("<I", data, pos)
        kv["value_at"] = pos + 4
        pos = skip(kv["type"], pos + 4)
        kvs.append(kv)
    tensors = []
    for _ in range(n_tensors):
        (nlen,) = struct.unpack_from("<Q", data, pos)
        t = {"name_at": pos, "name": data[pos + 8:pos + 8 + nlen].decode()}
        pos += 8 + nlen
        t["n_dims_at"], (n_dims,) = pos, struct.unpack_from("<I", data, pos)
        t["dims_at"], t["dims"] = pos + 4, list(struct.unpack_from(f"<{n_dims}Q", data, pos + 4))
        pos += 4 + 8 * n_dims
        t["type_at"], (t["type"],) = pos, struct.unpack_from("<I", data, pos)
        t["offset_at"], (t["offset"],) = pos + 4, struct.unpack_from("<Q", data, pos + 4)
        pos += 12
        tensors.append(t)
    return {"kvs": kvs, "tensors": tensors, "infos_end": pos}


def gguf(c: Corpus, b: Base) -> None:
    cat = "gguf"
    base = (GGUF_FIXTURES / "tensors.gguf").read_bytes()
    aligned = (GGUF_FIXTURES / "aligned64.gguf").read_bytes()
    layout = gguf_layout(base)
    # The last tensor's data ends before the file's final padding; cutting only padding is fine.
    data_end = (layout["infos_end"] + 31) // 32 * 32 + max(t["offset"] + gguf_bytes(t) for t in layout["tensors"])

    def case(tag, content: bytes, expect="error", errors=None):
        d = c.new_dir(cat, tag)
        (d / "model.gguf").write_bytes(content)
        c.add(cat, tag, "gguf", d / "model.gguf", expect, errors)

    def patch(data: bytes, at: int, fmt: str, value) -> bytes:
        out = bytearray(data)
        struct.pack_into(fmt, out, at, value)
        return bytes(out)

    case("base", base, "ok")
    case("base-aligned64", aligned, "ok")
    case("version-2", patch(base, 4, "<I", 2), "ok")
    # Truncation: every byte of the header and first entries, then samples to the end.
    cuts = sorted(set(list(range(0, 96)) + list(range(96, data_end, max(1, data_end // 120)))))
    for cut in cuts:
        case(f"truncated-{cut:05d}", base[:cut], "error", ["Truncated", "OutOfBounds"])
    case("truncated-padding-only", base[:data_end], "ok")
    for tag, magic in {"ggug": b"GGUG", "lower": b"gguf", "zeros": b"\0\0\0\0", "onnx": b"\x08\x07\x12\x07",
                       "zip": b"PK\x03\x04"}.items():
        case(f"magic-{tag}", magic + base[4:], "error", ["BadMagic"])
    for v in [0, 1, 4, 0xFFFF, 2**32 - 1]:
        case(f"version-{v}", patch(base, 4, "<I", v), "error", ["UnsupportedVersion"])
    # One more tensor than there are: its info is read from the zero padding (a valid empty-named
    # scalar, or garbage): either way a typed error or a file that opens.
    case("tensor-count-10", patch(base, 8, "<Q", 10), "any")
    for n in [1000, 2**32, 2**64 - 1]:
        case(f"tensor-count-{n}", patch(base, 8, "<Q", n), "error")
    case("tensor-count-0", patch(base, 8, "<Q", 0), "ok")
    for n in [len(layout["kvs"]) + 1, 2**40, 2**64 - 1]:
        case(f"kv-count-{n}", patch(base, 16, "<Q", n), "error")
    case("kv-count-short", patch(base, 16, "<Q", 5), "any")

    for kv in layout["kvs"]:
        if not kv["key"].startswith(("general.architecture", "test.string", "test.array.string", "test.array.nested",
                                     "test.u32", "tokenizer.ggml.tokens", "test.f64")):
            continue
        k = kv["key"].replace("_", "-")
        for n in [2**40, 2**64 - 1]:
            case(f"kv-{k}-key-length-{n}", patch(base, kv["key_at"], "<Q", n), "error", ["Truncated"])
        case(f"kv-{k}-key-not-utf8", patch(base, kv["key_at"] + 8, "<B", 0xFF), "error", ["BadString"])
        for t in [13, 255, 2**32 - 1]:
            case(f"kv-{k}-type-{t}", patch(base, kv["type_at"], "<I", t), "error", ["UnknownValueType"])
        if kv["type"] == 8:
            for n in [2**40, 2**64 - 1]:
                case(f"kv-{k}-string-length-{n}", patch(base, kv["value_at"], "<Q", n), "error", ["Truncated"])
            case(f"kv-{k}-string-not-utf8", patch(base, kv["value_at"] + 8, "<B", 0xC3), "error", ["BadString"])
        if kv["type"] == 9:
            for n in [2**40, 2**64 - 1]:
                case(f"kv-{k}-array-count-{n}", patch(base, kv["value_at"] + 4, "<Q", n), "error", ["Truncated"])
            for t in [13, 2**32 - 1]:
                case(f"kv-{k}-array-type-{t}", patch(base, kv["value_at"], "<I", t), "error", ["UnknownValueType"])

    names = [t["name"] for t in layout["tensors"]]
    for t in layout["tensors"]:
        n = t["name"].replace("_", "-").replace(".", "-")
        quantised = t["type"] not in (0, 1, 30)
        case(f"tensor-{n}-name-not-utf8", patch(base, t["name_at"] + 8, "<B", 0x80), "error", ["BadString"])
        case(f"tensor-{n}-name-length-max", patch(base, t["name_at"], "<Q", 2**64 - 1), "error", ["Truncated"])
        same_length = [m for m in names if m != t["name"] and len(m) == len(t["name"])]
        if same_length:
            dup = bytearray(base)
            dup[t["name_at"] + 8:t["name_at"] + 8 + len(t["name"])] = same_length[0].encode()
            case(f"tensor-{n}-duplicate", bytes(dup), "error", ["DuplicateTensor"])
        for nd in [5, 2**32 - 1]:
            case(f"tensor-{n}-n-dims-{nd}", patch(base, t["n_dims_at"], "<I", nd), "error", ["TooManyDims"])
        case(f"tensor-{n}-dim0-max", patch(base, t["dims_at"], "<Q", 2**64 - 1), "error", ["Overflow", "BadShape"])
        case(f"tensor-{n}-dim0-2^62", patch(base, t["dims_at"], "<Q", 2**62), "error", ["Overflow", "OutOfBounds"])
        case(f"tensor-{n}-dim0-2^40", patch(base, t["dims_at"], "<Q", 2**40), "error", ["OutOfBounds"])
        case(f"tensor-{n}-dim0-zero", patch(base, t["dims_at"], "<Q", 0), "ok")
        if len(t["dims"]) > 1:
            case(f"tensor-{n}-zero-hides-huge", patch(patch(base, t["dims_at"], "<Q", 0), t["dims_at"] + 8, "<Q", 2**64 - 1),
                 "error", ["Overflow"])
        if quantised:
            case(f"tensor-{n}-row-not-whole-blocks", patch(base, t["dims_at"], "<Q", t["dims"][0] + 1), "error", ["BadShape"])
        for ty in [4, 5, 31, 99, 2**32 - 1]:
            case(f"tensor-{n}-type-{ty}", patch(base, t["type_at"], "<I", ty), "error", ["UnknownType"])
        for ty in [0, 6, 28]:  # F32, Q5_0, F64: known types of other sizes
            case(f"tensor-{n}-retyped-{ty}", patch(base, t["type_at"], "<I", ty), "any")
        for off, errors in [(1, ["Misaligned"]), (16, ["Misaligned"]), (2**40, ["OutOfBounds"]),
                            (2**64 - 32, ["OutOfBounds"]), (t["offset"] + 4096, ["OutOfBounds"])]:
            case(f"tensor-{n}-offset-{off}", patch(base, t["offset_at"], "<Q", off), "error", errors)

    a = gguf_layout(aligned)
    align_kv = next(kv for kv in a["kvs"] if kv["key"] == "general.alignment")
    for v, expect, errors in [(0, "error", ["BadAlignment"]), (3, "error", ["BadAlignment"]),
                              (48, "error", ["BadAlignment"]), (2**31, "error", ["OutOfBounds"]),
                              (128, "error", ["Misaligned"]), (32, "any", None), (1, "any", None)]:
        case(f"alignment-{v}", patch(aligned, align_kv["value_at"], "<I", v), expect, errors)
    case("alignment-as-string", patch(aligned, align_kv["type_at"], "<I", 8), "error")

    def nested(depth: int) -> bytes:
        value = struct.pack("<IQ", 9, 1) * (depth - 1) + struct.pack("<IQ", 0, 0)
        kv = struct.pack("<Q", 4) + b"deep" + struct.pack("<I", 9) + value
        return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv

    case("nested-8", nested(8), "ok")
    case("nested-9", nested(9), "error", ["TooDeep"])
    case("nested-5000", nested(5000), "error", ["TooDeep"])
    case("empty", b"", "error", ["Truncated"])
    case("header-only", b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "ok")
    d = c.new_dir(cat, "directory")
    (d / "model.gguf").mkdir()
    c.add(cat, "directory", "gguf", d / "model.gguf", "error", ["Io"])

    rng = random.Random(22)
    for i in range(60):
        flipped = bytearray(base)
        for _ in range(rng.choice([1, 1, 2, 4])):
            pos = rng.randrange(layout["infos_end"]) if i % 2 else rng.randrange(len(flipped))
            flipped[pos] ^= 1 << rng.randrange(8)
        case(f"bitflip-{i:03d}", bytes(flipped), "any")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrite", required=True, help="the ferrite binary (for `ferrite export`)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    out = args.out.resolve()
    if (out / "cases").exists():
        shutil.rmtree(out / "cases")
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(out)
    base = Base(corpus, args.ferrite)
    for category in [truncated, bitflip, mutated, escape, manifest, tokenizer, hashes, inputs, context, chat,
                     gguf]:
        category(corpus, base)
    (out / "cases.json").write_text(json.dumps(corpus.cases, indent=1))
    counts: dict[str, int] = {}
    for case in corpus.cases:
        counts[case["category"]] = counts.get(case["category"], 0) + 1
    print(json.dumps({"cases": len(corpus.cases), "per_category": counts}))


if __name__ == "__main__":
    main()
