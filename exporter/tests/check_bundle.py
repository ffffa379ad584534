"""Validate one ferrite bundle with the reference ONNX tooling; called by the exporter's tests.

    python check_bundle.py BUNDLE_DIR [--tol T]

1. onnx.checker.check_model(model.onnx, full_check=True) (external data resolved from the path);
2. every external tensor lies at a 4096-aligned offset in model.onnx.data;
3. ONNX Runtime (CPU, Python) runs the golden inputs from golden.npz; with --tol, every output
   must match golden.npz (the exporter's fp32 outputs, computed on tract) to <= T max abs.

Prints one JSON object: {"max_abs": {output: error}, "opsets": {...}} and exits non-zero on failure.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--tol", type=float, default=None)
    args = ap.parse_args()
    model_path = args.bundle / "model.onnx"
    onnx.checker.check_model(str(model_path), full_check=True)
    model = onnx.load(str(model_path), load_external_data=False)
    for t in model.graph.initializer:
        ext = {e.key: e.value for e in t.external_data}
        if ext and int(ext.get("offset", "0")) % 4096 != 0:
            print(f"{t.name}: external offset {ext['offset']} is not 4096-aligned", file=sys.stderr)
            return 1
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    golden = np.load(args.bundle / "golden.npz")
    feeds = {i.name: golden[i.name] for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    errors = {}
    for name, got in zip(names, outs):
        if not np.all(np.isfinite(got)):
            print(f"{name}: non-finite output", file=sys.stderr)
            return 1
        errors[name] = float(np.max(np.abs(got.astype(np.float64) - golden[name]))) if got.size else 0.0
    print(json.dumps({"max_abs": errors, "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}}))
    if args.tol is not None:
        bad = {k: v for k, v in errors.items() if v > args.tol}
        if bad:
            print(f"ORT differs from the fp32 goldens beyond {args.tol}: {bad}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
