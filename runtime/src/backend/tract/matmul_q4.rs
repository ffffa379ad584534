//! 4-bit block matmuls on tract with the weights held once, as the file stores them.
//!
//! The exporter's q4 layers are `com.microsoft.MatMulNBits(x, codes, Cast(scales f16 → f32))`
//! (exporter/src/quant/q4.rs), and a layer whose blocks came from a GGUF Q4_1 tensor adds its
//! per-block offsets through standard nodes: `Add(y, MatMul(ReduceSum(Reshape(x, [.., K/32,
//! 32])), Transpose(Cast(mins) + 8·Reshape(scales))))`. tract 0.23 runs `MatMulNBits` by
//! unpacking the codes into its own Q4_0 block storage (a transient byte per weight while
//! loading, then a second, packed copy), folds the offsets into an f32 `[K/32, N]` matrix, and
//! evaluates the six offset nodes one by one at every step.
//!
//! [`fuse_q4_matmuls`] rewrites the in-memory protobuf (the file, and what ONNX Runtime sees,
//! are unchanged) so each such layer is one `FerriteMatMulQ4(x, codes, scales f16[, mins f16])`
//! node. Its op ([`MatMulQ4`]) keeps the three initializers tract loaded, as they are — codes,
//! f16 scales, f16 minimums: no other copy of the weights — and multiplies with
//! `kernels::matmul_q4`, which reads the packed codes in place. The arithmetic is the
//! definition, `Σ x·(d·q + c)` in f32, not bit-identical to tract's kernels (different
//! summation order: agreement is tested to f32 rounding, tests/fused_int8.rs).
//!
//! A `MatMulNBits` that is not exactly the exporter's (other bits, block size, zero points,
//! bias, scales not a Cast of an f16 initializer) is left to tract; the offset subgraph is
//! absorbed only when every node of it matches, otherwise the bare `MatMulNBits` is fused and
//! the offset nodes stay.

use std::fmt;
use std::sync::Arc;

use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, attribute_proto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{Expansion, Solver, TensorProxy, check_output_arity};

use super::fuse::owned;
use crate::kernels::matmul_q4::{self, ActivationBits, BLOCK, Prepared, Q4Weights};
use crate::rewrite::graph::{GraphIndex, fusable_graph, int_attr, int_values, ints_attr, remove_dead_nodes};
use crate::rewrite::int8_pattern::DOMAIN;

/// Op type of the fused node (registered in tract's ONNX op registry only).
pub(crate) const MATMUL_Q4: &str = "FerriteMatMulQ4";

/// ONNX `TensorProto.DataType` codes.
const ONNX_UINT8: i32 = 2;
const ONNX_FLOAT16: i32 = 10;
const ONNX_FLOAT: i64 = 1;

/// Rewrites every exporter-written q4 layer of a ferrite file into one [`MATMUL_Q4`] node;
/// returns (layers fused, of which with their Q4_1 offsets absorbed).
pub(crate) fn fuse_q4_matmuls(model: &mut ModelProto) -> (usize, usize) {
    let Some(graph) = fusable_graph(model) else { return (0, 0) };
    let index = GraphIndex::new(graph);
    let mut replacements: Vec<(usize, NodeProto)> = Vec::new();
    let mut with_offsets = 0;
    for at in 0..graph.node.len() {
        let Some(layer) = match_layer(&index, graph, at) else { continue };
        let (place, output, mins) = match match_offsets(&index, graph, &layer) {
            Some(offsets) => {
                with_offsets += 1;
                (offsets.add, offsets.output, Some(offsets.mins))
            }
            None => (at, layer.output.clone(), None),
        };
        let mut input = vec![layer.x.clone(), layer.codes.clone(), layer.scales.clone()];
        input.extend(mins);
        let mut attribute: Vec<_> =
            graph.node[at].attribute.iter().filter(|a| a.name == "K" || a.name == "N").cloned().collect();
        // ONNX Runtime's `accuracy_level` 4 lets it quantise the activations to int8; anything
        // else asks for f32-like activations, which 16-bit codes are (kernels/matmul_q4.rs).
        let bits = if int_attr(&graph.node[at], "accuracy_level") == Some(4) { 8 } else { 16 };
        attribute.push(AttributeProto {
            name: "activation_bits".into(),
            r#type: attribute_proto::AttributeType::Int as i32,
            i: bits,
            ..Default::default()
        });
        replacements.push((
            place,
            NodeProto {
                name: format!("{}.fused_q4", graph.node[at].name),
                op_type: MATMUL_Q4.into(),
                domain: DOMAIN.into(),
                input,
                output: vec![output],
                attribute,
                ..Default::default()
            },
        ));
    }
    let fused = replacements.len();
    for (i, node) in replacements {
        graph.node[i] = node;
    }
    if fused > 0 {
        remove_dead_nodes(graph);
    }
    (fused, with_offsets)
}

/// An exporter-written `MatMulNBits` node.
struct Layer {
    x: String,
    /// `[N, K/32, 16]` u8 initializer.
    codes: String,
    /// `[N·K/32]` f16 initializer (read through a `Cast` to f32).
    scales: String,
    /// The f32 scales the `Cast` produces (the offset subgraph reads them too).
    scales_f32: String,
    output: String,
    k: usize,
    n: usize,
}

fn match_layer(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<Layer> {
    let node = &g.node[at];
    if node.op_type != "MatMulNBits" || node.domain != "com.microsoft" || node.input.len() != 3 {
        return None;
    }
    let known = ["K", "N", "bits", "block_size", "accuracy_level"];
    if node.output.len() != 1 || node.attribute.iter().any(|a| !known.contains(&a.name.as_str())) {
        return None;
    }
    let (k, n) = (usize::try_from(int_attr(node, "K")?).ok()?, usize::try_from(int_attr(node, "N")?).ok()?);
    if int_attr(node, "bits") != Some(4)
        || int_attr(node, "block_size") != Some(BLOCK as i64)
        || !k.is_multiple_of(BLOCK)
    {
        return None;
    }
    let codes = ix.initializer.get(node.input[1].as_str())?;
    let dims = [n as i64, (k / BLOCK) as i64, (BLOCK / 2) as i64];
    if codes.data_type != ONNX_UINT8 || codes.dims != dims {
        return None;
    }
    let (_, cast) = ix.node(g, &node.input[2], "Cast", 1)?;
    let scales = ix.initializer.get(cast.input[0].as_str())?;
    if int_attr(cast, "to") != Some(ONNX_FLOAT)
        || scales.data_type != ONNX_FLOAT16
        || scales.dims != [(n * k / BLOCK) as i64]
    {
        return None;
    }
    Some(Layer {
        x: node.input[0].clone(),
        codes: node.input[1].clone(),
        scales: cast.input[0].clone(),
        scales_f32: node.input[2].clone(),
        output: node.output[0].clone(),
        k,
        n,
    })
}

/// The Q4_1 offset subgraph around a layer, when it is exactly the exporter's.
struct Offsets {
    /// Index of the final `Add(y, correction)`, where the fused node goes.
    add: usize,
    output: String,
    /// `[N, K/32]` f16 initializer of the block minimums.
    mins: String,
}

fn match_offsets(ix: &GraphIndex<'_>, g: &GraphProto, layer: &Layer) -> Option<Offsets> {
    let blocks = (layer.k / BLOCK) as i64;
    let (add, add_node) = ix.sole_consumer(g, &layer.output)?;
    if add_node.op_type != "Add"
        || !add_node.domain.is_empty()
        || add_node.input.len() != 2
        || add_node.input[0] != layer.output
    {
        return None;
    }
    let (_, correction) = ix.node(g, &add_node.input[1], "MatMul", 2)?;
    ix.sole_consumer(g, &add_node.input[1])?;
    // Block sums of x: ReduceSum(Reshape(x, Concat(Shape(x, end=-1), [K/32, 32])), [-1], keepdims=0).
    let (_, sums) = ix.node(g, &correction.input[0], "ReduceSum", 2)?;
    if int_attr(sums, "keepdims") != Some(0) || int64s(ix, &sums.input[1])? != [-1] {
        return None;
    }
    let (_, view) = ix.node(g, &sums.input[0], "Reshape", 2)?;
    let (_, concat) = ix.node(g, &view.input[1], "Concat", 2)?;
    let (_, shape) = ix.node(g, &concat.input[0], "Shape", 1)?;
    let shape_ok = shape.attribute.len() == 1 && int_attr(shape, "end") == Some(-1);
    if view.input[0] != layer.x
        || shape.input[0] != layer.x
        || !shape_ok
        || int_attr(concat, "axis") != Some(0)
    {
        return None;
    }
    if int64s(ix, &concat.input[1])? != [blocks, BLOCK as i64] {
        return None;
    }
    // Offsets: Transpose(Add(Cast(mins f16), Mul(Reshape(scales, [N, K/32]), 8)), perm [1, 0]).
    let (_, transpose) = ix.node(g, &correction.input[1], "Transpose", 1)?;
    if ints_attr(transpose, "perm")? != [1, 0] {
        return None;
    }
    let (_, rows) = ix.node(g, &transpose.input[0], "Add", 2)?;
    let (_, cast) = ix.node(g, &rows.input[0], "Cast", 1)?;
    let mins = ix.initializer.get(cast.input[0].as_str())?;
    if int_attr(cast, "to") != Some(ONNX_FLOAT)
        || mins.data_type != ONNX_FLOAT16
        || mins.dims != [layer.n as i64, blocks]
    {
        return None;
    }
    let (_, times8) = ix.node(g, &rows.input[1], "Mul", 2)?;
    let (_, grid) = ix.node(g, &times8.input[0], "Reshape", 2)?;
    if !ix.is_scalar(&times8.input[1], 8.0) || grid.input[0] != layer.scales_f32 {
        return None;
    }
    if int64s(ix, &grid.input[1])? != [layer.n as i64, blocks] {
        return None;
    }
    Some(Offsets { add, output: add_node.output[0].clone(), mins: cast.input[0].clone() })
}

/// The values of a small inline int64 initializer (a vector or a scalar).
fn int64s(ix: &GraphIndex<'_>, name: &str) -> Option<Vec<i64>> {
    let t = ix.initializer.get(name)?;
    if t.dims.len() > 1 {
        return None;
    }
    int_values(t)
}

/// `(x f32 [.., K], codes, scales[, mins])` → f32 `[.., N]`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct MatMulQ4Expansion {
    pub k: usize,
    pub n: usize,
    pub bits: ActivationBits,
}

impl Expansion for MatMulQ4Expansion {
    fn name(&self) -> StaticName {
        MATMUL_Q4.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        ensure!(inputs.len() == 3 || inputs.len() == 4, "{MATMUL_Q4} takes 3 or 4 inputs");
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        let n = self.n.to_dim();
        s.given(&inputs[0].shape, move |s, a| {
            let mut c = a.clone();
            if let Some(last) = c.last_mut() {
                *last = n.clone();
            }
            s.equals(&outputs[0].shape, c)
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let konst = |i: usize, what: &str| {
            model
                .outlet_fact(inputs[i])?
                .konst
                .clone()
                .with_context(|| format!("{MATMUL_Q4}: the {what} of {prefix} are not a constant"))
        };
        let op = MatMulQ4 {
            k: self.k,
            n: self.n,
            bits: self.bits,
            codes: konst(1, "codes")?,
            scales: konst(2, "scales")?,
            mins: if inputs.len() == 4 { Some(konst(3, "minimums")?) } else { None },
        };
        op.with_weights(|_| Ok(()))?;
        model.wire_node(prefix, op, &inputs[..1])
    }
}

/// The typed op behind [`MatMulQ4Expansion`]: the weights are tract's loaded initializers,
/// shared, not copied.
#[derive(Clone)]
pub(crate) struct MatMulQ4 {
    k: usize,
    n: usize,
    bits: ActivationBits,
    codes: Arc<Tensor>,
    scales: Arc<Tensor>,
    mins: Option<Arc<Tensor>>,
}

impl fmt::Debug for MatMulQ4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{MATMUL_Q4}(K={}, N={}, {}-bit activations, offsets: {})",
            self.k,
            self.n,
            self.bits,
            self.mins.is_some()
        )
    }
}

impl PartialEq for MatMulQ4 {
    fn eq(&self, other: &Self) -> bool {
        self.k == other.k
            && self.n == other.n
            && self.bits == other.bits
            && self.codes == other.codes
            && self.scales == other.scales
            && self.mins == other.mins
    }
}

impl Eq for MatMulQ4 {}

impl MatMulQ4 {
    /// Runs `f` on the weights as the kernel sees them, after checking their types and sizes.
    fn with_weights<R>(&self, f: impl FnOnce(&Q4Weights<'_>) -> TractResult<R>) -> TractResult<R> {
        let codes = self.codes.try_as_plain_ram()?;
        let scales = self.scales.try_as_plain_ram()?;
        let mins = self.mins.as_ref().map(|m| m.try_as_plain_ram()).transpose()?;
        let w = Q4Weights {
            k: self.k,
            n: self.n,
            codes: codes.as_slice::<u8>()?,
            scales: scales.as_slice::<f16>()?,
            mins: mins.as_ref().map(|m| m.as_slice::<f16>()).transpose()?,
        };
        w.check().map_err(|e| format_err!("{MATMUL_Q4}: {e}"))?;
        f(&w)
    }

    fn multiply(&self, a: TValue) -> TractResult<TValue> {
        let mut shape = a.shape().to_vec();
        ensure!(shape.last() == Some(&self.k), "{MATMUL_Q4}: input {shape:?} does not end in K = {}", self.k);
        *shape.last_mut().expect("rank checked above") = self.n;
        let x = a.try_as_plain_ram()?;
        let prepared = Prepared::new(x.as_slice::<f32>()?, self.k, self.bits);
        let rows = shape[..shape.len() - 1].iter().product::<usize>();
        let mut out = vec![0f32; rows * self.n];
        self.with_weights(|w| {
            super::split::by_columns(rows, self.k, self.n, &mut out, |cols, out| {
                matmul_q4::matmul(w, &prepared, cols, out)
            });
            Ok(())
        })?;
        owned(&shape, out)
    }
}

impl Op for MatMulQ4 {
    fn name(&self) -> StaticName {
        MATMUL_Q4.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "K={} N={}, 4-bit blocks read in place, offsets: {}",
            self.k,
            self.n,
            self.mins.is_some()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for MatMulQ4 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = args_1!(inputs);
        Ok(tvec!(self.multiply(a)?))
    }
}

impl TypedOp for MatMulQ4 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let a = inputs[0];
        ensure!(a.datum_type == f32::datum_type(), "{MATMUL_Q4} wants f32 rows, got {:?}", a.datum_type);
        ensure!(a.rank() > 0, "{MATMUL_Q4} of a scalar");
        let mut shape: TVec<TDim> = a.shape.iter().cloned().collect();
        *shape.last_mut().expect("rank checked above") = self.n.to_dim();
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}
