#!/usr/bin/env python3
"""Writes the `c_api` target's seeds (fuzz/seeds/c_api/): call programs encoded the way
fuzz_targets/c_api.rs decodes its input with `arbitrary::Unstructured` (int_in_range reads the
bytes its range needs, big-endian, modulo the range; `ratio(n, d)` is int_in_range(1..=d) <= n;
integers from `arbitrary()` are little-endian). Each method below consumes exactly what the
matching Rust function does on the path the seed takes, so keep them in step with the target.

    python3 fuzz/make_c_api_seeds.py
"""
from pathlib import Path

OUT = Path(__file__).resolve().parent / "seeds" / "c_api"
LSTM_VOCAB, GPT_VOCAB = 84, 4096
MAX_FRESH_OPENS = 1
OPS = {"open_bundle": 0, "destroy_bundle": 1, "bundle_info": 2, "tokenize": 3, "gen_create": 4,
       "destroy_gen": 5, "feed_text": 6, "feed_ids": 7, "next": 8, "generate": 10,
       "generated_ids": 12, "reset": 13, "emb_create": 14, "destroy_emb": 15, "embed": 16,
       "open_model": 17, "destroy_model": 18, "model_io": 19, "sess_create": 20,
       "destroy_sess": 21, "sess_run": 22, "misc": 23}


class Program:
    def __init__(self):
        self.b = bytearray()
        self.fresh_opens = 0

    # --- Unstructured primitives
    def rng(self, lo, hi, v):
        assert lo <= v <= hi
        delta, n = hi - lo, 0
        while n < 8 and delta >> (8 * n):
            n += 1
        self.b += (v - lo).to_bytes(n, "big")

    def ratio(self, num, den, want):
        self.rng(1, den, 1 if want else den)

    def le(self, v, n):
        self.b += (v % (1 << (8 * n))).to_bytes(n, "little")

    def text(self, mx, s):
        s = s.encode() if isinstance(s, str) else s
        self.rng(0, mx, len(s))
        self.b += s

    def op(self, name):
        self.rng(0, 23, OPS[name])

    def slot(self, i):
        self.rng(0, 3, i)

    def struct_size_ok(self):
        self.rng(0, 9, 9)

    def ids(self, mx, ids, vocab):
        self.rng(0, mx, len(ids))
        for i in ids:
            self.rng(0, 15, 15)
            self.rng(0, vocab - 1, i)

    def cap_max(self):
        self.rng(0, 4, 4)

    # --- calls
    def open_bundle(self, slot, kind, fresh=False, threads=None):
        self.op("open_bundle"), self.slot(slot), self.rng(0, 7, kind)
        can = kind < 3 and self.fresh_opens < MAX_FRESH_OPENS
        if can:
            self.ratio(1, 32, fresh)
        if kind < 3 and not (can and fresh):
            return
        self.fresh_opens += kind < 3
        self.open_params(threads)
        self.ratio(1, 16, False), self.ratio(1, 16, False)  # null path, null out

    def open_params(self, threads):
        self.text(16, "")  # ort_library
        self.ratio(1, 2, threads is not None)
        if threads is not None:
            self.rng(0, 5, 5)  # tract
            self.rng(0, 7, {0: 0, 2: 1, 3: 2, 257: 3}.get(threads, 7))
            self.le(1, 4), self.le(1, 4)  # verify_hashes, ort_prepacking
            self.ratio(1, 4, False)
        self.struct_size_ok(), self.ratio(1, 8, False)

    def destroy(self, what, slot, again=True):
        self.op(what), self.slot(slot), self.ratio(1, 2, again)

    def bundle_info(self, slot):
        self.op("bundle_info"), self.slot(slot), self.struct_size_ok(), self.ratio(1, 8, False)

    def tokenize(self, slot, text):
        self.op("tokenize"), self.slot(slot), self.text(96, text), self.rng(0, 4, 4)
        self.ratio(1, 32, False), self.ratio(1, 32, False)

    def gen_create(self, bundle, gen):
        self.op("gen_create"), self.slot(bundle), self.slot(gen)
        self.ratio(1, 2, False), self.struct_size_ok(), self.ratio(1, 8, False), self.ratio(1, 32, False)

    def feed_text(self, gen, text):
        self.op("feed_text"), self.slot(gen), self.text(64, text), self.ratio(1, 32, False)

    def feed_ids(self, gen, ids, vocab):
        self.op("feed_ids"), self.slot(gen), self.ids(48, ids, vocab)

    def next(self, gen, small=False):
        self.op("next"), self.slot(gen)
        if small:
            self.rng(0, 4, 0)  # capacity 0
        else:
            self.cap_max()
        self.ratio(1, 8, False), self.ratio(1, 32, False), self.ratio(1, 8, False)

    def generate(self, gen, prompt, max_tokens, repeat=False, stops=(), ids=None, vocab=LSTM_VOCAB):
        self.op("generate"), self.slot(gen)
        self.le(0 if ids is not None else 1, 1)  # use_text
        self.text(48, prompt)
        self.ids(24, ids or [], vocab)
        if stops:
            self.rng(0, 7, 1), self.rng(1, 3, len(stops))
            for s in stops:
                self.ratio(1, 16, False), self.text(6, s)
        else:
            self.rng(0, 7, 7)
        self.rng(0, 9, max_tokens)
        self.le(1, 4)  # stop_at_eos
        self.struct_size_ok()
        self.ratio(1, 16, False)  # params not NULL
        self.rng(0, 7, 7)  # result struct_size right
        self.ratio(1, 8, False), self.ratio(3, 4, True), self.rng(1, 10, 10)
        self.ratio(1, 4, repeat)

    def generated_ids(self, gen):
        self.op("generated_ids"), self.slot(gen), self.cap_max(), self.ratio(1, 16, False)

    def reset(self, gen):
        self.op("reset"), self.slot(gen)

    def emb_create(self, bundle, emb):
        self.op("emb_create"), self.slot(bundle), self.slot(emb), self.ratio(1, 32, False)

    def embed(self, emb, texts):
        self.op("embed"), self.slot(emb), self.ratio(1, 16, False)
        assert 1 <= len(texts) <= 4
        self.rng(0, 15, 4 + len(texts) - 1)
        for t in texts:
            self.text(40, t)
        self.cap_max(), self.ratio(1, 16, False), self.ratio(1, 32, False)

    def open_model(self, slot, kind, fresh=False):
        self.op("open_model"), self.slot(slot), self.rng(0, 7, kind)
        can = kind < 4 and self.fresh_opens < MAX_FRESH_OPENS
        if can:
            self.ratio(1, 16, fresh)
        if kind < 4 and not (can and fresh):
            return
        self.fresh_opens += kind < 4
        self.open_params(None)

    def model_io(self, slot, is_output, index):
        self.op("model_io"), self.slot(slot), self.ratio(1, 4, False), self.ratio(1, 4, False)
        self.le(is_output, 4), self.rng(0, 7, index + 1), self.struct_size_ok(), self.ratio(1, 8, False)

    def sess_create(self, model, sess):
        self.op("sess_create"), self.slot(model), self.slot(sess), self.ratio(1, 32, False)

    def sess_run(self, sess, inputs, n_outputs, fill=b"\x00\x00\x80\x3f"):
        """`inputs`: (bytes, dims) of each model input as declared (None: a symbolic dim, 2)."""
        self.op("sess_run"), self.slot(sess), self.text(12, "nope")
        if inputs is None:  # no inputs, no outputs, both arrays NULL
            self.rng(0, 7, 0), self.rng(0, 7, 0), self.ratio(1, 2, True), self.ratio(1, 2, True)
            return
        self.rng(0, 7, 7)  # every declared input
        for nbytes, dims in inputs:
            self.rng(0, 11, 11), self.rng(0, 9, 9), self.rng(0, 7, 7)  # name, dtype, rank as declared
            for d in dims:
                if d is None:  # symbolic: 1..=4
                    self.rng(0, 15, 15), self.rng(1, 4, 2)
                else:
                    self.rng(0, 15, 15)
            self.ratio(7, 8, True)  # exact byte_size
            if nbytes == 0:
                self.ratio(1, 2, False)
            self.rng(0, 64, len(fill)), self.b.extend(fill)
            self.ratio(1, 16, False)  # aligned
        self.rng(0, 7, 7)  # every output
        for _ in range(n_outputs):
            self.rng(0, 11, 11), self.rng(0, 9, 9), self.cap_max(), self.ratio(1, 16, False)

    def misc(self, code, slot=0):
        self.op("misc"), self.le(code, 4), self.slot(slot)


def seeds():
    p = Program()  # LSTM: feed, next, generate (repeated), ids, reset, destroy then use
    p.open_bundle(0, 0)
    p.gen_create(0, 0)
    p.feed_text(0, "ROMEO:")
    p.next(0), p.next(0, small=True), p.next(0)
    p.generate(0, "To be", 8, repeat=True)
    p.generated_ids(0)
    p.reset(0)
    p.feed_ids(0, [1, 2, 3, 83], LSTM_VOCAB)
    p.next(0)
    p.destroy("destroy_gen", 0)
    p.feed_text(0, "after destroy")
    p.misc(19)
    yield "lstm-generate", p

    p = Program()  # GPT-2: generate with a stop string, continue, tokenize, info
    p.open_bundle(1, 1)
    p.gen_create(1, 2)
    p.generate(2, "KING RICHARD", 6, stops=["\n"])
    p.feed_text(2, " the")
    p.next(2), p.next(2)
    p.tokenize(1, b"Now is the winter of our discontent \xff")
    p.bundle_info(1)
    p.generate(2, "", 3, ids=[10, 200, 4095], vocab=GPT_VOCAB)
    yield "gpt2-generate", p

    p = Program()  # BERT: embed, forget the bundle, embed again; an LM call on it fails
    p.open_bundle(2, 2)
    p.emb_create(2, 1)
    p.embed(1, ["hello world", "a b c"])
    p.destroy("destroy_bundle", 2)
    p.embed(1, ["after the bundle"])
    p.open_bundle(0, 2)
    p.gen_create(0, 0)
    p.emb_create(0, 3)
    p.tokenize(0, "hello")
    yield "bert-embed", p

    p = Program()  # raw LSTM model: io, session, run, destroy the model, run again
    p.open_model(0, 0)
    p.model_io(0, 0, 0), p.model_io(0, 1, 2)
    p.sess_create(0, 1)
    p.sess_run(1, [(5 * 2 * 8 * 4, [5, 2, 8]), (32 * 4, [1, 2, 16]), (32 * 4, [1, 2, 16])], 3)
    p.destroy("destroy_model", 0)
    p.sess_run(1, [(5 * 2 * 8 * 4, [5, 2, 8]), (32 * 4, [1, 2, 16]), (32 * 4, [1, 2, 16])], 3)
    p.open_model(2, 1)
    p.sess_create(2, 2)
    p.sess_run(2, [(2 * 32 * 4, [None, 32])], 1)
    p.open_model(3, 4)  # unknown op
    yield "model-session", p

    p = Program()  # fresh opens: a real bundle with 2 threads, destroyed under its generator
    p.open_bundle(3, 0, fresh=True, threads=2)
    p.gen_create(3, 1)
    p.destroy("destroy_bundle", 3)
    p.generate(1, "O", 4)
    p.open_bundle(3, 3)  # missing
    p.open_bundle(3, 7)  # not UTF-8
    p.open_bundle(2, 4)  # a model directory, not a bundle
    p.open_model(1, 2)  # from the cache: the one fresh open was the bundle's
    p.destroy("destroy_model", 1)
    yield "fresh-open-destroy", p

    p = Program()  # a fresh raw model, destroyed under its session
    p.open_model(0, 1, fresh=True)
    p.sess_create(0, 0)
    p.destroy("destroy_model", 0)
    p.sess_run(0, [(3 * 32 * 4, [None, 32])], 1)
    yield "fresh-model-destroy", p

    p = Program()  # every call on empty slots (NULL handles)
    for name in ["feed_text", "next", "generated_ids", "reset"]:
        getattr(p, name)(3, *(["x"] if name == "feed_text" else []))
    p.tokenize(3, "x"), p.bundle_info(3), p.embed(3, ["x"]), p.model_io(3, 0, 0)
    p.sess_run(3, None, 0)
    p.misc(-1, 3), p.misc(7, 2)
    yield "null-handles", p


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, p in seeds():
        (OUT / name).write_bytes(bytes(p.b))
        print(f"{name}: {len(p.b)} bytes")


if __name__ == "__main__":
    main()
