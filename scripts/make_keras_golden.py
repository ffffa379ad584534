"""Build the exporter's Keras golden cases: small seeded Keras 3 `.keras` archives and what Keras
computes from them.

Run once in the dev venv (Keras 3 on its torch backend; TensorFlow and tf-keras only for the
word-vocabulary cases: Keras 3's `TextVectorization` runs on TensorFlow whatever the backend, and
the Keras `Tokenizer` exists only in tf-keras (Keras 2), `tf_keras.preprocessing.text.Tokenizer`,
whose `to_json()` writes the vocabulary file used here):

    .venv-dev/bin/pip install keras torch tensorflow tf-keras
    KERAS_BACKEND=torch .venv-dev/bin/python scripts/make_keras_golden.py [CASE...]

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

Word-vocabulary cases: next-word models trained (briefly, seeded) on a small built-in corpus, so
that greedy continuations are clear-cut. Each holds model.keras, its vocabulary file,
expected.npz (input_ids [B,S] of prompts of S words; logits [B,S,V] before the softmax, every
position; probs [B,V] = model(input_ids)) and expected.json ({"prompts": [{"text", "ids" (Keras's
own tokenization), "greedy_ids", "greedy_words" (5 steps: argmax of model(ids so far), appended,
repeated)}], "oov": a prompt with a word outside the vocabulary and Keras's ids for it}).

  keras-words       Functional Input -> Embedding -> LSTM(return_sequences) -> LSTM -> Dense
                    softmax; vocabulary: keras_tokenizer.json, the Keras Tokenizer's to_json()
                    (lower, default filters, split " ", oov_token "<OOV>").
  keras-words-seq   The seed model, Sequential[Embedding(V,16), LSTM(32), Dense(V, softmax)];
                    vocabulary: words.json, {word: index} built by hand from text.split()
                    (index 0 left for padding, no OOV token: Keras code drops such words).
  keras-textvec     Functional Input(string) -> TextVectorization (adapted: its vocabulary is in
                    the archive's assets) -> Embedding -> LSTM -> Dense softmax; vocabulary.txt is
                    get_vocabulary(), one token per line. Keras 3 on torch cannot run a string
                    input through the model, so ids come from the layer itself and the logits from
                    the layers after it: what model(text) computes on the TensorFlow backend.
  keras-branching   Functional Embedding -> two LSTMs -> Concatenate -> Dense: must be refused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
# One thread: the goldens do not depend on the machine's core count, and tiny models train
# fastest without threads contending.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# A small built-in corpus: capitals and punctuation exercise the vocabularies' normalisation.
CORPUS = """The cat sat on the mat. The dog sat on the log.
The cat saw the dog, and the dog saw the cat!
A bird sang in the tree. The bird flew over the house.
The children played in the garden; the sun was warm.
The dog ran to the gate and the cat ran to the door.
A little mouse hid under the old chair.
The old man read a book by the fire.
The wind blew over the hill and the rain fell on the town.
"""
PROMPTS = ["the cat sat", "the dog ran", "a bird sang", "the old man"]
STEPS = 5
WINDOW = 8  # = the longest context a test generates with (3 prompt words + 5 steps)


def train(model: keras.Model, ids: list[int], seed: int) -> None:
    """Fits `model` to predict each word from the 1..WINDOW words before it (seeded, CPU,
    seconds): every prompt length is in distribution."""
    sets = []
    for w in range(1, WINDOW + 1):
        x = np.array([ids[i:i + w] for i in range(len(ids) - w)], dtype=np.int32)
        y = np.array([ids[i + w] for i in range(len(ids) - w)], dtype=np.int32)
        sets.append((x, y))
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    # Mini-batches of 16 through train_on_batch: one `fit` per length and epoch costs far more.
    for _ in range(60):
        for x, y in sets:
            order = rng.permutation(len(x))
            for start in range(0, len(x), 16):
                batch = order[start:start + 16]
                model.train_on_batch(x[batch], y[batch])
    losses = [model.evaluate(x, y, verbose=0) for x, y in sets]
    print("  trained: loss by context length " + ", ".join(f"{loss:.3f}" for loss in losses))


def uncompiled(build, trained: keras.Model) -> keras.Model:
    """A fresh model from `build` holding `trained`'s weights: the archive then holds no
    optimizer state (what `model.save()` after `fit` would add, tripling the file)."""
    model = build()
    model.set_weights(trained.get_weights())
    return model


def all_logits(layers: list, ids: np.ndarray) -> np.ndarray:
    """Pre-softmax logits of every position ([B,S,V]): the LSTMs run with return_sequences=True,
    the last Dense without its activation — what the exported bundle emits."""
    x = ids.astype(np.int32)
    for layer in layers:
        if isinstance(layer, keras.layers.LSTM) and not layer.return_sequences:
            x = clone_lstm(layer, return_sequences=True)(x, training=False)
        elif layer is layers[-1]:
            return pre_softmax(layer, x)
        else:
            x = layer(x, training=False)
    raise AssertionError("no Dense at the end")


def greedy(predict, ids: list[int]) -> list[int]:
    """STEPS greedy steps: argmax of the model's next-word probabilities, appended."""
    ids = list(ids)
    out = []
    for _ in range(STEPS):
        probs = np32(predict(np.array([ids], dtype=np.int32)))
        top2 = np.sort(probs[0])[-2:]
        # A clear choice, so that int8 rounding cannot flip it (the tests compare int8 words).
        assert top2[1] > 2 * top2[0], f"near tie after {ids}: p {top2[1]:.3f} vs {top2[0]:.3f}"
        nxt = int(np.argmax(probs[0]))
        out.append(nxt)
        ids.append(nxt)
    return out


def word_expectations(d: Path, predict, layers: list, tokenize, index_word, oov_prompt: str) -> None:
    """expected.npz (ids, logits, probs) and expected.json (prompts, Keras's ids, greedy words)."""
    ids = [tokenize(p) for p in PROMPTS]
    assert all(len(i) == len(ids[0]) for i in ids), ids
    batch = np.array(ids, dtype=np.int64)
    probs = np32(predict(batch.astype(np.int32)))
    logits = all_logits(layers, batch)
    last = logits[:, -1, :].astype(np.float64)
    soft = np.exp(last - last.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    assert np.abs(soft - probs).max() < 1e-5, "pre-softmax logits do not reproduce Keras's output"
    save_npz(d / "expected.npz", {"input_ids": batch, "logits": logits, "probs": probs})
    prompts = []
    for text, p in zip(PROMPTS, ids):
        g = greedy(predict, p)
        prompts.append({"text": text, "ids": p, "greedy_ids": g, "greedy_words": [index_word[i] for i in g]})
        print(f"  {text!r} -> {' '.join(index_word[i] for i in g)!r}")
    oov = {"text": oov_prompt}
    try:
        oov["ids"] = tokenize(oov_prompt)
    except KeyError as e:
        oov["missing"] = e.args[0]
    (d / "expected.json").write_text(json.dumps({"prompts": prompts, "oov": oov}, indent=1) + "\n")


def keras_tokenizer_case() -> None:
    from tf_keras.preprocessing.text import Tokenizer  # Keras 2's; Keras 3 has none.

    tok = Tokenizer(oov_token="<OOV>")
    tok.fit_on_texts(CORPUS.splitlines())
    V = len(tok.word_index) + 1
    E, H = 16, 24

    def build() -> keras.Model:
        inp = keras.Input((None,), dtype="int32", name="words")
        x = keras.layers.Embedding(V, E, name="embed")(inp)
        x = keras.layers.LSTM(H, return_sequences=True, name="lstm_a")(x)
        x = keras.layers.Dropout(0.1)(x)
        x = keras.layers.LSTM(H, name="lstm_b")(x)
        out = keras.layers.Dense(V, activation="softmax", name="next_word")(x)
        return keras.Model(inp, out)

    keras.utils.set_random_seed(21)
    model = build()
    train(model, tok.texts_to_sequences([CORPUS])[0], 21)
    model = uncompiled(build, model)
    d = fresh("keras-words")
    model.save(d / "model.keras")
    (d / "keras_tokenizer.json").write_text(tok.to_json())
    tokenize = lambda text: tok.texts_to_sequences([text])[0]  # noqa: E731
    index_word = {i: w for w, i in tok.word_index.items()}
    index_word[0] = "<pad>"
    layers = [model.get_layer(n) for n in ("embed", "lstm_a", "lstm_b", "next_word")]
    word_expectations(d, lambda ids: model(ids, training=False), layers, tokenize, index_word, "the zebra sat")
    check_size(d)


def seed_case() -> None:
    text = CORPUS.lower()
    for c in ".,!;":
        text = text.replace(c, "")
    words = sorted(set(text.split()))
    vocab = {w: i + 1 for i, w in enumerate(words)}  # 0 is padding
    V = len(vocab) + 1

    def build() -> keras.Model:
        return keras.Sequential([
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, 16),
            keras.layers.LSTM(32),
            keras.layers.Dense(V, activation="softmax"),
        ])

    keras.utils.set_random_seed(22)
    model = build()
    train(model, [vocab[w] for w in text.split()], 22)
    model = uncompiled(build, model)
    d = fresh("keras-words-seq")
    model.save(d / "model.keras")
    (d / "words.json").write_text(json.dumps(vocab))
    tokenize = lambda text: [vocab[w] for w in text.split()]  # noqa: E731
    index_word = {i: w for w, i in vocab.items()}
    index_word[0] = "<pad>"
    word_expectations(d, lambda ids: model(ids, training=False), model.layers, tokenize, index_word, "the zebra sat")
    check_size(d)


def text_vectorization_case() -> None:
    import tensorflow as tf  # TextVectorization computes with TensorFlow on every backend.

    tv = keras.layers.TextVectorization(name="vectorize")
    tv.adapt(tf.constant(CORPUS.splitlines()))
    vocabulary = tv.get_vocabulary()
    V = len(vocabulary)
    keras.utils.set_random_seed(23)
    trained = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(V, 16),
                                keras.layers.LSTM(24), keras.layers.Dense(V, activation="softmax")])
    tokenize = lambda text: [int(i) for i in np.asarray(tv(tf.constant([text])))[0]]  # noqa: E731
    train(trained, tokenize(CORPUS), 23)
    # The same layers after the TextVectorization, uncompiled, with the trained weights.
    emb = keras.layers.Embedding(V, 16)
    lstm = keras.layers.LSTM(24)
    dense = keras.layers.Dense(V, activation="softmax")
    ids_in = keras.Input((None,), dtype="int32")
    on_ids = keras.Model(ids_in, dense(lstm(emb(ids_in))))
    on_ids.set_weights(trained.get_weights())
    text_in = keras.Input((1,), dtype="string", name="text")
    model = keras.Model(text_in, dense(lstm(emb(tv(text_in)))))
    d = fresh("keras-textvec")
    model.save(d / "model.keras")
    (d / "vocabulary.txt").write_text("\n".join(vocabulary))
    index_word = dict(enumerate(vocabulary))
    index_word[0] = "<pad>"
    word_expectations(d, lambda ids: on_ids(ids, training=False), [emb, lstm, dense], tokenize, index_word,
                      "The zebra sat")
    check_size(d)


def branching_case() -> None:
    keras.utils.set_random_seed(24)
    inp = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 4)(inp)
    a = keras.layers.LSTM(4, return_sequences=True)(x)
    b = keras.layers.LSTM(4, return_sequences=True)(x)
    x = keras.layers.Concatenate(name="join")([a, b])
    out = keras.layers.Dense(10)(x)
    d = fresh("keras-branching")
    keras.Model(inp, out).save(d / "model.keras")
    check_size(d)


CASES = {
    "keras": stacked_case,
    "keras-next-word": next_word_case,
    "keras-words": keras_tokenizer_case,
    "keras-words-seq": seed_case,
    "keras-textvec": text_vectorization_case,
    "keras-branching": branching_case,
}

if __name__ == "__main__":
    import sys

    assert keras.__version__.startswith("3."), keras.__version__
    chosen = sys.argv[1:] or list(CASES)  # e.g. `make_keras_golden.py keras-words`
    for case in chosen:
        CASES[case]()
    for case in chosen:
        print(case, sorted((f.name, f.stat().st_size) for f in (OUT / case).iterdir()))
