"""Experiment (not used by ferrite or its tests): GroupQueryAttention vs MultiHeadAttention.

Both com.microsoft ops can share one buffer for the past and present cache (GQA when the two
pointers are equal, MultiHeadAttention when `past_sequence_length` is given). Rewrites an exported
GPT with scripts/ort_gqa_experiment.py, turns each GQA node into MultiHeadAttention
(unidirectional), checks the logits agree, and times a decode step at positions 10 and 200 with
a binding built once (docs/onnxruntime.md):

    .venv/bin/python scripts/ort_mha_experiment.py models/shakespeare-gpt/int8
"""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto
import ort_gqa_experiment as e
src = sys.argv[1]
gdir = "/tmp/ferrite-gqa/g"; mdir = "/tmp/ferrite-gqa/m"
e.rewrite(src, gdir)
os.makedirs(mdir, exist_ok=True)
import shutil; shutil.copy(gdir + "/model.onnx.data", mdir)
m = onnx.load(gdir + "/model.onnx", load_external_data=False)
for n in m.graph.node:
    if n.op_type == "GroupQueryAttention":
        scale = [a.f for a in n.attribute if a.name == "scale"][0]
        q, k, v, pk, pv, _, _ = n.input
        n.op_type = "MultiHeadAttention"
        del n.input[:]
        n.input.extend([q, k, v, "", "", "", pk, pv, "past_seq"])
        del n.attribute[:]
        n.attribute.extend([helper.make_attribute("num_heads", 4), helper.make_attribute("scale", scale), helper.make_attribute("unidirectional", 1)])
m.graph.input.extend([helper.make_tensor_value_info("past_seq", TensorProto.INT32, [1])])
onnx.save(m, mdir + "/model.onnx")
o = ort.SessionOptions(); o.intra_op_num_threads = o.inter_op_num_threads = 1
o.log_severity_level = 3
sg = ort.InferenceSession(gdir + "/model.onnx", o, providers=["CPUExecutionProvider"])
sm = ort.InferenceSession(mdir + "/model.onnx", o, providers=["CPUExecutionProvider"])
def binder(s, kind, pos):
    caches = {f"{kv}.{l}": ort.OrtValue.ortvalue_from_numpy(np.random.RandomState(l).randn(1, 4, 256, 32).astype(np.float32)) for l in range(4) for kv in ("key", "value")}
    b = s.io_binding()
    b.bind_cpu_input("input_ids", np.array([[5]], np.int64))
    b.bind_cpu_input("past_length", np.array(pos, np.int64))
    if kind == "g":
        b.bind_cpu_input("seqlens_k", np.array([pos], np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(pos + 1, np.int32))
    else:
        b.bind_cpu_input("past_seq", np.array([pos], np.int32))
    for n, v in caches.items():
        b.bind_ortvalue_input(f"past_{n}", v); b.bind_ortvalue_output(f"present_{n}", v)
    b.bind_output("logits")
    return b
def t(s, b):
    for _ in range(50): s.run_with_iobinding(b)
    ts = []
    for _ in range(400):
        a = time.perf_counter(); s.run_with_iobinding(b); ts.append(time.perf_counter() - a)
    return np.median(ts) * 1e3
# correctness: MHA vs GQA logits at pos 37 on same random caches
bg, bm = binder(sg, "g", 37), binder(sm, "m", 37)
sg.run_with_iobinding(bg); sm.run_with_iobinding(bm)
print("logits diff", np.abs(bg.get_outputs()[-1].numpy() - bm.get_outputs()[-1].numpy()).max())
for r in range(5):
    g10, g200 = t(sg, binder(sg, "g", 10)), t(sg, binder(sg, "g", 200))
    m10, m200 = t(sm, binder(sm, "m", 10)), t(sm, binder(sm, "m", 200))
    print(f"GQA {g10:.3f}/{g200:.3f} ({g200/g10:.2f}x)  MHA {m10:.3f}/{m200:.3f} ({m200/m10:.2f}x)")
