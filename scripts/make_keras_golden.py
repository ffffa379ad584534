"""Build the exporter's Keras golden cases: small seeded Keras 3 `.keras` archives and what Keras
computes from them.

Run once in the dev venv (Keras 3 on its torch backend; TensorFlow is not needed):

    .venv-dev/bin/pip install keras
    KERAS_BACKEND=torch .venv-dev/bin/python scripts/make_keras_golden.py

Each case is a directory exporter/tests/golden/<case>/ holding `model.keras` exactly as
`model.save()` writes it and expected.npz with the inputs and Keras's outputs (< 100 KB each).
Weights are re-drawn from a seeded normal distribution after building, so every bias (gate order!)
and every kernel is non-trivial.

  keras            Sequential[Embedding(V,E), LSTM(H, return_sequences), LSTM(H, return_sequences),
                   Dense(V)] + vocab.json.
                   expected.npz: input_ids; logits_zero_state = model(input_ids) (zero initial
                   state, what Keras itself serves); h0/c0 (non-zero, [L,B,H]) and the logits, hN,
                   cN Keras computes from them (the same layers, cloned with return_state=True and
                   called with initial_state).
  keras-next-word  Sequential[Embedding, Dropout, LSTM(H) (last step only), Dense(V, softmax)],
                   the usual Keras next-word model, no vocab.json.
                   expected.npz: input_ids; probs = model(input_ids) ([B,V], softmax of the last
                   step); logits = the pre-softmax logits of every position ([B,S,V]: the LSTM
                   cloned with return_sequences=True, then the Dense kernel and bias without
                   the activation), which is what the exported bundle emits.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from make_goldens import save_npz  # noqa: E402  (same directory: scripts/)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exporter" / "tests" / "golden"


def fresh(case: str) -> Path:
    d = OUT / case
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def randomise(model: keras.Model, rng: np.random.Generator) -> None:
    for v in model.weights:
        v.assign(rng.normal(0.0, 0.3, size=tuple(v.shape)).astype(np.float32))


def np32(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


def clone_lstm(layer: keras.layers.LSTM, **overrides) -> keras.layers.LSTM:
    """The same LSTM (same weights) with some config changed, e.g. return_state=True."""
    cfg = layer.get_config()
    cfg.update(overrides)
    cfg["name"] = layer.name + "_clone"
    clone = keras.layers.LSTM.from_config(cfg)
    clone.build((None, None, layer.cell.kernel.shape[0]))
    clone.set_weights(layer.get_weights())
    return clone


def pre_softmax(dense: keras.layers.Dense, y) -> np.ndarray:
    """The Dense layer's output before its activation."""
    z = keras.ops.matmul(y, dense.kernel)
    if dense.use_bias:
        z = z + dense.bias
    return np32(z)


def check_size(d: Path) -> None:
    for f in d.iterdir():
        assert f.stat().st_size < 100_000, f"{f} is {f.stat().st_size} bytes"


def stacked_case() -> None:
    V, E, H, L, B, S = 40, 12, 16, 2, 2, 7
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(V, E),
        keras.layers.LSTM(H, return_sequences=True),
        keras.layers.LSTM(H, return_sequences=True),
        keras.layers.Dense(V),
    ])
    randomise(model, rng)
    d = fresh("keras")
    model.save(d / "model.keras")
    (d / "vocab.json").write_text(json.dumps({chr(97 + i % 26) + str(i // 26): i for i in range(V)}))

    ids = rng.integers(0, V, size=(B, S)).astype(np.int64)
    h0 = (rng.normal(size=(L, B, H)) * 0.5).astype(np.float32)
    c0 = (rng.normal(size=(L, B, H)) * 0.5).astype(np.float32)
    logits_zero_state = np32(model(ids.astype(np.int32), training=False))

    emb, lstms, dense = model.layers[0], model.layers[1:3], model.layers[3]

    def run(h0: np.ndarray, c0: np.ndarray):
        x = emb(ids.astype(np.int32))
        hn, cn = [], []
        for k, layer in enumerate(lstms):
            clone = clone_lstm(layer, return_state=True)
            state = [keras.ops.convert_to_tensor(h0[k]), keras.ops.convert_to_tensor(c0[k])]
            x, h, c = clone(x, initial_state=state, training=False)
            hn.append(np32(h))
            cn.append(np32(c))
        return np32(dense(x)), hn, cn

    zeros = np.zeros_like(h0)
    assert np.abs(run(zeros, zeros)[0] - logits_zero_state).max() < 1e-6, "clones differ from the model"
    logits, hn, cn = run(h0, c0)
    save_npz(d / "expected.npz", {
        "input_ids": ids,
        "logits_zero_state": logits_zero_state,
        "h0": h0,
        "c0": c0,
        "logits": logits,
        "hN": np.stack(hn),
        "cN": np.stack(cn),
    })
    check_size(d)


def next_word_case() -> None:
    V, E, H, B, S = 32, 8, 24, 3, 5
    keras.utils.set_random_seed(9)
    rng = np.random.default_rng(9)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(V, E),
        keras.layers.Dropout(0.2),
        keras.layers.LSTM(H),
        keras.layers.Dense(V, activation="softmax"),
    ])
    randomise(model, rng)
    d = fresh("keras-next-word")
    model.save(d / "model.keras")

    ids = rng.integers(0, V, size=(B, S)).astype(np.int64)
    probs = np32(model(ids.astype(np.int32), training=False))
    emb, lstm, dense = model.layers[0], model.layers[2], model.layers[3]
    seq = clone_lstm(lstm, return_sequences=True)(emb(ids.astype(np.int32)), training=False)
    logits = pre_softmax(dense, seq)
    last = logits[:, -1, :].astype(np.float64)
    soft = np.exp(last - last.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    assert np.abs(soft - probs).max() < 1e-5, "pre-softmax logits do not reproduce Keras's output"
    save_npz(d / "expected.npz", {"input_ids": ids, "probs": probs, "logits": logits})
    check_size(d)


if __name__ == "__main__":
    assert keras.__version__.startswith("3."), keras.__version__
    stacked_case()
    next_word_case()
    for case in ("keras", "keras-next-word"):
        print(case, sorted((f.name, f.stat().st_size) for f in (OUT / case).iterdir()))
