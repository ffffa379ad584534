"""Write the ~21 MB MLP used by ferrite's load/run benchmarks.

Usage (project venv, see scripts/setup-test-env.sh):

    .venv/bin/python scripts/make_bench_model.py OUTDIR

Writes, replacing any previous contents of those paths:

    OUTDIR/embedded/model.onnx          weights inside the protobuf
    OUTDIR/external/model.onnx          graph only
    OUTDIR/external/model.onnx.data     all weights, one file, page aligned
    OUTDIR/input_x.npy                  float32 [1, 1024]

Both models are the same graph with the same weights, so load benchmarks
compare only where the bytes live. Generated at bench time rather than
committed; deterministic (fixed seed), so results stay comparable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # newest IR that both ONNX Runtime 1.31 and tract 0.23 accept
WIDTH = 1024
LAYERS = 5  # 5 x 1024 x 1024 x 4 bytes = 20 MiB of weights, plus biases
SEED = 20240229

# ONNX Runtime memory-maps external initializers only at page-aligned offsets;
# mmap is the load path the external variant is meant to benchmark.
EXTERNAL_ALIGN = 4096


def build_model() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    nodes, inits = [], []
    prev = "x"
    for i in range(LAYERS):
        # He init: keeps the activation scale roughly constant through the
        # ReLUs, so outputs neither vanish nor overflow.
        w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * np.float32(np.sqrt(2.0 / WIDTH)))
        b = (rng.standard_normal(WIDTH, dtype=np.float32) * np.float32(0.01))
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        out = "y" if i == LAYERS - 1 else f"h{i}"
        nodes += [
            helper.make_node("MatMul", [prev, f"W{i}"], [f"mm{i}"], name=f"fc{i}"),
            helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"pre{i}"], name=f"fc{i}_bias"),
            helper.make_node("Relu", [f"pre{i}"], [out], name=f"relu{i}"),
        ]
        prev = out
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
        initializer=inits,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="ferrite-make_bench_model",
    )


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Move every initializer to `<path>.data` at page-aligned offsets.

    Same approach as make_test_models.py: onnx.save_model's own external-data
    option has no alignment and checks for an existing data file relative to
    the current directory. onnx appends to an existing data file, so a stale
    one is removed first.
    """
    location = path.name + ".data"
    data_path = path.with_name(location)
    data_path.unlink(missing_ok=True)
    offset = 0
    for tensor in model.graph.initializer:
        offset = -(-offset // EXTERNAL_ALIGN) * EXTERNAL_ALIGN
        length = len(tensor.raw_data)
        external_data_helper.set_external_data(tensor, location, offset=offset, length=length)
        offset += length
    onnx.save_model(model, str(path))
    data_path.chmod(0o644)  # onnx creates it 0600


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[1])
    (out / "embedded").mkdir(parents=True, exist_ok=True)
    (out / "external").mkdir(parents=True, exist_ok=True)

    model = build_model()
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(out / "embedded" / "model.onnx"))
    # save_external strips the weights from the proto it is given.
    save_external(model, out / "external" / "model.onnx")

    x = np.random.default_rng(SEED + 1).standard_normal((1, WIDTH), dtype=np.float32)
    np.save(out / "input_x.npy", x, allow_pickle=False)

    for p in [out / "embedded" / "model.onnx", out / "external" / "model.onnx",
              out / "external" / "model.onnx.data", out / "input_x.npy"]:
        print(f"{p}: {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
