//! Fused per-token int8 quantisation for tract: two ops of ferrite's own, put in place of the
//! standard-ONNX subgraphs the exporter writes around every int8 `MatMulInteger`.
//!
//! The exporter's int8 scheme (exporter/src/quant/int8.rs, `matmul_stored`) quantises each
//! activation row to uint8 codes over the row's own `[min, max]` range, and adds the row minimum
//! back after the integer product (`scale · (q·W) + min · Σ_i W_i`). In standard ONNX that is 9
//! element-wise/reduce nodes before the matmul and 5 after it, which both backends run — but
//! tract evaluates each node on its own (dispatch, an output allocation, a pass over the data),
//! and at a decode step, where every tensor is one row, those nodes cost more than the int8
//! matmul saves (measured: docs/runtime.md, "Session 5: fused int8 quantisation").
//!
//! Before tract parses a ferrite-exported file, [`fuse_row_quantisation`] rewrites the in-memory
//! protobuf (the file, and what ONNX Runtime sees, are unchanged):
//! - quantise: `ReduceMin`, `ReduceMax → Sub(min) → Max(MIN_POSITIVE) → Mul(1/255)` (scale),
//!   `Sub(x, min) → Div(scale) → Round → Cast(u8)` (codes) becomes one [`RowQuantize`] node with
//!   three outputs (codes, scale, min);
//! - dequantise: `Cast(product → f32) → Mul(row scale)`, `Mul(row min, column sums)`, `Add`,
//!   `Mul(weight scales)` becomes one [`RowDequantize`] node.
//!
//! Each fused op computes exactly the arithmetic of the nodes it replaces, in the same order and
//! with the same f32 operations (division, not a multiplied reciprocal; ties-to-even rounding),
//! so tract's outputs are bit-identical with and without fusion (tests/fused_int8.rs). A pattern
//! is only replaced when every intermediate value is used inside it alone, the constants are
//! exactly the exporter's, and the file says it was written by ferrite's exporter.

mod attention;
mod kv_cache;
mod matmul_i8;
pub(crate) use attention::ATTENTION;
pub(crate) use kv_cache::{
    CACHED_ATTENTION, CacheNames, CachedAttention, Half, KvCache, PAST_LENGTH, fuse_kv_cache,
};
pub(crate) use matmul_i8::MATMUL_I8;

use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_hir::internal::{
    Expansion, Solver, TensorProxy, check_input_arity, check_output_arity, expand,
};

/// Op type of the fused quantisation node (registered in tract's ONNX op registry only).
pub(crate) const ROW_QUANTIZE: &str = "FerriteRowQuantizeU8";
/// Op type of the fused dequantisation node.
pub(crate) const ROW_DEQUANTIZE: &str = "FerriteRowDequantize";
const DOMAIN: &str = "ai.ferrite";

use super::onnx_graph::{GraphIndex, ONNX_FLOAT, fusable_graph, int_attr, int_scalar, ints_attr};

/// ONNX `TensorProto.DataType` code of uint8 (the codes' `Cast`).
const ONNX_UINT8: i64 = 2;

/// Registers both fused ops with a tract ONNX parser.
pub(crate) fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(ROW_QUANTIZE, |_, node| {
        let digits = node.get_attr_opt::<i64>("digits")?.unwrap_or(0) == 1;
        Ok((expand(RowQuantizeExpansion { digits }), vec![]))
    });
    onnx.op_register.insert(ROW_DEQUANTIZE, |_, node| {
        let bias = node.get_attr_opt::<i64>("bias")?.unwrap_or(0) == 1;
        let residual = node.get_attr_opt::<i64>("residual")?.unwrap_or(0) == 1;
        let digits = node.get_attr_opt::<i64>("digits")?.unwrap_or(0) == 1;
        Ok((expand(RowDequantizeExpansion { bias, residual, digits }), vec![]))
    });
    onnx.op_register.insert(MATMUL_I8, |_, _| Ok((expand(matmul_i8::MatMulI8Expansion), vec![])));
    onnx.op_register.insert(CACHED_ATTENTION, |_, node| {
        let scale = node.get_attr::<f32>("scale")?;
        let layer = usize::try_from(node.get_attr::<i64>("layer")?)?;
        Ok((expand(kv_cache::CachedAttentionExpansion(CachedAttention::new(scale, layer))), vec![]))
    });
    onnx.op_register.insert(ATTENTION, |_, node| {
        let scale = node.get_attr::<f32>("scale")?;
        let keys_major = node.get_attr_opt::<i64>("keys_major")?.unwrap_or(1) == 1;
        Ok((expand(attention::AttentionExpansion(attention::Attention::new(scale, keys_major))), vec![]))
    });
}

/// Rewrites the exporter's attention blocks (keys-major in decoders, query-major in encoders) of
/// a ferrite-exported model into one `FerriteAttention` node each (see `tract_fuse/attention.rs`); returns how many.
pub(crate) fn fuse_attention(model: &mut ModelProto) -> usize {
    let Some(graph) = fusable_graph(model) else { return 0 };
    let mut fused = 0;
    loop {
        let index = GraphIndex::new(graph);
        let Some(m) = (0..graph.node.len()).find_map(|i| {
            attention::match_attention(&index, graph, i)
                .or_else(|| attention::match_query_major(&index, graph, i))
        }) else {
            break;
        };
        apply(graph, m);
        fused += 1;
    }
    fused
}

/// Rewrites the int8 `MatMulInteger` nodes of a ferrite-exported step graph (a decoder with a
/// KV cache, an LSTM) into `FerriteMatMulI8`, which has a kernel for one activation row (see
/// `tract_fuse/matmul_i8.rs`); returns how many. Run after [`fuse_row_quantisation`], whose
/// dequantisation pattern starts at a `MatMulInteger`.
pub(crate) fn fuse_int8_matmuls(model: &mut ModelProto) -> usize {
    let Some(graph) = fusable_graph(model) else { return 0 };
    if !matmul_i8::is_step_graph(graph) {
        return 0;
    }
    // One node for one node, in place: one index and one pass do it.
    let index = GraphIndex::new(graph);
    let replacements: Vec<(usize, NodeProto)> = (0..graph.node.len())
        .filter_map(|i| matmul_i8::match_matmul_integer(&index, graph, i).map(|node| (i, node)))
        .collect();
    let fused = replacements.len();
    for (i, node) in replacements {
        graph.node[i] = node;
    }
    fused
}

/// How many subgraphs [`fuse_row_quantisation`] replaced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fused {
    pub quantize: usize,
    pub dequantize: usize,
}

/// Rewrites the exporter's per-token quantisation subgraphs of a ferrite-exported model into the
/// fused ops (see the module docs). Other files are left untouched.
pub(crate) fn fuse_row_quantisation(model: &mut ModelProto) -> Fused {
    let Some(graph) = fusable_graph(model) else { return Fused::default() };
    let mut fused = Fused::default();
    loop {
        let index = GraphIndex::new(graph);
        let found = (0..graph.node.len()).find_map(|i| {
            match_quantize(&index, graph, i)
                .map(|m| (m, true))
                .or_else(|| match_dequantize(&index, graph, i).map(|m| (m, false)))
        });
        let Some((m, is_quantize)) = found else { break };
        apply(graph, m);
        if is_quantize {
            fused.quantize += 1;
        } else {
            fused.dequantize += 1;
        }
    }
    fused
}

/// One matched pattern: the nodes it removes and the node that replaces them, inserted at the
/// position of the first removed node.
struct Match {
    remove: Vec<usize>,
    insert_at: usize,
    node: NodeProto,
}

fn apply(graph: &mut GraphProto, m: Match) {
    let mut keep = vec![true; graph.node.len()];
    for &i in &m.remove {
        keep[i] = false;
    }
    let mut nodes = Vec::with_capacity(graph.node.len() + 1 - m.remove.len());
    for (i, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        if i == m.insert_at {
            nodes.push(m.node.clone());
        }
        if keep[i] {
            nodes.push(node);
        }
    }
    graph.node = nodes;
}

/// `Reduce{Min,Max}(x, axes = [-1], keepdims = 1)`.
fn last_axis_reduce(n: &NodeProto) -> bool {
    n.attribute.len() == 2 && ints_attr(n, "axes") == Some(&[-1]) && int_attr(n, "keepdims") == Some(1)
}

/// The values of a small inline f32 initializer of shape `dims`.
fn f32_values(ix: &GraphIndex<'_>, name: &str, dims: &[i64]) -> Option<Vec<f32>> {
    let t = ix.initializer.get(name)?;
    if t.data_type != ONNX_FLOAT as i32 || t.dims != dims || t.data_location == Some(1) {
        return None;
    }
    if !t.float_data.is_empty() {
        return Some(t.float_data.clone());
    }
    Some(t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// `Unsqueeze(x, axes = [0])` (axes as an initializer, opset 13+): returns x.
fn leading_unsqueeze<'a>(ix: &GraphIndex<'_>, g: &'a GraphProto, name: &str) -> Option<(usize, &'a String)> {
    let (i, n) = ix.node(g, name, "Unsqueeze", 2)?;
    (int_scalar(ix, &n.input[1]) == Some(0)).then_some((i, &n.input[0]))
}

/// The 16-bit digits tail of the exporter's quantisation (exporter/src/quant/int8.rs):
/// `high = Floor(q · 1/256)`, `low = q − high · 256`, `Concat(Unsqueeze(high, 0),
/// Unsqueeze(low, 0), axis 0)` feeding the codes' `Cast`. Returns `q` (the `Round`'s output) and
/// the nodes to remove.
fn match_digits(ix: &GraphIndex<'_>, g: &GraphProto, concat_name: &str) -> Option<(String, Vec<usize>)> {
    let (concat_i, concat) = ix.node(g, concat_name, "Concat", 2)?;
    if int_attr(concat, "axis") != Some(0) {
        return None;
    }
    let (uh_i, high) = leading_unsqueeze(ix, g, &concat.input[0])?;
    let (ul_i, low) = leading_unsqueeze(ix, g, &concat.input[1])?;
    let (floor_i, floor) = ix.node(g, high, "Floor", 1)?;
    let (div_i, div) = ix.node(g, &floor.input[0], "Mul", 2)?;
    let q = &div.input[0];
    if !ix.is_scalar(&div.input[1], 1.0 / 256.0) {
        return None;
    }
    let (sub_i, sub) = ix.node(g, low, "Sub", 2)?;
    let (mul_i, mul) = ix.node(g, &sub.input[1], "Mul", 2)?;
    if &sub.input[0] != q || &mul.input[0] != high || !ix.is_scalar(&mul.input[1], 256.0) {
        return None;
    }
    let once = [concat, div, sub, mul];
    if once.iter().any(|n| ix.uses(&n.output[0]) != 1)
        || ix.uses(&g.node[uh_i].output[0]) != 1
        || ix.uses(&g.node[ul_i].output[0]) != 1
        || ix.uses(high) != 2
        || ix.uses(q) != 2
    {
        return None;
    }
    Some((q.clone(), vec![concat_i, uh_i, ul_i, floor_i, div_i, sub_i, mul_i]))
}

fn match_quantize(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<Match> {
    let cast = &g.node[at];
    if cast.op_type != "Cast"
        || !cast.domain.is_empty()
        || cast.input.len() != 1
        || cast.output.len() != 1
        || int_attr(cast, "to") != Some(ONNX_UINT8)
    {
        return None;
    }
    // 8-bit codes: the Cast reads the Round; 16-bit: it reads the digits' Concat.
    let (q, mut remove, digits) = match match_digits(ix, g, &cast.input[0]) {
        Some((q, nodes)) => (q, nodes, true),
        None => (cast.input[0].clone(), Vec::new(), false),
    };
    let (round_i, round) = ix.node(g, &q, "Round", 1)?;
    let (div_i, div) = ix.node(g, &round.input[0], "Div", 2)?;
    let scale = &div.input[1];
    let (shifted_i, shifted) = ix.node(g, &div.input[0], "Sub", 2)?;
    let (x, lo) = (&shifted.input[0], &shifted.input[1]);
    let (scale_i, scale_n) = ix.node(g, scale, "Mul", 2)?;
    let levels: f32 = if digits { 65535.0 } else { 255.0 };
    if !ix.is_scalar(&scale_n.input[1], 1.0 / levels) {
        return None;
    }
    let (range2_i, range2) = ix.node(g, &scale_n.input[0], "Max", 2)?;
    if !ix.is_scalar(&range2.input[1], f32::MIN_POSITIVE) {
        return None;
    }
    let (range_i, range) = ix.node(g, &range2.input[0], "Sub", 2)?;
    if &range.input[1] != lo {
        return None;
    }
    let (rmax_i, rmax) = ix.node(g, &range.input[0], "ReduceMax", 1)?;
    let (rmin_i, rmin) = ix.node(g, lo, "ReduceMin", 1)?;
    if &rmax.input[0] != x || &rmin.input[0] != x || !last_axis_reduce(rmax) || !last_axis_reduce(rmin) {
        return None;
    }
    // Every intermediate is read only inside the pattern; the scale and the row minimum are
    // outputs (the dequantisation reads them). (The digits' `q` is read twice, checked above.)
    let once: &[&NodeProto] = if digits {
        &[rmax, range, range2, shifted, div]
    } else {
        &[rmax, range, range2, shifted, div, round]
    };
    if once.iter().any(|n| ix.uses(&n.output[0]) != 1) {
        return None;
    }
    remove.extend([at, round_i, div_i, shifted_i, scale_i, range2_i, range_i, rmax_i, rmin_i]);
    let insert_at = *remove.iter().min()?;
    let node = NodeProto {
        name: format!("{}.fused_quantize", cast.name),
        op_type: ROW_QUANTIZE.into(),
        domain: DOMAIN.into(),
        input: vec![x.clone()],
        output: vec![cast.output[0].clone(), scale.clone(), lo.clone()],
        attribute: vec![flag("digits", digits)],
        ..Default::default()
    };
    Some(Match { remove, insert_at, node })
}

/// An INT attribute `name` = 0 or 1.
fn flag(name: &str, on: bool) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: on as i64,
        ..Default::default()
    }
}

/// The 16-bit digits' recombination before the row scale: `ReduceSum(Mul(Cast<f32>(product),
/// [256, 1] on axis 0), axes = [0], keepdims = 0)`. Returns the `Cast` and the nodes to remove.
fn match_digit_sum<'a>(
    ix: &GraphIndex<'_>,
    g: &'a GraphProto,
    name: &str,
) -> Option<(usize, &'a NodeProto, Vec<usize>)> {
    let (sum_i, sum) = ix.node(g, name, "ReduceSum", 2)?;
    if int_attr(sum, "keepdims") != Some(0) || int_scalar(ix, &sum.input[1]) != Some(0) {
        return None;
    }
    let (mul_i, mul) = ix.node(g, &sum.input[0], "Mul", 2)?;
    if f32_values(ix, &mul.input[1], &[2, 1, 1, 1])? != [256.0, 1.0] {
        return None;
    }
    let (cast_i, cast) = ix.node(g, &mul.input[0], "Cast", 1)?;
    if ix.uses(&sum.output[0]) != 1 || ix.uses(&mul.output[0]) != 1 {
        return None;
    }
    Some((cast_i, cast, vec![sum_i, mul_i]))
}

fn match_dequantize(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<Match> {
    let out = &g.node[at];
    if out.op_type != "Mul" || !out.domain.is_empty() || out.input.len() != 2 || out.output.len() != 1 {
        return None;
    }
    let (add_i, add) = ix.node(g, &out.input[0], "Add", 2)?;
    let (m1_i, m1) = ix.node(g, &add.input[0], "Mul", 2)?;
    // 8-bit codes: the row scale multiplies the product's Cast; 16-bit: the digits' sum.
    let (castf_i, castf, mut remove, digits) = match match_digit_sum(ix, g, &m1.input[0]) {
        Some((i, cast, nodes)) => (i, cast, nodes, true),
        None => {
            let (i, cast) = ix.node(g, &m1.input[0], "Cast", 1)?;
            (i, cast, Vec::new(), false)
        }
    };
    if int_attr(castf, "to") != Some(ONNX_FLOAT) {
        return None;
    }
    ix.node(g, &castf.input[0], "MatMulInteger", 2)?;
    let (offset_i, offset) = ix.node(g, &add.input[1], "Mul", 2)?;
    let private = [&add.output[0], &m1.output[0], &castf.output[0], &offset.output[0]];
    if private.iter().any(|name| ix.uses(name) != 1) {
        return None;
    }
    // product, row minimum, row scale, column sums, weight scales (, bias)
    let mut input = vec![
        castf.input[0].clone(),
        offset.input[0].clone(),
        m1.input[1].clone(),
        offset.input[1].clone(),
        out.input[1].clone(),
    ];
    remove.extend([at, add_i, m1_i, castf_i, offset_i]);
    let mut last = (at, out);
    let (mut bias, mut residual) = (false, false);
    // A dense layer's bias, `Add(product, bias)` with a 1-D initializer, joins the fused op.
    if let Some((add_i, add)) = ix.sole_consumer(g, &out.output[0]) {
        let is_bias_add = add.op_type == "Add"
            && add.domain.is_empty()
            && add.input.len() == 2
            && add.output.len() == 1
            && add.input[0] == out.output[0]
            && ix.is_vector(&add.input[1]);
        if is_bias_add {
            input.push(add.input[1].clone());
            remove.push(add_i);
            last = (add_i, add);
            bias = true;
        }
    }
    // Then a residual connection, `Add(y, x)` or `Add(x, y)` with a computed x, joins too (its
    // shape is checked when the op is wired: a broadcasting Add stays tract's own).
    if let Some((add_i, add)) = ix.sole_consumer(g, &last.1.output[0]) {
        let y = &last.1.output[0];
        let other = match add.input.as_slice() {
            [a, b] if a == y && b != y => Some(b),
            [a, b] if b == y && a != y => Some(a),
            _ => None,
        };
        let is_residual = add.op_type == "Add"
            && add.domain.is_empty()
            && add.output.len() == 1
            && other.is_some_and(|x| !ix.initializer.contains_key(x.as_str()));
        if let (true, Some(x)) = (is_residual, other) {
            input.push(x.clone());
            remove.push(add_i);
            last = (add_i, add);
            residual = true;
        }
    }
    let node = NodeProto {
        name: format!("{}.fused_dequantize", last.1.name),
        op_type: ROW_DEQUANTIZE.into(),
        domain: DOMAIN.into(),
        input,
        output: vec![last.1.output[0].clone()],
        attribute: vec![flag("bias", bias), flag("residual", residual), flag("digits", digits)],
        ..Default::default()
    };
    // The replacement takes the last node's place: every input is defined before it.
    Some(Match { remove, insert_at: last.0, node })
}

/// `x[..., D]` (f32) → `(codes u8 [..., D], scale f32 [..., 1], row minimum f32 [..., 1])`; with
/// `digits`, 16-bit codes as two uint8 digits, `codes u8 [2, ..., D]` (high digits first).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct RowQuantizeExpansion {
    digits: bool,
}

impl Expansion for RowQuantizeExpansion {
    fn name(&self) -> StaticName {
        ROW_QUANTIZE.into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(3)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 3)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, u8::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[2].datum_type, f32::datum_type())?;
        let digits = self.digits;
        if !digits {
            s.equals(&inputs[0].shape, &outputs[0].shape)?;
        }
        s.equals(&inputs[0].rank, &outputs[1].rank)?;
        s.equals(&inputs[0].rank, &outputs[2].rank)?;
        s.given(&inputs[0].shape, move |s, shape| {
            if digits {
                let mut codes: TVec<TDim> = tvec![2.to_dim()];
                codes.extend(shape.iter().cloned());
                s.equals(&outputs[0].shape, codes)?;
            }
            let mut row = shape.clone();
            if let Some(last) = row.last_mut() {
                *last = 1.to_dim();
            }
            s.equals(&outputs[1].shape, row.clone())?;
            s.equals(&outputs[2].shape, row)
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, RowQuantize { digits: self.digits }, inputs)
    }
}

/// The typed op behind [`RowQuantizeExpansion`].
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct RowQuantize {
    digits: bool,
}

impl Op for RowQuantize {
    fn name(&self) -> StaticName {
        ROW_QUANTIZE.into()
    }

    op_as_typed_op!();
}

/// 1.5·2²³: for 0 ≤ v < 2²², `v + MAGIC` rounds `v` half to even (the default rounding mode)
/// and the low byte of its bits is that integer when it is at most 255. A plain float add and a
/// bit mask, which the compiler vectorises; `f32::round_ties_even` is a libm call per element on
/// x86-64 builds without SSE4.1, and `as u8` a saturating branch.
const MAGIC: f32 = 12_582_912.0;

/// The smallest and largest value of a non-empty row (ReduceMin, ReduceMax). Eight independent
/// lanes so the compiler emits packed min/max.
fn row_range(row: &[f32]) -> (f32, f32) {
    let first = row[0];
    let mut lo = [first; 8];
    let mut hi = [first; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let mut l = lo.iter().fold(first, |m, &v| m.min(v));
    let mut h = hi.iter().fold(first, |m, &v| m.max(v));
    for &v in chunks.remainder() {
        l = l.min(v);
        h = h.max(v);
    }
    (l, h)
}

/// One non-empty row's scale and minimum for `levels` + 1 codes (255 or 65535), as the replaced
/// nodes compute them.
fn row_scale(row: &[f32], levels: f32) -> (f32, f32) {
    let (lo, hi) = row_range(row);
    let scale = (hi - lo).max(f32::MIN_POSITIVE) * (1.0f32 / levels);
    (scale, lo)
}

/// `Round((v − lo) / scale)` as 16-bit codes, split into `high = Floor(q / 256)` and
/// `low = q − 256·high`, for one row.
fn quantise_row_digits(row: &[f32], scale: f32, lo: f32, high: &mut [u8], low: &mut [u8]) {
    for ((h, l), &v) in high.iter_mut().zip(low.iter_mut()).zip(row) {
        // As in `quantise_row`: 0 ≤ (v − lo) / scale ≤ 65535·(1 + 2⁻²²) < 2²², so the magic
        // rounding is exact and the low 16 mantissa bits hold q.
        let q = ((v - lo) / scale + MAGIC).to_bits() & 0xffff;
        *h = (q >> 8) as u8;
        *l = (q & 0xff) as u8;
    }
}

/// `Cast<u8>(Round((v − lo) / scale))` for one row.
fn quantise_row(row: &[f32], scale: f32, lo: f32, out: &mut [u8]) {
    for (q, &v) in out.iter_mut().zip(row) {
        // 0 ≤ (v − lo) / scale ≤ 255·(1 + 2⁻²²) by construction of `scale` (f32 rounding is
        // monotone), so the magic rounding is exact and lands on 0..=255, whose low mantissa
        // byte is the code. NaN/∞ inputs give unspecified codes, as the standard nodes do.
        *q = (((v - lo) / scale + MAGIC).to_bits() & 0xff) as u8;
    }
}

/// A tensor holding `data` (tract copies it into its own aligned buffer).
fn owned<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<TValue> {
    let array = tract_onnx::tract_core::ndarray::ArrayD::from_shape_vec(shape, data)?;
    Ok(Tensor::from(array).into_tvalue())
}

impl EvalOp for RowQuantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape().to_vec();
        let d = *shape.last().context("row quantisation of a scalar")?;
        ensure!(d > 0, "row quantisation of empty rows");
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let rows = xs.len() / d;
        let mut codes = vec![0u8; xs.len() * if self.digits { 2 } else { 1 }];
        let mut scales = vec![0f32; rows];
        let mut minima = vec![0f32; rows];
        let mut codes_shape = shape.clone();
        if self.digits {
            let (high, low) = codes.split_at_mut(xs.len());
            let rows_out = high.chunks_exact_mut(d).zip(low.chunks_exact_mut(d));
            for (r, (row, (h, l))) in xs.chunks_exact(d).zip(rows_out).enumerate() {
                let (scale, lo) = row_scale(row, 65535.0);
                quantise_row_digits(row, scale, lo, h, l);
                scales[r] = scale;
                minima[r] = lo;
            }
            codes_shape.insert(0, 2);
        } else {
            for (r, (row, out)) in xs.chunks_exact(d).zip(codes.chunks_exact_mut(d)).enumerate() {
                let (scale, lo) = row_scale(row, 255.0);
                quantise_row(row, scale, lo, out);
                scales[r] = scale;
                minima[r] = lo;
            }
        }
        let mut row_shape = shape.clone();
        *row_shape.last_mut().expect("rank checked above") = 1;
        Ok(tvec!(owned(&codes_shape, codes)?, owned(&row_shape, scales)?, owned(&row_shape, minima)?))
    }
}

impl TypedOp for RowQuantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == f32::datum_type(), "{ROW_QUANTIZE} wants f32, got {:?}", x.datum_type);
        ensure!(x.rank() > 0, "{ROW_QUANTIZE} of a scalar");
        let mut row: TVec<TDim> = x.shape.iter().cloned().collect();
        *row.last_mut().expect("rank checked above") = 1.to_dim();
        let mut codes: TVec<TDim> = x.shape.iter().cloned().collect();
        if self.digits {
            codes.insert(0, 2.to_dim());
        }
        Ok(tvec!(u8::fact(codes), f32::fact(row.clone()), f32::fact(row)))
    }

    as_op!();
}

/// `(product i32 [..., N], row minimum f32 [..., 1], row scale f32 [..., 1], column sums f32 [N],
/// weight scales f32 [N](, bias f32 [N])(, residual f32 [..., N]))` → f32 `[..., N]`:
/// `(f32(product) · row_scale + row_min · column_sum) · weight_scale (+ bias) (+ residual)`.
///
/// With `digits`, the product is `[2, ..., N]` (high and low digits' products) and
/// `f32(product)` is `256·f32(high) + f32(low)`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct RowDequantizeExpansion {
    bias: bool,
    residual: bool,
    digits: bool,
}

impl Expansion for RowDequantizeExpansion {
    fn name(&self) -> StaticName {
        ROW_DEQUANTIZE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 5 + self.bias as usize + self.residual as usize)?;
        check_output_arity(outputs, 1)?;
        for extra in &inputs[5..] {
            s.equals(&extra.datum_type, f32::datum_type())?;
        }
        if self.residual {
            // A broadcasting residual gives the broadcast shape: leave it to the Add in `wire`.
            return Ok(());
        }
        s.equals(&inputs[0].datum_type, i32::datum_type())?;
        s.equals(&inputs[1].datum_type, f32::datum_type())?;
        s.equals(&inputs[2].datum_type, f32::datum_type())?;
        s.equals(&inputs[3].datum_type, f32::datum_type())?;
        s.equals(&inputs[4].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        if !self.digits {
            return s.equals(&inputs[0].shape, &outputs[0].shape);
        }
        s.given(&inputs[0].shape, move |s, shape| {
            s.equals(&outputs[0].shape, shape[1..].iter().cloned().collect::<TVec<TDim>>())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let plain = RowDequantize { bias: self.bias, residual: false, digits: self.digits };
        if !self.residual {
            return model.wire_node(prefix, plain, inputs);
        }
        let (product, residual) = (inputs[0], inputs[inputs.len() - 1]);
        let out_shape = &model.outlet_fact(product)?.shape.dims()[self.digits as usize..];
        if out_shape == model.outlet_fact(residual)?.shape.dims() {
            let op = RowDequantize { bias: self.bias, residual: true, digits: self.digits };
            return model.wire_node(prefix, op, inputs);
        }
        // Shapes not provably equal: dequantise, then tract's own broadcasting Add.
        let y = model.wire_node(prefix, plain, &inputs[..inputs.len() - 1])?[0];
        wire_with_rank_broadcast(
            format!("{prefix}.residual"),
            model,
            tract_onnx::tract_core::ops::math::add(),
            &[y, residual],
        )
    }
}

/// The typed op behind [`RowDequantizeExpansion`]; `bias` and `residual` add inputs after the
/// first five, in that order (the residual has the output's shape).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct RowDequantize {
    bias: bool,
    residual: bool,
    digits: bool,
}

impl Op for RowDequantize {
    fn name(&self) -> StaticName {
        ROW_DEQUANTIZE.into()
    }

    op_as_typed_op!();
}

impl EvalOp for RowDequantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let residual = if self.residual { inputs.pop() } else { None };
        let bias = if self.bias { inputs.pop() } else { None };
        let (acc, minima, scale, sums, wscale) = args_5!(inputs);
        let mut shape = acc.shape().to_vec();
        let n = *shape.last().context("dequantisation of a scalar")?;
        let acc = acc.try_as_plain_ram()?;
        let acc = acc.as_slice::<i32>()?;
        // 16-bit digits: the high digits' products, then the low digits'.
        let (acc, low) = if self.digits {
            ensure!(shape.first() == Some(&2), "{ROW_DEQUANTIZE}: digit products {shape:?}");
            shape.remove(0);
            let (high, low) = acc.split_at(acc.len() / 2);
            (high, Some(low))
        } else {
            (acc, None)
        };
        let minima = minima.try_as_plain_ram()?;
        let minima = minima.as_slice::<f32>()?;
        let scale = scale.try_as_plain_ram()?;
        let scale = scale.as_slice::<f32>()?;
        let sums = sums.try_as_plain_ram()?;
        let sums = sums.as_slice::<f32>()?;
        let wscale = wscale.try_as_plain_ram()?;
        let wscale = wscale.as_slice::<f32>()?;
        let rows = acc.len().checked_div(n).unwrap_or(0);
        ensure!(
            minima.len() == rows && scale.len() == rows && sums.len() == n && wscale.len() == n,
            "{ROW_DEQUANTIZE}: {rows} rows × {n} columns, got {} row minima, {} row scales, {} column sums, {} weight scales",
            minima.len(),
            scale.len(),
            sums.len(),
            wscale.len()
        );
        let bias = match &bias {
            Some(b) => Some(b.try_as_plain_ram()?),
            None => None,
        };
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        ensure!(bias.is_none_or(|b| b.len() == n), "{ROW_DEQUANTIZE}: biases for {n} columns expected");
        if let Some(r) = &residual {
            ensure!(
                r.shape() == shape.as_slice(),
                "{ROW_DEQUANTIZE}: residual {:?} for {shape:?}",
                r.shape()
            );
        }
        let residual = match &residual {
            Some(r) => Some(r.try_as_plain_ram()?),
            None => None,
        };
        let residual = residual.as_ref().map(|r| r.as_slice::<f32>()).transpose()?;
        let mut out = vec![0f32; acc.len()];
        if n > 0 {
            // One pass per row, the row still in cache, in the order of the replaced nodes:
            // ((product · scale + min · column sum) · weight scale + bias) + residual.
            for (r, (o, a)) in out.chunks_exact_mut(n).zip(acc.chunks_exact(n)).enumerate() {
                let (lo, s) = (minima[r], scale[r]);
                match low {
                    // `ReduceSum(Cast(product) · [256, 1])` over the digits, then as below.
                    Some(low) => {
                        let l = &low[r * n..(r + 1) * n];
                        for ((((o, &h), &l), &cs), &ws) in o.iter_mut().zip(a).zip(l).zip(sums).zip(wscale) {
                            let p = h as f32 * 256.0 + l as f32;
                            *o = (p * s + lo * cs) * ws;
                        }
                    }
                    None => {
                        for (((o, &a), &cs), &ws) in o.iter_mut().zip(a).zip(sums).zip(wscale) {
                            *o = (a as f32 * s + lo * cs) * ws;
                        }
                    }
                }
                if let Some(bias) = bias {
                    o.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
                }
                if let Some(res) = residual {
                    o.iter_mut().zip(&res[r * n..(r + 1) * n]).for_each(|(o, &x)| *o += x);
                }
            }
        }
        Ok(tvec!(owned(&shape, out)?))
    }
}

impl TypedOp for RowDequantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 5 + self.bias as usize + self.residual as usize,
            "{ROW_DEQUANTIZE}: wrong input count"
        );
        if self.residual {
            let r = inputs[inputs.len() - 1];
            ensure!(
                r.shape.dims() == &inputs[0].shape.dims()[self.digits as usize..],
                "{ROW_DEQUANTIZE}: residual {:?} for {:?}",
                r.shape,
                inputs[0].shape
            );
        }
        let acc = inputs[0];
        ensure!(acc.rank() > self.digits as usize, "{ROW_DEQUANTIZE} of a scalar");
        let out: TVec<TDim> = acc.shape.iter().skip(self.digits as usize).cloned().collect();
        let n = acc.shape.last().expect("rank checked above");
        let vectors: &[(usize, &str)] = if self.bias {
            &[(3, "column sums"), (4, "weight scales"), (5, "bias")]
        } else {
            &[(3, "column sums"), (4, "weight scales")]
        };
        for &(i, what) in vectors {
            let Some(f) = inputs.get(i) else { continue };
            ensure!(
                f.rank() == 1 && &f.shape[0] == n,
                "{ROW_DEQUANTIZE}: {what} {:?} for {n} columns",
                f.shape
            );
        }
        for (i, what) in [(1, "row minima"), (2, "row scales")] {
            let f = inputs[i];
            // Leading dims are symbolic here; their element count is checked at run time.
            ensure!(
                f.rank() == out.len() && f.shape.last() == Some(&1.to_dim()),
                "{ROW_DEQUANTIZE}: {what} {:?} for a product {:?}",
                f.shape,
                acc.shape
            );
        }
        Ok(tvec!(f32::fact(out)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_gpt_int8() -> ModelProto {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/shakespeare-gpt/int8/model.onnx");
        crate::Model::open(path).unwrap().proto().unwrap()
    }

    fn count(model: &ModelProto, op: &str) -> usize {
        model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == op).count()
    }

    #[test]
    fn fuses_every_pattern_of_a_ferrite_export() {
        let mut model = shipped_gpt_int8();
        let matmuls = count(&model, "MatMulInteger");
        let nodes = model.graph.as_ref().unwrap().node.len();
        let adds = count(&model, "Add");
        let fused = fuse_row_quantisation(&mut model);
        assert_eq!(fused, Fused { quantize: matmuls, dequantize: matmuls });
        assert_eq!(count(&model, ROW_QUANTIZE), matmuls);
        assert_eq!(count(&model, "Round"), 0);
        // The dequantisation's `Add(scaled product, min · column sums)`, every dense layer's
        // bias Add (the tied LM head has none) and the two residual Adds of each of the 4 blocks
        // are gone.
        let (biases, residuals) = (matmuls - 1, 2 * 4);
        assert_eq!(adds - count(&model, "Add"), matmuls + biases + residuals);
        // 9 nodes → 1 and 5 (+ bias and residual Adds) → 1 per matmul.
        let after = model.graph.as_ref().unwrap().node.len();
        assert_eq!(after, nodes - matmuls * (8 + 4) - biases - residuals);
        let flags = |n: &NodeProto| n.attribute.iter().map(|a| a.i).collect::<Vec<_>>();
        let graph = model.graph.as_ref().unwrap();
        let with_residual =
            graph.node.iter().filter(|n| n.op_type == ROW_DEQUANTIZE && flags(n)[1] == 1).count();
        assert_eq!(with_residual, residuals);
    }

    #[test]
    fn leaves_other_producers_alone() {
        let mut model = shipped_gpt_int8();
        model.producer_name = "pytorch".into();
        assert_eq!(fuse_row_quantisation(&mut model), Fused::default());
    }

    #[test]
    fn keeps_a_pattern_whose_intermediate_is_read_elsewhere() {
        let mut model = shipped_gpt_int8();
        let matmuls = count(&model, "MatMulInteger");
        let graph = model.graph.as_mut().unwrap();
        // Expose the first Round (inside a quantisation) and the first Cast after a MatMulInteger.
        for op in ["Round", "MatMulInteger"] {
            let mut name = graph.node.iter().find(|n| n.op_type == op).unwrap().output[0].clone();
            if op == "MatMulInteger" {
                name = graph.node.iter().find(|n| n.op_type == "Cast" && n.input[0] == name).unwrap().output
                    [0]
                .clone();
            }
            graph.output.push(pb::ValueInfoProto { name, ..Default::default() });
        }
        let fused = fuse_row_quantisation(&mut model);
        assert_eq!(fused, Fused { quantize: matmuls - 1, dequantize: matmuls - 1 });
        assert_eq!(count(&model, "Round"), 1);
    }

    #[test]
    fn quantises_like_the_standard_nodes() {
        // Ties, a constant row, an all-negative row, a lone spike, a row longer than 8 lanes.
        let long: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let rows: [&[f32]; 5] =
            [&[0.5, 1.5, 2.5, -0.5], &[0.25; 4], &[-1.0, -2.0, -3.0, -4.0], &[0.0, 0.0, 1e-3, 100.0], &long];
        for row in rows {
            let (scale, lo) = row_scale(row, 255.0);
            let want_lo = row.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want_scale = (hi - want_lo).max(f32::MIN_POSITIVE) * (1.0 / 255.0);
            assert_eq!(lo.to_bits(), want_lo.to_bits());
            assert_eq!(scale.to_bits(), want_scale.to_bits());
            let mut codes = vec![0u8; row.len()];
            quantise_row(row, scale, lo, &mut codes);
            for (c, &v) in codes.iter().zip(row) {
                assert_eq!(*c, ((v - lo) / scale).round_ties_even() as u8, "{row:?}");
            }
            assert_eq!(codes.iter().min(), Some(&0), "{row:?}");

            // 16-bit digits: Round, then Floor(q · 1/256) and q − 256·high, as the exporter's nodes.
            let (scale, lo) = row_scale(row, 65535.0);
            let want_scale = (hi - want_lo).max(f32::MIN_POSITIVE) * (1.0 / 65535.0);
            assert_eq!(scale.to_bits(), want_scale.to_bits());
            let (mut high, mut low) = (vec![0u8; row.len()], vec![0u8; row.len()]);
            quantise_row_digits(row, scale, lo, &mut high, &mut low);
            for ((&h, &l), &v) in high.iter().zip(&low).zip(row) {
                let q = ((v - lo) / scale).round_ties_even();
                let want_high = (q * (1.0 / 256.0)).floor();
                assert_eq!((h, l), (want_high as u8, (q - want_high * 256.0) as u8), "{row:?}");
            }
        }
    }
}
