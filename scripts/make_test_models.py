"""Build ferrite's small ONNX test models and their ONNX Runtime goldens.

Run with the project venv (see scripts/setup-test-env.sh):

    .venv/bin/python scripts/make_test_models.py

For every case a directory tests/models/<case>/ is rebuilt from scratch with:

    model.onnx            the graph (plus model.onnx.data for external_data)
    input_<NAME>.npy      one per graph input, deterministic values
    expected.npz          every graph output as computed by ONNX Runtime (CPU)
    case.json             {"inputs": {name: file}, "outputs": [...], "source": ...}

The deliberately unloadable `unknown_op` case only gets model.onnx and a
case.json naming the error the Rust side is expected to report.

It also (re)builds models/tiny-lstm-lm/, a language-model-shaped demo graph
with random weights, in the same layout.

Everything is deterministic: fixed seeds, single-threaded ORT, and archives
written with fixed timestamps, so re-running yields byte-identical files.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, external_data_helper, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = ROOT / "tests" / "models"
DEMO_DIR = ROOT / "models" / "tiny-lstm-lm"

# Opset 17 / IR 8 is the newest pair that both ONNX Runtime 1.31 and tract
# 0.23 load without complaint; onnx 1.23 would otherwise stamp a newer IR.
OPSET = 17
IR_VERSION = 8

# Cases stay well below this so the committed fixtures remain small.
MAX_CASE_BYTES = 300 * 1024

# External tensors start on page boundaries: ONNX Runtime only memory-maps
# external initializers whose offset is page aligned, and a reader that
# ignores `offset` (just concatenating tensors) fails loudly on the gaps.
EXTERNAL_ALIGN = 4096

ORT_SOURCE = f"onnxruntime {ort.__version__} CPUExecutionProvider"

# ZIP entries carry a timestamp; pin it so expected.npz is reproducible
# (np.savez stamps the current time).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------


def rng_for(name: str) -> np.random.Generator:
    """Per-case generator, so adding or reordering cases never changes others.

    crc32 rather than hash(): str hashing is randomised per process.
    """
    return np.random.default_rng(zlib.crc32(name.encode("ascii")))


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def init(name: str, array: np.ndarray) -> TensorProto:
    # numpy_helper stores raw_data, which is what external-data saving moves.
    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def vi(name: str, elem_type: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_model(graph: onnx.GraphProto, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="ferrite-make_test_models",
    )
    if metadata:
        helper.set_model_props(model, metadata)
    return model


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (stored, uncompressed) but with fixed entry timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def save_with_external_data(model: onnx.ModelProto, path: Path, align: int = EXTERNAL_ALIGN) -> None:
    """Save `model` with every initializer in `<path>.data`, page aligned.

    Done by hand instead of onnx.save_model(save_as_external_data=True) for
    two reasons: that path offers no alignment, and it checks for an existing
    data file relative to the *current directory* rather than the model's.
    onnx appends to an existing data file, so any stale one is removed first.
    """
    location = path.name + ".data"
    data_path = path.with_name(location)
    data_path.unlink(missing_ok=True)
    offset = 0
    for tensor in model.graph.initializer:
        offset = -(-offset // align) * align
        length = len(tensor.raw_data)
        external_data_helper.set_external_data(tensor, location, offset=offset, length=length)
        offset += length
    # save_model writes each marked tensor at its offset (zero-padding the
    # gaps) and strips raw_data from the protobuf.
    onnx.save_model(model, str(path))
    # onnx creates the data file 0600; make it as readable as model.onnx.
    data_path.chmod(0o644)


def ort_session(model_path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    # One thread: reduction order (and so the last float bits) cannot vary
    # between runs or machines with different core counts.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # No graph rewrites: goldens reflect the ONNX semantics of the graph as
    # written (ORT would otherwise fuse e.g. the quantised matmul chain into
    # its own contrib kernels).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def run_ort(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort_session(model_path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def fresh_dir(directory: Path) -> None:
    # Rebuilt from scratch so files from an older layout cannot linger.
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def write_case(
    directory: Path,
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    external_data: bool = False,
) -> str:
    """Check, save, run in ORT and write the fixture files; returns a summary."""
    graph_inputs = [i.name for i in model.graph.input]
    graph_outputs = [o.name for o in model.graph.output]
    assert sorted(feeds) == sorted(graph_inputs), (feeds.keys(), graph_inputs)

    # Checked while all weights are still inline (external saving strips them).
    onnx.checker.check_model(model, full_check=True)

    fresh_dir(directory)
    model_path = directory / "model.onnx"
    if external_data:
        save_with_external_data(model, model_path)
        # Re-check from disk: proves the data file and offsets resolve.
        onnx.checker.check_model(str(model_path), full_check=True)
    else:
        onnx.save_model(model, str(model_path))

    inputs_json = {}
    for name in graph_inputs:
        file_name = f"input_{name}.npy"
        np.save(directory / file_name, feeds[name], allow_pickle=False)
        inputs_json[name] = file_name

    outputs = run_ort(model_path, feeds)
    assert list(outputs) == graph_outputs, (list(outputs), graph_outputs)
    for name, value in outputs.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ValueError(f"{directory.name}: output {name} is not finite")
    save_npz(directory / "expected.npz", outputs)

    case = {"inputs": inputs_json, "outputs": graph_outputs, "source": ORT_SOURCE}
    (directory / "case.json").write_text(json.dumps(case, indent=2) + "\n")

    verify_case(directory)

    size = dir_bytes(directory)
    if size > MAX_CASE_BYTES:
        raise ValueError(f"{directory.name}: {size} bytes exceeds {MAX_CASE_BYTES}")
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in outputs.items())
    return f"{len(model.graph.node)} nodes, outputs {shapes}, {size} bytes"


def verify_case(directory: Path) -> None:
    """Reload the written fixture exactly as a consumer would and re-run it.

    Only what is on disk is used, so this catches anything that did not
    survive serialisation (external data paths, npz keys, dtypes).
    """
    case = json.loads((directory / "case.json").read_text())
    feeds = {name: np.load(directory / f) for name, f in case["inputs"].items()}
    with np.load(directory / "expected.npz") as npz:
        expected = {k: npz[k] for k in npz.files}
    assert sorted(expected) == sorted(case["outputs"]), (expected.keys(), case["outputs"])
    got = run_ort(directory / "model.onnx", feeds)
    for name in case["outputs"]:
        if got[name].dtype != expected[name].dtype or not np.array_equal(got[name], expected[name]):
            raise AssertionError(f"{directory.name}: output {name} differs on reload")


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


def case_matmul_integer(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Dynamically quantised linear layer, as onnxruntime's quantize_dynamic emits.

    uint8 activations (DynamicQuantizeLinear) x int8 weights is the only
    MatMulInteger type combination tract supports, which is also the one
    quantisation tools produce for CPU targets.
    """
    rng = rng_for(name)
    k, n = 64, 32
    w = rng.standard_normal((k, n)) * 0.1
    # Symmetric per-output-channel: zero point 0, range [-127, 127] so the
    # negated extreme still fits in int8.
    w_scale = f32(np.abs(w).max(axis=0) / 127.0)
    w_q = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
    w_zp = np.zeros((n,), dtype=np.int8)
    bias = f32(rng.standard_normal(n) * 0.1)

    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zp"], name="quant_x"),
        helper.make_node("MatMulInteger", ["x_q", "w_q", "x_zp", "w_zp"], ["acc_i32"], name="matmul_int"),
        helper.make_node("Cast", ["acc_i32"], ["acc_f32"], to=TensorProto.FLOAT, name="cast_acc"),
        helper.make_node("Mul", ["x_scale", "w_scale"], ["out_scale"], name="combine_scales"),
        helper.make_node("Mul", ["acc_f32", "out_scale"], ["dequant"], name="dequant"),
        helper.make_node("Add", ["dequant", "bias"], ["y"], name="add_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [vi("x", TensorProto.FLOAT, [2, k])],
        [vi("y", TensorProto.FLOAT, [2, n])],
        initializer=[init("w_q", w_q), init("w_zp", w_zp), init("w_scale", w_scale), init("bias", bias)],
    )
    feeds = {"x": f32(rng.standard_normal((2, k)))}
    return make_model(graph), feeds


def lstm_weights(
    rng: np.random.Generator, input_size: int, hidden: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX LSTM W, R, B for one direction (gate order i, o, f, c).

    PyTorch-style U(-1/sqrt(h), 1/sqrt(h)) keeps gates away from saturation,
    so the goldens exercise the non-linear range of the activations.
    """
    bound = 1.0 / np.sqrt(hidden)
    w = f32(rng.uniform(-bound, bound, (1, 4 * hidden, input_size)))
    r = f32(rng.uniform(-bound, bound, (1, 4 * hidden, hidden)))
    b = f32(rng.uniform(-bound, bound, (1, 8 * hidden)))
    return w, r, b


def case_lstm(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = rng_for(name)
    seq, batch, inp, hidden = 5, 2, 8, 16
    w, r, b = lstm_weights(rng, inp, hidden)
    # Inputs: X, W, R, B, sequence_lens (absent), initial_h, initial_c.
    node = helper.make_node(
        "LSTM",
        ["X", "W", "R", "B", "", "initial_h", "initial_c"],
        ["Y", "Y_h", "Y_c"],
        name="lstm",
        hidden_size=hidden,
        direction="forward",
    )
    state = [1, batch, hidden]
    graph = helper.make_graph(
        [node],
        name,
        [
            vi("X", TensorProto.FLOAT, [seq, batch, inp]),
            vi("initial_h", TensorProto.FLOAT, state),
            vi("initial_c", TensorProto.FLOAT, state),
        ],
        [
            vi("Y", TensorProto.FLOAT, [seq, 1, batch, hidden]),
            vi("Y_h", TensorProto.FLOAT, state),
            vi("Y_c", TensorProto.FLOAT, state),
        ],
        initializer=[init("W", w), init("R", r), init("B", b)],
    )
    feeds = {
        "X": f32(rng.standard_normal((seq, batch, inp))),
        "initial_h": f32(rng.standard_normal(state) * 0.5),
        "initial_c": f32(rng.standard_normal(state) * 0.5),
    }
    return make_model(graph), feeds


def mlp_graph(
    name: str, rng: np.random.Generator, batch: int | str
) -> onnx.GraphProto:
    """x[b,32] -> 64 -> relu -> 16, shared by external_data and dynamic_batch."""
    d_in, d_hidden, d_out = 32, 64, 16
    w1 = f32(rng.standard_normal((d_in, d_hidden)) / np.sqrt(d_in))
    b1 = f32(rng.standard_normal(d_hidden) * 0.1)
    w2 = f32(rng.standard_normal((d_hidden, d_out)) / np.sqrt(d_hidden))
    b2 = f32(rng.standard_normal(d_out) * 0.1)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1_mm"], name="fc1"),
        helper.make_node("Add", ["h1_mm", "B1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h1_relu"], name="relu1"),
        helper.make_node("MatMul", ["h1_relu", "W2"], ["h2_mm"], name="fc2"),
        helper.make_node("Add", ["h2_mm", "B2"], ["y"], name="fc2_bias"),
    ]
    value_info = []
    if isinstance(batch, str):
        # Spelled out so a loader sees the symbolic batch on every edge
        # without running its own shape inference.
        value_info = [
            vi("h1_mm", TensorProto.FLOAT, [batch, d_hidden]),
            vi("h1", TensorProto.FLOAT, [batch, d_hidden]),
            vi("h1_relu", TensorProto.FLOAT, [batch, d_hidden]),
            vi("h2_mm", TensorProto.FLOAT, [batch, d_out]),
        ]
    return helper.make_graph(
        nodes,
        name,
        [vi("x", TensorProto.FLOAT, [batch, d_in])],
        [vi("y", TensorProto.FLOAT, [batch, d_out])],
        initializer=[init("W1", w1), init("B1", b1), init("W2", w2), init("B2", b2)],
        value_info=value_info,
    )


def case_external_data(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = rng_for(name)
    model = make_model(
        mlp_graph(name, rng, 3),
        metadata={"ferrite.case": "external_data", "ferrite.note": "weights stored outside the protobuf"},
    )
    feeds = {"x": f32(rng.standard_normal((3, 32)))}
    return model, feeds


def case_dynamic_batch(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = rng_for(name)
    model = make_model(mlp_graph(name, rng, "batch"))
    feeds = {"x": f32(rng.standard_normal((4, 32)))}
    return model, feeds


def write_unknown_op(directory: Path) -> str:
    """A graph no runtime can load: an op that does not exist in any opset.

    Not checked or run (both would reject it, which is the point); we only
    confirm ORT refuses it, so the case cannot silently become loadable.
    """
    op = "FerriteNoSuchOp"
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name="no_such_op")],
        "unknown_op",
        [vi("x", TensorProto.FLOAT, [2, 2])],
        [vi("y", TensorProto.FLOAT, [2, 2])],
    )
    fresh_dir(directory)
    model_path = directory / "model.onnx"
    onnx.save_model(make_model(graph), str(model_path))
    case = {"expect_error": "UnsupportedOp", "op": op}
    (directory / "case.json").write_text(json.dumps(case, indent=2) + "\n")
    try:
        ort_session(model_path)
    except Exception:  # ORT raises its own pybind exception types here
        pass
    else:
        raise AssertionError("onnxruntime unexpectedly loaded the unknown_op model")
    return f"1 node ({op}), rejected by onnxruntime as intended, {dir_bytes(directory)} bytes"


# --------------------------------------------------------------------------
# Demo language model
# --------------------------------------------------------------------------

DEMO_README = """\
# tiny-lstm-lm

Demo language-model-shaped ONNX graph with **random weights**: a placeholder
until the trainer ships a trained model; generated by
`scripts/make_test_models.py` (do not edit by hand, rerun the script).

Vocabulary: printable ASCII, token id = byte value - 32 (V = 96).

| name        | dtype | shape      | notes                         |
|-------------|-------|------------|-------------------------------|
| `input_ids` | int64 | [1, S]     | S symbolic                    |
| `h0`, `c0`  | f32   | [1, 1, 64] | LSTM state in (zeros to start) |
| `logits`    | f32   | [1, S, 96] |                               |
| `hN`, `cN`  | f32   | [1, 1, 64] | LSTM state out                |

Graph: Gather(embedding [96, 32]) -> Transpose [S, 1, 32] -> LSTM(64)
-> Squeeze/Transpose [1, S, 64] -> MatMul [64, 96] + bias.

`input_*.npy`, `expected.npz` and `case.json` follow the same layout as the
cases under `tests/models/`: the inputs encode "Hello", the outputs come from
ONNX Runtime.
"""


def demo_lm() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = rng_for("tiny-lstm-lm")
    vocab, emb, hidden = 96, 32, 64
    embedding = f32(rng.standard_normal((vocab, emb)))
    w, r, b = lstm_weights(rng, emb, hidden)
    head = f32(rng.standard_normal((hidden, vocab)) / np.sqrt(hidden))
    head_bias = f32(rng.standard_normal(vocab) * 0.1)

    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["emb"], name="embed", axis=0),
        # LSTM wants [seq, batch, features] (layout 0).
        helper.make_node("Transpose", ["emb"], ["emb_tbf"], name="to_time_major", perm=[1, 0, 2]),
        helper.make_node(
            "LSTM",
            ["emb_tbf", "lstm_W", "lstm_R", "lstm_B", "", "h0", "c0"],
            ["lstm_Y", "hN", "cN"],
            name="lstm",
            hidden_size=hidden,
            direction="forward",
        ),
        # Drop the num_directions axis: [S, 1, 1, H] -> [S, 1, H].
        helper.make_node("Squeeze", ["lstm_Y", "squeeze_axes"], ["lstm_out"], name="drop_direction"),
        helper.make_node("Transpose", ["lstm_out"], ["lstm_bth"], name="to_batch_major", perm=[1, 0, 2]),
        helper.make_node("MatMul", ["lstm_bth", "head_W"], ["head_mm"], name="head"),
        helper.make_node("Add", ["head_mm", "head_B"], ["logits"], name="head_bias"),
    ]
    state = [1, 1, hidden]
    graph = helper.make_graph(
        nodes,
        "tiny_lstm_lm",
        [
            vi("input_ids", TensorProto.INT64, [1, "S"]),
            vi("h0", TensorProto.FLOAT, state),
            vi("c0", TensorProto.FLOAT, state),
        ],
        [
            vi("logits", TensorProto.FLOAT, [1, "S", vocab]),
            vi("hN", TensorProto.FLOAT, state),
            vi("cN", TensorProto.FLOAT, state),
        ],
        initializer=[
            init("embedding", embedding),
            init("lstm_W", w),
            init("lstm_R", r),
            init("lstm_B", b),
            init("squeeze_axes", np.array([1], dtype=np.int64)),
            init("head_W", head),
            init("head_B", head_bias),
        ],
    )
    model = make_model(graph)
    ids = np.frombuffer(b"Hello", dtype=np.uint8).astype(np.int64) - 32
    feeds = {
        "input_ids": ids.reshape(1, -1),
        "h0": np.zeros(state, dtype=np.float32),
        "c0": np.zeros(state, dtype=np.float32),
    }
    return model, feeds


# --------------------------------------------------------------------------


CASES: list[tuple[str, Callable[[str], tuple[onnx.ModelProto, dict[str, np.ndarray]]], bool]] = [
    # (name, builder, external_data)
    ("matmul_integer", case_matmul_integer, False),
    ("lstm", case_lstm, False),
    ("external_data", case_external_data, True),
    ("dynamic_batch", case_dynamic_batch, False),
]


def main() -> int:
    for name, build, external in CASES:
        model, feeds = build(name)
        summary = write_case(TESTS_DIR / name, model, feeds, external_data=external)
        print(f"{name}: {summary}")

    print(f"unknown_op: {write_unknown_op(TESTS_DIR / 'unknown_op')}")

    model, feeds = demo_lm()
    summary = write_case(DEMO_DIR, model, feeds)
    (DEMO_DIR / "README.md").write_text(DEMO_README)
    print(f"tiny-lstm-lm: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
