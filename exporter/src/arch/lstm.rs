//! ferrite's LSTM language model: `Embedding(V,E) → LSTM(E,H,L, batch_first) → Linear(H,V)`,
//! read from PyTorch state_dict names, exported as a stateful step.
//!
//! Interface: `input_ids[B,S]` i64, `h0`/`c0` `[L,B,H]` → `logits[B,S,V]`, `hN`, `cN`, so a
//! generator feeds one token at a time and carries the state. Each layer is one ONNX `LSTM` op
//! (forward, default activations: all tract honours, and all PyTorch uses). The LSTM weights stay
//! in float under every scheme; the embedding table and the head are quantised (see `crate::quant`;
//! why not the recurrence: the exporter README).

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_runtime::Tensor;

use super::{ArchKind, Architecture, IoRole, OutputKind, read_config, sample_ids, usize_field};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::onnx::{Attr, Dim, ElemType, GraphBuilder};
use crate::quant::{self, Linear, QuantScheme};

/// One LSTM layer's weights, in PyTorch's layout and gate order (i, f, g, o). Other sources
/// (`keras.rs`) convert into this layout, so there is one graph builder for every LSTM source.
#[derive(Debug)]
pub(crate) struct Layer {
    /// `[4H, input]`.
    pub(crate) weight_ih: Vec<f32>,
    /// `[4H, H]`.
    pub(crate) weight_hh: Vec<f32>,
    /// `[4H]`.
    pub(crate) bias_ih: Vec<f32>,
    /// `[4H]`.
    pub(crate) bias_hh: Vec<f32>,
}

/// A loaded LSTM language model.
#[derive(Debug)]
pub struct Lstm {
    pub(crate) vocab: usize,
    pub(crate) embed: usize,
    pub(crate) hidden: usize,
    /// `[V, E]`.
    pub(crate) embedding: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    /// `[V, H]` (PyTorch `Linear` layout).
    pub(crate) head_weight: Vec<f32>,
    /// `[V]`.
    pub(crate) head_bias: Vec<f32>,
}

/// Reorders the four `rows`-row gate blocks of a PyTorch LSTM tensor (i, f, g, o) into ONNX's
/// order (i, o, f, c). `g` (PyTorch's cell candidate) is ONNX's `c`.
pub fn pytorch_to_onnx_gates(data: &[f32], hidden: usize) -> Vec<f32> {
    let block = data.len() / 4;
    debug_assert_eq!(block % hidden, 0);
    [0usize, 3, 1, 2].iter().flat_map(|&b| data[b * block..(b + 1) * block].iter().copied()).collect()
}

impl Lstm {
    /// Reads `config.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Lstm> {
        let cfg = read_config(dir)?;
        let vocab = usize_field(&cfg, dir, "vocab_size")?;
        let embed = usize_field(&cfg, dir, "embed_dim")?;
        let hidden = usize_field(&cfg, dir, "hidden_size")?;
        let num_layers = usize_field(&cfg, dir, "num_layers")?;
        let ckpt = Checkpoint::open(&dir.join("model.safetensors"))?;
        let embedding = ckpt.tensor("embedding.weight", &[vocab, embed])?;
        let layers = (0..num_layers)
            .map(|k| {
                let inp = if k == 0 { embed } else { hidden };
                Ok(Layer {
                    weight_ih: ckpt.tensor(&format!("lstm.weight_ih_l{k}"), &[4 * hidden, inp])?,
                    weight_hh: ckpt.tensor(&format!("lstm.weight_hh_l{k}"), &[4 * hidden, hidden])?,
                    bias_ih: ckpt.tensor(&format!("lstm.bias_ih_l{k}"), &[4 * hidden])?,
                    bias_hh: ckpt.tensor(&format!("lstm.bias_hh_l{k}"), &[4 * hidden])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head_weight = ckpt.tensor("head.weight", &[vocab, hidden])?;
        let head_bias = ckpt.tensor("head.bias", &[vocab])?;
        Ok(Lstm { vocab, embed, hidden, embedding, layers, head_weight, head_bias })
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

impl Architecture for Lstm {
    fn kind(&self) -> ArchKind {
        ArchKind::Lstm
    }

    fn build(&self, scheme: QuantScheme, mut g: GraphBuilder) -> Result<GraphBuilder> {
        let (h, l) = (self.hidden, self.num_layers());
        let ids = g.input("input_ids", ElemType::I64, &[Dim::Sym("batch"), Dim::Sym("sequence")]);
        let state_dims = [Dim::Fixed(l), Dim::Sym("batch"), Dim::Fixed(h)];
        let h0 = g.input("h0", ElemType::F32, &state_dims);
        let c0 = g.input("c0", ElemType::F32, &state_dims);

        let x = quant::embedding(
            &mut g,
            scheme,
            "embedding.weight",
            [self.vocab, self.embed],
            &self.embedding,
            &ids,
        );
        // ONNX LSTM's default layout is sequence-major; tract reads `layout` but the explicit
        // transpose keeps the graph independent of that attribute's support.
        let mut x = g.op("Transpose", &[&x], vec![("perm", Attr::Ints(vec![1, 0, 2]))]);
        let axis0 = g.const_i64(&[0]);
        let axis1 = g.const_i64(&[1]);
        let (mut hs, mut cs) = (Vec::new(), Vec::new());
        for (k, layer) in self.layers.iter().enumerate() {
            let inp = if k == 0 { self.embed } else { h };
            let start = g.const_i64(&[k as i64]);
            let end = g.const_i64(&[k as i64 + 1]);
            let hk = g.op("Slice", &[&h0, &start, &end, &axis0], vec![]);
            let ck = g.op("Slice", &[&c0, &start, &end, &axis0], vec![]);
            let w = pytorch_to_onnx_gates(&layer.weight_ih, h);
            let r = pytorch_to_onnx_gates(&layer.weight_hh, h);
            let mut b = pytorch_to_onnx_gates(&layer.bias_ih, h);
            b.extend(pytorch_to_onnx_gates(&layer.bias_hh, h));
            let w = quant::recurrent_weight(&mut g, scheme, &format!("lstm.l{k}.W"), [1, 4 * h, inp], &w);
            let r = quant::recurrent_weight(&mut g, scheme, &format!("lstm.l{k}.R"), [1, 4 * h, h], &r);
            let b = quant::float_weight(&mut g, scheme, &format!("lstm.l{k}.B"), &[1, 8 * h], &b);
            let out = g.op_n(
                "LSTM",
                &[&x, &w, &r, &b, "", &hk, &ck],
                3,
                vec![("hidden_size", Attr::Int(h as i64))],
            );
            x = g.op("Squeeze", &[&out[0], &axis1], vec![]);
            hs.push(out[1].clone());
            cs.push(out[2].clone());
        }
        let concat = |g: &mut GraphBuilder, parts: &[String]| {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            g.op("Concat", &refs, vec![("axis", Attr::Int(0))])
        };
        let hn = concat(&mut g, &hs);
        let cn = concat(&mut g, &cs);
        let y = g.op("Transpose", &[&x], vec![("perm", Attr::Ints(vec![1, 0, 2]))]);
        let head = Linear {
            name: "head",
            weight: &self.head_weight,
            out: self.vocab,
            inp: h,
            bias: Some(&self.head_bias),
        };
        let logits = quant::linear(&mut g, scheme, &y, &head)?;
        g.output(
            &logits,
            "logits",
            ElemType::F32,
            &[Dim::Sym("batch"), Dim::Sym("sequence"), Dim::Fixed(self.vocab)],
        );
        g.output(&hn, "hN", ElemType::F32, &state_dims);
        g.output(&cn, "cN", ElemType::F32, &state_dims);
        Ok(g)
    }

    fn inputs(&self) -> Vec<IoRole> {
        vec![
            IoRole::new("input_ids", "token ids", &["batch", "sequence"], "i64", OutputKind::State),
            IoRole::new(
                "h0",
                "hidden state in (zeros to start)",
                &["layers", "batch", "hidden"],
                "f32",
                OutputKind::State,
            ),
            IoRole::new(
                "c0",
                "cell state in (zeros to start)",
                &["layers", "batch", "hidden"],
                "f32",
                OutputKind::State,
            ),
        ]
    }

    fn outputs(&self) -> Vec<IoRole> {
        vec![
            IoRole::new(
                "logits",
                "next-token logits",
                &["batch", "sequence", "vocab"],
                "f32",
                OutputKind::Logits,
            ),
            IoRole::new(
                "hN",
                "hidden state out (feed back as h0)",
                &["layers", "batch", "hidden"],
                "f32",
                OutputKind::State,
            ),
            IoRole::new(
                "cN",
                "cell state out (feed back as c0)",
                &["layers", "batch", "hidden"],
                "f32",
                OutputKind::State,
            ),
        ]
    }

    fn sample_inputs(&self) -> Result<Vec<(String, Tensor)>> {
        let (b, s) = (2, 16);
        let state = vec![0f32; self.num_layers() * b * self.hidden];
        let shape = vec![self.num_layers(), b, self.hidden];
        Ok(vec![
            ("input_ids".into(), Tensor::new(vec![b, s], sample_ids(b, s, self.vocab, 17))?),
            ("h0".into(), Tensor::new(shape.clone(), state.clone())?),
            ("c0".into(), Tensor::new(shape, state)?),
        ])
    }

    fn context_length(&self) -> Option<usize> {
        None
    }

    fn special_tokens(&self) -> BTreeMap<String, i64> {
        BTreeMap::new()
    }

    fn vocab_size(&self) -> Option<usize> {
        Some(self.vocab)
    }
}
