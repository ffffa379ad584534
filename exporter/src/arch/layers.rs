//! Building blocks shared by the transformer architectures: dense layers and LayerNorm.
//!
//! They hold checkpoint weights under the checkpoint's own names and emit their ONNX nodes; dense
//! layers go through [`crate::quant::linear`], so every scheme applies to them uniformly.

use crate::checkpoint::{Checkpoint, transpose};
use crate::error::Result;
use crate::onnx::{Attr, GraphBuilder};
use crate::quant::{self, Linear, QuantScheme};

/// A dense layer in PyTorch's `[out, inp]` layout (Conv1D weights are transposed at load).
#[derive(Debug)]
pub(crate) struct Dense {
    name: String,
    weight: Vec<f32>,
    bias: Vec<f32>,
    out: usize,
    inp: usize,
}

impl Dense {
    /// Reads a PyTorch `nn.Linear` (`[out, inp]` weight).
    pub(crate) fn linear(ckpt: &Checkpoint, name: &str, out: usize, inp: usize) -> Result<Dense> {
        Ok(Dense {
            name: name.into(),
            weight: ckpt.tensor(&format!("{name}.weight"), &[out, inp])?,
            bias: ckpt.tensor(&format!("{name}.bias"), &[out])?,
            out,
            inp,
        })
    }
    /// Reads a Conv1D (`[inp, out]` weight) and turns it into `[out, inp]`.
    pub(crate) fn conv1d(ckpt: &Checkpoint, name: &str, inp: usize, out: usize) -> Result<Dense> {
        let w = ckpt.tensor(&format!("{name}.weight"), &[inp, out])?;
        Ok(Dense {
            name: name.into(),
            weight: transpose(&w, inp, out),
            bias: ckpt.tensor(&format!("{name}.bias"), &[out])?,
            out,
            inp,
        })
    }

    pub(crate) fn apply(&self, g: &mut GraphBuilder, scheme: QuantScheme, x: &str) -> Result<String> {
        let layer = Linear {
            name: &self.name,
            weight: &self.weight,
            out: self.out,
            inp: self.inp,
            bias: Some(&self.bias),
        };
        quant::linear(g, scheme, x, &layer)
    }
}

#[derive(Debug)]
pub(crate) struct Norm {
    name: String,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    pub(crate) fn load(ckpt: &Checkpoint, name: &str, d: usize) -> Result<Norm> {
        Ok(Norm {
            name: name.into(),
            weight: ckpt.tensor(&format!("{name}.weight"), &[d])?,
            bias: ckpt.tensor(&format!("{name}.bias"), &[d])?,
        })
    }

    /// LayerNorm stays f32 under every scheme: it is tiny and sensitive.
    pub(crate) fn apply(&self, g: &mut GraphBuilder, x: &str, eps: f32) -> String {
        let w = g.init_f32(&format!("{}.weight", self.name), &[self.weight.len()], &self.weight);
        let b = g.init_f32(&format!("{}.bias", self.name), &[self.bias.len()], &self.bias);
        g.op("LayerNormalization", &[x, &w, &b], vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))])
    }
}
