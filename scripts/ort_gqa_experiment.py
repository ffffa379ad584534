"""Experiment (not used by ferrite or its tests): ONNX Runtime with an in-place KV cache through
its own GroupQueryAttention.

ferrite's ONNX Runtime backend keeps a decoder's KV cache in place with an attention operator of
its own over IO-bound buffers (runtime/src/backend/ort/cache.rs and ops.rs; on by default,
`--ort-kv-concat` turns it off; docs/onnxruntime.md). This script is the Python reference for the
same idea with ONNX Runtime's `com.microsoft.GroupQueryAttention`: its rewritten file can be run
and profiled node by node from Python (scripts/ort_gqa_profile.py, scripts/ort_mha_experiment.py).

Rewrites an exported ferrite GPT bundle for ONNX Runtime's `com.microsoft.GroupQueryAttention`
(what ONNX Runtime GenAI uses): per layer, the keys-major attention block, the cache `Concat`s and
the causal mask become one GQA node reading the split Q/K/V `[B, S, H*D]`; past and present
key/value are fixed `[1, H, MAX, D]` buffers bound to the *same* OrtValue by IO binding, so GQA
writes a step's rows into the buffer in place (its `past_present_share_buffer` mode). The input
`past_length` replaces `Gather(Shape(past_key.0), 2)` for the positions. Checks the logits
against the file run plainly (prefill 8, then 3 steps), then times a decode step at positions
10 and 200 against the file.

    .venv/bin/python scripts/ort_gqa_experiment.py /tmp/gpt-fp32   # or models/shakespeare-gpt/int8

Measured 2026-11-29 (ONNX Runtime 1.31.1, 1 thread, from Python; int8: an export with 8-bit
activation codes): logits equal to <= 1.1e-5; fp32 step 0.449-0.460 ms at position 10 and 0.486-0.496
ms at 200 (1.08x) against the file's 0.412-0.420 / 0.531-0.535 ms (1.27-1.29x); int8 1.21-1.33x
against 1.41-1.42x. Python builds the IO binding at every step (~30 us); ferrite's backend builds
it once per session (docs/onnxruntime.md).
"""

import os
import shutil
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

MAX = 256  # the shipped GPT's context
LAYERS, HEADS, HEAD_DIM = 4, 4, 32


def rewrite(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "model.onnx.data"), dst)
    model = onnx.load(os.path.join(src, "model.onnx"), load_external_data=False)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    scalars = {i.name: numpy_helper.to_array(i) for i in g.initializer if not i.dims}

    replace, drop = {}, set()
    splits = [n for n in g.node if n.op_type == "Split" and len(n.output) == 3]
    for layer, split in enumerate(splits):
        q, k, v = split.output
        pk, pv = f"present_key.{layer}", f"present_value.{layer}"
        drop.update({id(producer[pk]), id(producer[pv])})
        # present_value -> Transpose -> MatMul -> Transpose -> Reshape (the context, into c_proj)
        t = next(c for c in consumers[pv] if c.op_type == "Transpose")
        mm = consumers[t.output[0]][0]
        tr = consumers[mm.output[0]][0]
        context = consumers[tr.output[0]][0]
        assert context.op_type == "Reshape"
        scores = next(c for c in consumers[pk] if c.op_type == "MatMul")
        scale = float(scalars[consumers[scores.output[0]][0].input[1]])
        replace[id(context)] = helper.make_node(
            "GroupQueryAttention",
            [q, k, v, f"past_key.{layer}", f"past_value.{layer}", "seqlens_k", "total_sequence_length"],
            [context.output[0], pk, pv],
            domain="com.microsoft",
            num_heads=HEADS,
            kv_num_heads=HEADS,
            scale=scale,
            name=f"gqa.{layer}",
        )

    nodes = []
    for n in g.node:
        if id(n) in replace:
            nodes.append(replace[id(n)])
        elif id(n) in drop or (n.op_type == "Shape" and n.input[0] == "past_key.0"):
            continue
        elif n.op_type == "Gather" and producer.get(n.input[0], n).op_type == "Shape" and \
                producer[n.input[0]].input[0] == "past_key.0":
            nodes.append(helper.make_node("Identity", ["past_length"], [n.output[0]]))
        else:
            nodes.append(n)
    while True:  # drop what nothing reads any more (the mask, the old attention nodes)
        used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            break
        nodes = kept
    del g.node[:]
    g.node.extend(nodes)
    for vi in list(g.input) + list(g.output):
        if vi.name.startswith(("past_", "present_")):
            dim = vi.type.tensor_type.shape.dim[2]
            dim.ClearField("dim_param")
            dim.dim_value = MAX
    g.input.extend([
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("past_length", TensorProto.INT64, []),
    ])
    model.opset_import.extend([helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, os.path.join(dst, "model.onnx"))
    print(f"{len(nodes)} nodes after the rewrite")


def main() -> None:
    src = sys.argv[1]
    dst = os.path.join("/tmp/ferrite-gqa", src.strip("/").replace("/", "_"))
    rewrite(src, dst)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    gqa = ort.InferenceSession(os.path.join(dst, "model.onnx"), options, providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(os.path.join(src, "model.onnx"), options, providers=["CPUExecutionProvider"])
    caches = {
        f"{kv}.{layer}": ort.OrtValue.ortvalue_from_numpy(np.zeros((1, HEADS, MAX, HEAD_DIM), np.float32))
        for layer in range(LAYERS) for kv in ("key", "value")
    }

    def step(ids, past):
        b = gqa.io_binding()
        b.bind_cpu_input("input_ids", np.array([ids], np.int64))
        b.bind_cpu_input("seqlens_k", np.array([past + len(ids) - 1], np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(past + len(ids), np.int32))
        b.bind_cpu_input("past_length", np.array(past, np.int64))
        for name, value in caches.items():  # past and present: one buffer
            b.bind_ortvalue_input(f"past_{name}", value)
            b.bind_ortvalue_output(f"present_{name}", value)
        b.bind_output("logits")
        gqa.run_with_iobinding(b)
        return b.get_outputs()[-1].numpy()

    names = [o.name for o in plain.get_outputs()]
    feeds = {i.name: np.zeros((1, HEADS, 0, HEAD_DIM), np.float32) for i in plain.get_inputs()[1:]}
    past = 0
    for ids in ([5, 900, 17, 4000, 250, 3, 77, 1021], [42], [1234], [7]):
        got = step(ids, past)
        want = plain.run(None, {"input_ids": np.array([ids], np.int64), **feeds})
        feeds = {n.replace("present", "past"): v for n, v in zip(names[1:], want[1:])}
        print(f"position {past}: logits max abs diff {np.abs(got - want[0]).max():.2e}")
        past += len(ids)

    def median_ms(run, repeat=400):
        for _ in range(30):
            run()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        return np.median(times) * 1e3

    def plain_step(past):
        f = {"input_ids": np.array([[5]], np.int64)}
        f.update({i.name: np.random.randn(1, HEADS, past, HEAD_DIM).astype(np.float32) for i in plain.get_inputs()[1:]})
        return lambda: plain.run(None, f)

    for _ in range(2):
        a, b = median_ms(lambda: step([5], 10)), median_ms(lambda: step([5], 200))
        c, d = median_ms(plain_step(10)), median_ms(plain_step(200))
        print(f"GQA in place: {a:.3f} / {b:.3f} ms at 10 / 200 ({b / a:.2f}x); "
              f"the file: {c:.3f} / {d:.3f} ms ({d / c:.2f}x)")


if __name__ == "__main__":
    main()
