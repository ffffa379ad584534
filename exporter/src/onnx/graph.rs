//! Nodes, initializers and typed graph inputs/outputs, collected in the order they are added.

use std::sync::Arc;

use crate::quant::gptq::{Hessian, Hessians};
use tract_onnx::pb;

/// The default-domain opset every exported file imports.
pub const OPSET: i64 = 17;
/// The com.microsoft opset imported when `MatMulNBits` is used.
pub const OPSET_MS: i64 = 1;
/// IR version 8 goes with opset 17; newer IRs are refused by tract 0.23.
pub const IR_VERSION: i64 = 8;

/// ONNX element types the exporter writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// `FLOAT`.
    F32,
    /// `FLOAT16`.
    F16,
    /// `INT64`.
    I64,
    /// `INT32`.
    I32,
    /// `UINT8`.
    U8,
    /// `INT8`.
    I8,
    /// `BOOL`.
    Bool,
}

impl ElemType {
    /// The `TensorProto.DataType` code.
    pub fn code(self) -> i32 {
        match self {
            ElemType::F32 => 1,
            ElemType::U8 => 2,
            ElemType::I8 => 3,
            ElemType::I32 => 6,
            ElemType::I64 => 7,
            ElemType::Bool => 9,
            ElemType::F16 => 10,
        }
    }
}

/// One dimension of a declared input/output shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size (`batch`, `sequence`), resolved at run time.
    Sym(&'static str),
}

/// A node attribute value.
#[derive(Debug, Clone)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `FLOAT`.
    Float(f32),
    /// `STRING`.
    Str(String),
}

/// An initializer's data, kept as little-endian bytes until the file is written.
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Collects an ONNX graph. Names of intermediate values are generated (`{hint}_{n}`) so that
/// architectures only name what a reader of the file cares about: inputs, outputs, weights.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    pub(crate) nodes: Vec<pb::NodeProto>,
    pub(crate) initializers: Vec<Initializer>,
    pub(crate) inputs: Vec<pb::ValueInfoProto>,
    pub(crate) outputs: Vec<pb::ValueInfoProto>,
    pub(crate) uses_ms_domain: bool,
    counter: usize,
    /// Under [`GraphBuilder::tapping`]: (layer name, value) of every dense layer's input.
    taps: Option<Vec<(String, String, usize)>>,
    /// Calibration statistics that int8 layers round their weights with (GPTQ).
    hessians: Option<Arc<Hessians>>,
    /// The GPTQ stage's progress, advanced once per layer rounded.
    gptq_progress: Option<crate::progress::Stage>,
    /// int8 activations as two uint8 digits (16 bits) instead of one code: see
    /// [`GraphBuilder::set_int8_activation_digits`].
    int8_digits: bool,
    /// An int8 LM head on llama.cpp's Q8_0 grid is stored as a pair: see
    /// [`GraphBuilder::set_int8_head_pairs`].
    int8_head_pairs: bool,
    /// int8 keeps weights already on a 4-bit grid as q4 blocks: see
    /// [`GraphBuilder::set_keep_4bit_codes`].
    keep_4bit_codes: bool,
    /// q4 layers let the runtime quantise their activations to 8 bits: see
    /// [`GraphBuilder::set_q4_int8_activations`].
    q4_int8_activations: bool,
}

fn value_info(name: &str, elem: ElemType, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Sym(s) => Value::DimParam((*s).to_string()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem.code(),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, value: Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    let mut a = pb::AttributeProto { name: name.to_string(), ..Default::default() };
    match value {
        Attr::Int(i) => {
            a.i = i;
            a.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(v) => {
            a.ints = v;
            a.r#type = AttributeType::Ints as i32;
        }
        Attr::Float(f) => {
            a.f = f;
            a.r#type = AttributeType::Float as i32;
        }
        Attr::Str(s) => {
            a.s = s.into_bytes();
            a.r#type = AttributeType::String as i32;
        }
    }
    a
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty graph that records the input of every dense layer built into it
    /// ([`GraphBuilder::tap`]), for calibration: [`GraphBuilder::expose_taps`] makes them outputs.
    pub fn tapping() -> Self {
        GraphBuilder { taps: Some(Vec::new()), ..Self::default() }
    }

    /// An empty graph whose int8 layers round their weights with GPTQ under `hessians`
    /// (layers without one round to nearest).
    pub fn with_hessians(hessians: Arc<Hessians>) -> Self {
        let stage = crate::progress::Stage::new("GPTQ", hessians.layers.len() as u64, "layers");
        GraphBuilder { hessians: Some(hessians), gptq_progress: Some(stage), ..Self::default() }
    }

    /// Records one more layer rounded with GPTQ.
    pub(crate) fn gptq_layer_done(&self) {
        if let Some(stage) = &self.gptq_progress {
            stage.inc(1);
        }
    }

    /// Ends the GPTQ stage's progress (a graph built without calibration has none).
    pub fn finish_progress(&self) {
        if let Some(stage) = &self.gptq_progress {
            stage.finish();
        }
    }

    /// Records `x` (`[..., features]`) as the input of dense layer `layer` (under
    /// [`GraphBuilder::tapping`] only).
    pub fn tap(&mut self, layer: &str, x: &str, features: usize) {
        if let Some(taps) = &mut self.taps {
            taps.push((layer.to_string(), x.to_string(), features));
        }
    }

    /// Makes int8 dense layers built from here on quantise each activation row to 16 bits, as two
    /// uint8 digits multiplied by one `MatMulInteger` (twice the integer work; exporter/src/quant/
    /// int8.rs, `ferrite export --activation-bits 16`): 8-bit activations cap the shipped GPT's
    /// top-1 agreement with fp32 at ~98.4 % whatever the weights (models/shakespeare-gpt/README.md).
    pub fn set_int8_activation_digits(&mut self, on: bool) {
        self.int8_digits = on;
    }

    /// Stores an int8 LM head whose weights are on llama.cpp's Q8_0 grid as an int8 pair (its
    /// codes and their residual's, `crate::quant::int8::StoredPair`) rather than one int8 layer
    /// (`ferrite export --q8-head`; by default under int8, not under q4).
    pub fn set_int8_head_pairs(&mut self, on: bool) {
        self.int8_head_pairs = on;
    }

    /// Under int8, stores a dense layer whose weights are exactly on llama.cpp's Q4_0 or Q4_1
    /// grid (a GGUF 4-bit tensor) as q4 blocks with its own codes instead of requantising it
    /// per row (`crate::quant::keeps_4bit_codes`; on unless `ferrite export --requantize-4bit`).
    pub fn set_keep_4bit_codes(&mut self, on: bool) {
        self.keep_4bit_codes = on;
    }

    /// Marks q4 layers (`MatMulNBits`) `accuracy_level = 4`: the runtime may quantise their
    /// activations to int8 per block of 32 — ONNX Runtime's fast path, and 8-bit instead of
    /// 16-bit codes in tract's fused q4 kernel (runtime/src/kernels/matmul_q4.rs). Set by
    /// `ferrite export --quant q4 --activation-bits 8`.
    pub fn set_q4_int8_activations(&mut self, on: bool) {
        self.q4_int8_activations = on;
    }

    /// Whether q4 layers allow int8 activations (see [`GraphBuilder::set_q4_int8_activations`]).
    pub fn q4_int8_activations(&self) -> bool {
        self.q4_int8_activations
    }

    /// Whether int8 keeps 4-bit codes (see [`GraphBuilder::set_keep_4bit_codes`]).
    pub fn keep_4bit_codes(&self) -> bool {
        self.keep_4bit_codes
    }

    /// Whether Q8_0 heads become int8 pairs (see [`GraphBuilder::set_int8_head_pairs`]).
    pub fn int8_head_pairs(&self) -> bool {
        self.int8_head_pairs
    }

    /// Whether int8 activations are two digits (see [`GraphBuilder::set_int8_activation_digits`]).
    pub fn int8_activation_digits(&self) -> bool {
        self.int8_digits
    }

    /// The calibration statistics of `layer`'s input, if this graph has them.
    pub fn hessian(&self, layer: &str) -> Option<&Hessian> {
        self.hessians.as_ref().and_then(|h| h.layers.get(layer))
    }

    /// Declares every tapped value as an f32 output `[batch, sequence, features]`; returns
    /// (output name, layer names reading it, features). Layers that read the same value share
    /// one output (BERT's query, key and value projections).
    pub fn expose_taps(&mut self) -> Vec<(String, Vec<String>, usize)> {
        let taps = self.taps.take().unwrap_or_default();
        let mut exposed: Vec<(String, String, Vec<String>, usize)> = Vec::new();
        for (layer, value, features) in taps {
            if let Some(e) = exposed.iter_mut().find(|e| e.0 == value) {
                e.2.push(layer);
                continue;
            }
            let name = format!("ferrite.calibration.{layer}");
            exposed.push((value, name, vec![layer], features));
        }
        for (value, name, _, k) in &exposed {
            self.output(
                value,
                name,
                ElemType::F32,
                &[Dim::Sym("batch"), Dim::Sym("sequence"), Dim::Fixed(*k)],
            );
        }
        exposed.into_iter().map(|(_, name, layers, k)| (name, layers, k)).collect()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Declares a graph input and returns its name.
    pub fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares graph output `name` for value `from` (so that architectures can build values
    /// freely and name the interface at the end). The node producing `from` is renamed to write
    /// `name` directly, and so are the nodes reading it: an `Identity` in front of a graph output
    /// is a full copy per run in ONNX Runtime — for a KV cache, one more copy of the whole cache
    /// per layer and decode step (ONNX Runtime Python, fp32 GPT: the step at position 200 takes
    /// 1.38× the step at position 10 with it, 1.26× without). An `Identity` remains only where
    /// `from` is not produced by a node (a graph input or an initializer) or already is an output.
    pub fn output(&mut self, from: &str, name: &str, elem: ElemType, dims: &[Dim]) {
        let produced = self.nodes.iter().any(|n| n.output.iter().any(|o| o == from));
        let exposed = self.outputs.iter().any(|o| o.name == from);
        if from != name && produced && !exposed {
            for node in &mut self.nodes {
                for value in node.input.iter_mut().chain(node.output.iter_mut()) {
                    if value == from {
                        *value = name.to_string();
                    }
                }
            }
        } else if from != name {
            self.push_node("Identity", "", &[from], &[name.to_string()], Vec::new());
        }
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Adds an initializer from raw little-endian bytes and returns its name.
    pub fn init_bytes(&mut self, name: &str, elem: ElemType, dims: &[usize], bytes: Vec<u8>) -> String {
        self.initializers.push(Initializer { name: name.to_string(), elem, dims: dims.to_vec(), bytes });
        name.to_string()
    }

    /// Adds an f32 initializer.
    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_bytes(name, ElemType::F32, dims, bytes)
    }

    /// Adds an i64 initializer.
    pub fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_bytes(name, ElemType::I64, dims, bytes)
    }

    /// A small i64 constant (shapes, axes) with a generated name.
    pub fn const_i64(&mut self, data: &[i64]) -> String {
        let name = self.fresh("const_i64");
        self.init_i64(&name, &[data.len()], data)
    }

    /// An i64 scalar constant.
    pub fn scalar_i64(&mut self, v: i64) -> String {
        let name = self.fresh("scalar_i64");
        self.init_i64(&name, &[], &[v])
    }

    /// An f32 scalar constant.
    pub fn scalar_f32(&mut self, v: f32) -> String {
        let name = self.fresh("scalar_f32");
        self.init_f32(&name, &[], &[v])
    }

    fn push_node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[String],
        attrs: Vec<(&str, Attr)>,
    ) {
        let name = self.fresh(&format!("{op}_node"));
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name,
            op_type: op.to_string(),
            domain: domain.to_string(),
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
    }

    /// Adds a default-domain node with one output and returns the output's name.
    /// An empty string in `inputs` marks an omitted optional input.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.op_n(op, inputs, 1, attrs).remove(0)
    }

    /// Adds a default-domain node with `n` outputs.
    pub fn op_n(&mut self, op: &str, inputs: &[&str], n: usize, attrs: Vec<(&str, Attr)>) -> Vec<String> {
        let outputs: Vec<String> = (0..n).map(|_| self.fresh(&op.to_lowercase())).collect();
        self.push_node(op, "", inputs, &outputs, attrs);
        outputs
    }

    /// Adds a `com.microsoft` node with one output (only `MatMulNBits` is used).
    pub fn op_ms(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.uses_ms_domain = true;
        let out = self.fresh(&op.to_lowercase());
        self.push_node(op, "com.microsoft", inputs, std::slice::from_ref(&out), attrs);
        out
    }

    /// Total bytes of initializer data.
    pub fn weight_bytes(&self) -> usize {
        self.initializers.iter().map(|i| i.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output names the value its producer writes (no copying `Identity`); readers of the value
    /// follow the rename; a graph input exposed as an output keeps its `Identity`.
    #[test]
    fn outputs_rename_their_producer() {
        let mut g = GraphBuilder::new();
        let x = g.input("x", ElemType::F32, &[Dim::Fixed(2)]);
        let y = g.op("Relu", &[&x], Vec::new());
        let z = g.op("Neg", &[&y], Vec::new());
        g.output(&y, "relu_out", ElemType::F32, &[Dim::Fixed(2)]);
        g.output(&z, "neg_out", ElemType::F32, &[Dim::Fixed(2)]);
        g.output(&x, "x_out", ElemType::F32, &[Dim::Fixed(2)]);
        g.output("relu_out", "relu_again", ElemType::F32, &[Dim::Fixed(2)]);
        let ops: Vec<(&str, &[String], &[String])> =
            g.nodes.iter().map(|n| (n.op_type.as_str(), &n.input[..], &n.output[..])).collect();
        assert_eq!(ops[0], ("Relu", &["x".to_string()][..], &["relu_out".to_string()][..]));
        assert_eq!(ops[1], ("Neg", &["relu_out".to_string()][..], &["neg_out".to_string()][..]));
        assert_eq!(ops[2], ("Identity", &["x".to_string()][..], &["x_out".to_string()][..]));
        assert_eq!(ops[3], ("Identity", &["relu_out".to_string()][..], &["relu_again".to_string()][..]));
        assert_eq!(ops.len(), 4);
    }
}
