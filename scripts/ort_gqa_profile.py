"""Experiment (not used by ferrite or its tests): ONNX Runtime's profiler on the GQA rewrite.

ferrite rewrites the decoder in memory, which ONNX Runtime's profiler cannot be pointed at from
ferrite; this profiles the same rewrite (scripts/ort_gqa_experiment.py) node type by node type at
positions 10 and 200, 300 steps each, with the caches bound in place:

    .venv/bin/python scripts/ort_gqa_profile.py models/shakespeare-gpt/q4
"""
import collections
import json
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np, onnxruntime as ort
import ort_gqa_experiment as e
src = sys.argv[1]
dst = "/tmp/ferrite-gqa/prof"
e.rewrite(src, dst)
res = {}
for pos in (10, 200):
    o = ort.SessionOptions(); o.intra_op_num_threads = o.inter_op_num_threads = 1
    o.enable_profiling = True; o.profile_file_prefix = f"/tmp/prof{pos}"
    s = ort.InferenceSession(dst + "/model.onnx", o, providers=["CPUExecutionProvider"])
    caches = {f"{kv}.{l}": ort.OrtValue.ortvalue_from_numpy(np.random.randn(1, 4, 256, 32).astype(np.float32)) for l in range(4) for kv in ("key", "value")}
    b = s.io_binding()
    b.bind_cpu_input("input_ids", np.array([[5]], np.int64))
    b.bind_cpu_input("seqlens_k", np.array([pos], np.int32))
    b.bind_cpu_input("total_sequence_length", np.array(pos + 1, np.int32))
    b.bind_cpu_input("past_length", np.array(pos, np.int64))
    for n, v in caches.items():
        b.bind_ortvalue_input(f"past_{n}", v); b.bind_ortvalue_output(f"present_{n}", v)
    b.bind_output("logits")
    for _ in range(300): s.run_with_iobinding(b)
    f = s.end_profiling()
    ev = json.load(open(f))
    agg = collections.defaultdict(list)
    for x in ev:
        if x.get("cat") == "Node" and x["name"].endswith("_kernel_time"):
            agg[x["args"]["op_name"]].append(x["dur"])
    res[pos] = {k: (np.sum(v) / 300) for k, v in agg.items()}
for k in sorted(res[200], key=lambda k: -res[200][k]):
    print(f"{k:30s} {res[10].get(k,0):8.1f} {res[200][k]:8.1f} us/step")
print("total", sum(res[10].values()), sum(res[200].values()))
