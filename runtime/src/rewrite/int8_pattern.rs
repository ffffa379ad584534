//! The exporter's per-token int8 quantisation subgraphs, found in an ONNX protobuf and replaced
//! by two fused nodes (`ai.ferrite` domain): what both backends run instead of the ~14 (8-bit
//! codes) or ~24 (16-bit codes as two digits) standard nodes around each `MatMulInteger` of a
//! ferrite int8 export. tract runs the fused nodes as ops of its own (`backend/tract/fuse.rs`), ONNX
//! Runtime as custom operators (`backend/ort/ops.rs`); the arithmetic both use is `kernels/row_quant.rs`.
//!
//! - quantise: `ReduceMin`, `ReduceMax → Sub(min) → Max(MIN_POSITIVE) → Mul(1/255)` (scale),
//!   `Sub(x, min) → Div(scale) → Round → Cast(u8)` (codes) becomes one [`ROW_QUANTIZE`] node with
//!   three outputs (codes, scale, min); with 16-bit codes (`Mul(1/65535)`) the `Round` is
//!   followed by `Floor(q/256)`, `q − 256·high` and both digits stacked on a leading axis of 2,
//!   and the node gets `digits = 1` (codes `[2, ..., K]`);
//! - dequantise: `Cast(product → f32) → Mul(row scale)` (16-bit: `ReduceSum(Cast(product) ·
//!   [256, 1])` first), `Mul(row min, column sums)`, `Add`, `Mul(weight scales)` (and a dense
//!   layer's bias `Add`, then a residual `Add`) becomes one [`ROW_DEQUANTIZE`] node.
//!
//! A pattern is only replaced when every intermediate value is used inside it alone, the
//! constants are exactly the exporter's, and the file says it was written by ferrite's exporter.

use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto};

use super::graph::{GraphIndex, ONNX_FLOAT, fusable_graph, int_attr, int_scalar, ints_attr};

/// Op type of the fused quantisation node.
pub(crate) const ROW_QUANTIZE: &str = "FerriteRowQuantizeU8";
/// Op type of the fused dequantisation node.
pub(crate) const ROW_DEQUANTIZE: &str = "FerriteRowDequantize";
/// Domain of ferrite's fused nodes.
pub(crate) const DOMAIN: &str = "ai.ferrite";

/// ONNX `TensorProto.DataType` code of uint8 (the codes' `Cast`).
const ONNX_UINT8: i64 = 2;

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
pub(crate) struct Match {
    pub(crate) remove: Vec<usize>,
    pub(crate) insert_at: usize,
    pub(crate) node: NodeProto,
}

pub(crate) fn apply(graph: &mut GraphProto, m: Match) {
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
