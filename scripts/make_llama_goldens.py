"""Build the Llama-family golden cases: tiny random checkpoints and what transformers computes.

Run once in the dev venv (torch + transformers + gguf; never needed in CI):

    .venv-dev/bin/pip install torch transformers safetensors gguf
    .venv-dev/bin/python scripts/make_llama_goldens.py

Each case is a directory exporter/tests/golden/<case>/ holding the checkpoint exactly as
`save_pretrained` writes it (config.json + model.safetensors) and expected.npz:

  prompt_ids     [1, S]     a fixed prompt
  prompt_logits  [1, S, V]  transformers' logits for it (eager attention, f32)
  greedy_ids     [N]        N greedy tokens after the prompt, generated through the KV cache
  step_logits    [N, V]     the logits each greedy token was chosen from

Cases (all seeded; weights stored narrow where the case says so, computed in f32 from exactly the
stored values):

  llama    LlamaForCausalLM, 4 heads / 2 KV heads, untied head, default RoPE written in the
           `rope_parameters` layout, weights stored bf16
  qwen2    Qwen2ForCausalLM (q/k/v biases), tied head, weights stored f16
  llama3   LlamaForCausalLM with `llama3` RoPE scaling, tied head, f32 weights, config.json
           rewritten to the older `rope_theta` + `rope_scaling` layout; plus model.gguf: the same
           model as llama.cpp's converter writes it (F32 tensors, attn_q/attn_k rows permuted for
           llama.cpp's rotary layout, the llama3 scaling as a `rope_freqs` tensor)
  mistral  MistralForCausalLM with a sliding window longer than any test sequence, f32 weights
  llama-mha  LlamaForCausalLM with as many KV heads as heads (no grouping), f16 weights

Weights are drawn wider than transformers' default initialisation (and the norms and biases
away from 1 and 0), so that logits have clear margins and greedy ids are a robust check.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "exporter" / "tests" / "golden"
PROMPT_LEN = 7
STEPS = 8


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed timestamps, so re-running yields identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


def fresh(case: str) -> Path:
    d = OUT / case
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def randomise(model: torch.nn.Module, std: float) -> None:
    """Weights ~ N(0, std), norm weights ~ 1 + N(0, 0.2), biases ~ N(0, 0.2); the token table
    ~ N(0, std / 2), so that with a tied head a token's own embedding does not dominate its
    logits (which makes greedy decoding repeat one token)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                p.copy_(0.5 * std * torch.randn_like(p))
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))


def build(case: str, cls, cfg, dtype: torch.dtype, seed: int):
    """The model saved with `dtype` weights, then loaded back from those files in f32: the
    goldens are what transformers computes from exactly the files the exporter reads (a model
    cast in memory would also round its rotary `inv_freq` buffer)."""
    torch.manual_seed(seed)
    m = cls(cfg).eval()
    randomise(m, 0.15)
    d = fresh(case)
    m.to(dtype).save_pretrained(d, safe_serialization=True)
    return cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval(), d


def goldens(m, d: Path, vocab: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (1, PROMPT_LEN), generator=g)
    greedy, steps, margins = [], [], []
    with torch.no_grad():
        out = m(ids, use_cache=True)
        prompt_logits = out.logits
        past, last = out.past_key_values, out.logits[0, -1]
        for _ in range(STEPS):
            top = torch.topk(last, 2).values
            margins.append(float(top[0] - top[1]))
            nxt = int(torch.argmax(last))
            greedy.append(nxt)
            steps.append(last.clone())
            out = m(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.logits[0, -1]
    save_npz(d / "expected.npz", {
        "prompt_ids": ids.numpy().astype(np.int64),
        "prompt_logits": prompt_logits.numpy().astype(np.float32),
        "greedy_ids": np.array(greedy, dtype=np.int64),
        "step_logits": torch.stack(steps).numpy().astype(np.float32),
    })
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"{d.name}: greedy {greedy}, smallest top-1 margin {min(margins):.3f}, {size} bytes")


def llama_case() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    m, d = build("llama", LlamaForCausalLM, cfg, torch.bfloat16, 11)
    goldens(m, d, 256, 11)


def qwen2_case() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    m, d = build("qwen2", Qwen2ForCausalLM, cfg, torch.float16, 12)
    assert any(n.endswith("q_proj.bias") for n, _ in m.named_parameters())
    goldens(m, d, 256, 12)


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}


def llama3_case() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    theta = 500000.0
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      rms_norm_eps=1e-5, rope_parameters={**LLAMA3_ROPE, "rope_theta": theta},
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    m, d = build("llama3", LlamaForCausalLM, cfg, torch.float32, 19)
    # The layout of configs written before `rope_parameters` (Llama 3.x on the Hub today).
    path = d / "config.json"
    config = json.loads(path.read_text())
    del config["rope_parameters"]
    config["rope_theta"] = theta
    config["rope_scaling"] = dict(LLAMA3_ROPE)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_gguf(m, d / "model.gguf", theta)
    write_gguf(m, d / "model-q4_1.gguf", theta, quantised=True)
    goldens(m, d, 128, 19)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: HF's rotate-half rows of each head
    reordered to llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_freqs(dim: int, theta: float, p: dict) -> np.ndarray:
    """llama.cpp's `rope_freqs` tensor for llama3 scaling (the converter's arithmetic)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high = p["original_max_position_embeddings"] / p["high_freq_factor"]
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high:
            out.append(1.0)
        elif wavelen > low:
            out.append(p["factor"])
        else:
            smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"])
            out.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(m, path: Path, theta: float, quantised: bool = False) -> None:
    """The model as llama.cpp's converter writes a Llama (F32 tensors, no tokenizer); with
    `quantised`, every matrix (token table included) is Q4_1, as in llama.cpp's Q4_1 files, and
    the norms and rope_freqs stay F32."""
    import gguf

    c = m.config
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    head_dim = c.hidden_size // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("ferrite tiny llama3")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1 if quantised else gguf.LlamaFileType.ALL_F32)
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}

    def put(name: str, t: np.ndarray) -> None:
        if quantised and t.ndim == 2:
            q4_1 = gguf.GGMLQuantizationType.Q4_1
            w.add_tensor(name, gguf.quants.quantize(t, q4_1), raw_dtype=q4_1)
        else:
            w.add_tensor(name, t)

    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("rope_freqs.weight", rope_freqs(head_dim, theta, LLAMA3_ROPE))
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], heads))
        put(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], kv))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    # Tied head: no `output.weight` (llama.cpp then reads token_embd).
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def mistral_case() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        rms_norm_eps=1e-5, sliding_window=64, tie_word_embeddings=False,
                        bos_token_id=1, eos_token_id=2)
    m, d = build("mistral", MistralForCausalLM, cfg, torch.float32, 14)
    goldens(m, d, 128, 14)


def llama_mha_case() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    m, d = build("llama-mha", LlamaForCausalLM, cfg, torch.float16, 18)
    goldens(m, d, 128, 18)


if __name__ == "__main__":
    llama_case()
    qwen2_case()
    llama3_case()
    mistral_case()
    llama_mha_case()
