"""PyTorch CPU training throughput on the same architectures, batch, context and threads as a
`ferrite train` run, for scripts/bench-train-peers.sh (dev venv with torch + transformers).

    .venv-dev/bin/python scripts/bench_train_torch.py --arch lstm --vocab 65 --batch 32 --context 128 \
        --layers 2 --embed 64 --hidden 256 --threads 1 --steps 30

Each step is what ferrite's trainer does: forward, cross-entropy, backward, global-norm clipping
to 1.0, AdamW. Batches are random ids (the cost of a step does not depend on the data). Prints
one JSON object with the median tokens/s over the measured steps (after 3 warm-up steps).
"""

import argparse
import json
import statistics
import time

import torch


class LstmLM(torch.nn.Module):
    def __init__(self, v, e, h, layers):
        super().__init__()
        self.embedding = torch.nn.Embedding(v, e)
        self.lstm = torch.nn.LSTM(e, h, num_layers=layers, batch_first=True)
        self.head = torch.nn.Linear(h, v)

    def forward(self, ids):
        return self.head(self.lstm(self.embedding(ids))[0])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["lstm", "gpt2"], required=True)
    p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.arch == "lstm":
        model = LstmLM(a.vocab, a.embed, a.hidden, a.layers)
        forward = model
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=a.vocab, n_positions=a.context, n_embd=a.d_model, n_layer=a.layers,
                         n_head=a.heads, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, tie_word_embeddings=True)
        model = GPT2LMHeadModel(cfg)
        forward = lambda x: model(x).logits  # noqa: E731
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    rates = []
    for step in range(a.steps + 3):
        x = torch.randint(0, a.vocab, (a.batch, a.context))
        y = torch.randint(0, a.vocab, (a.batch, a.context))
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(forward(x).reshape(-1, a.vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= 3:
            rates.append(a.batch * a.context / (time.perf_counter() - t))
    print(json.dumps({"runner": f"pytorch {torch.__version__}", "arch": a.arch, "threads": a.threads,
                      "tokens_per_s": statistics.median(rates)}))


if __name__ == "__main__":
    main()
