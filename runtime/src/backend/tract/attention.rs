//! Fused decoder attention for tract: one op of ferrite's own in place of the exporter's
//! keys-major attention block (exporter/src/arch/gpt2.rs), so a decode step reads the KV cache
//! once instead of copying it three times.
//!
//! The exporter writes, per layer, with `K`/`V` the cache after the step's `Concat`:
//! `Transpose(Q) → MatMul(K, Qᵀ) → Mul(scale) → Add(bias) → Softmax(axis −2)`, then
//! `Transpose(V) → MatMul(Vᵀ, probs) → Transpose(perm 0,3,1,2)`. Both backends run that, but in
//! tract every product packs its operands for the matrix kernels and the batch/head axes are
//! merged by a copy, so each decode step copied the whole cache of every layer about three
//! times; that copying is what made a step at position 200 cost 1.45× a step at position 10
//! (BENCHMARKS.md). [`Attention`] computes the same values straight from `Q`, `K`, `V` and the
//! bias: for one query row (a decode step) with plain loops over the cache, for more rows (a
//! prefill) with ndarray's matrix products. The order of the arithmetic is the graph's (scaled
//! dot products, then the bias, then a max-subtracted softmax), but sums run in a different
//! order than tract's kernels, so results agree to rounding, not bit for bit
//! (tests/fused_attention.rs compares logits and greedy ids with the unfused graph).
//!
//! Encoders (exporter/src/arch/bert.rs) write the usual query-major block, `MatMul(Q, Kᵀ) →
//! scale → Add(padding mask [B, 1, 1, T]) → Softmax(axis −1) → MatMul(probs, V) → Transpose`;
//! [`match_query_major`] fuses that into the same op, which then reads the mask as `[B, H, S, T]`
//! (`keys_major = 0`). There the gain is the softmax and the broadcasting mask `Add`, which tract
//! ran as separate passes over every `[B, H, S, T]` score tensor.

use tract_onnx::pb::{self, GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    Expansion, Solver, TensorProxy, check_input_arity, check_output_arity,
};

use super::fuse::owned;
use crate::kernels::attention::{dot, softmax};
use crate::rewrite::graph::{GraphIndex, int_attr, ints_attr};
use crate::rewrite::int8_pattern::{DOMAIN, Match};
use tract_onnx::tract_core::ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder, linalg::general_mat_mul};

/// Op type of the fused attention node (registered in tract's ONNX op registry only).
pub(crate) const ATTENTION: &str = "FerriteAttention";

/// `Transpose` with exactly this permutation.
fn is_transpose(n: &NodeProto, perm: &[i64]) -> bool {
    ints_attr(n, "perm") == Some(perm)
}

/// The block's last node: a one-input `Transpose` with permutation `perm`.
fn anchor<'g>(g: &'g GraphProto, at: usize, perm: &[i64]) -> Option<&'g NodeProto> {
    let n = &g.node[at];
    (n.op_type == "Transpose"
        && n.domain.is_empty()
        && n.input.len() == 1
        && n.output.len() == 1
        && is_transpose(n, perm))
    .then_some(n)
}

/// The scaled, biased scores both layouts share, `Add(Mul(MatMul(a, Transpose(b, perm
/// 0,1,3,2)), scale), bias)`, found from the `Add`'s output: each node with its index.
struct Scores<'g> {
    add: (usize, &'g NodeProto),
    mul: (usize, &'g NodeProto),
    scale: f32,
    product: (usize, &'g NodeProto),
    transposed: (usize, &'g NodeProto),
}

fn scores<'g>(ix: &GraphIndex<'_>, g: &'g GraphProto, name: &str) -> Option<Scores<'g>> {
    let add = ix.node(g, name, "Add", 2)?;
    let mul = ix.node(g, &add.1.input[0], "Mul", 2)?;
    let scale = ix.scalar_value(&mul.1.input[1])?;
    let product = ix.node(g, &mul.1.input[0], "MatMul", 2)?;
    let transposed = ix.node(g, &product.1.input[1], "Transpose", 1)?;
    is_transpose(transposed.1, &[0, 1, 3, 2]).then_some(Scores { add, mul, scale, product, transposed })
}

/// Matches one attention block, anchored at its last node (the context's `Transpose`).
pub(super) fn match_attention(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<Match> {
    let out = anchor(g, at, &[0, 3, 1, 2])?;
    let (ctx_i, ctx) = ix.node(g, &out.input[0], "MatMul", 2)?;
    let (vt_i, vt) = ix.node(g, &ctx.input[0], "Transpose", 1)?;
    let (sm_i, sm) = ix.node(g, &ctx.input[1], "Softmax", 1)?;
    if !is_transpose(vt, &[0, 1, 3, 2]) || sm.attribute.len() != 1 || int_attr(sm, "axis") != Some(-2) {
        return None;
    }
    let Scores {
        add: (add_i, add),
        mul: (mul_i, mul),
        scale,
        product: (scores_i, scores),
        transposed: (qt_i, qt),
    } = scores(ix, g, &sm.input[0])?;
    let private =
        [&ctx.output[0], &vt.output[0], &sm.output[0], &add.output[0], &scores.output[0], &qt.output[0]];
    if private.iter().any(|name| ix.uses(name) != 1) {
        return None;
    }
    // The first layer's scaled scores also feed the `Shape` that sizes the shared bias: then the
    // scores' MatMul and Mul stay for it (tract folds the Shape into a constant and prunes them).
    let shape_readers = ix.consumers.get(mul.output[0].as_str()).map_or(0, |c| {
        c.iter().filter(|&&i| g.node[i].op_type == "Shape" && g.node[i].domain.is_empty()).count()
    });
    if ix.uses(&mul.output[0]) != 1 + shape_readers {
        return None;
    }
    let mut remove = vec![at, ctx_i, vt_i, sm_i, add_i];
    if shape_readers == 0 {
        remove.extend([mul_i, scores_i, qt_i]);
    }
    let inputs = [&qt.input[0], &scores.input[0], &vt.input[0], &add.input[1]];
    let node = attention_node(out, inputs, scale, true);
    Some(Match { remove, insert_at: at, node })
}

/// Matches one encoder (query-major) attention block, as exporter/src/arch/bert.rs writes it:
/// `MatMul(Q, Transpose(K)) → Mul(scale) → Add(mask) → Softmax(axis −1) → MatMul(probs, V) →
/// Transpose(perm 0,2,1,3)`, anchored at that last `Transpose`.
pub(super) fn match_query_major(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<Match> {
    let out = anchor(g, at, &[0, 2, 1, 3])?;
    let (ctx_i, ctx) = ix.node(g, &out.input[0], "MatMul", 2)?;
    let (sm_i, sm) = ix.node(g, &ctx.input[0], "Softmax", 1)?;
    if sm.attribute.len() != 1 || !matches!(int_attr(sm, "axis"), Some(-1 | 3)) {
        return None;
    }
    let Scores {
        add: (add_i, add),
        mul: (mul_i, mul),
        scale,
        product: (scores_i, scores),
        transposed: (kt_i, kt),
    } = scores(ix, g, &sm.input[0])?;
    let private =
        [&ctx.output[0], &sm.output[0], &add.output[0], &mul.output[0], &scores.output[0], &kt.output[0]];
    if private.iter().any(|name| ix.uses(name) != 1) {
        return None;
    }
    let inputs = [&scores.input[0], &kt.input[0], &ctx.input[1], &add.input[1]];
    let node = attention_node(out, inputs, scale, false);
    Some(Match { remove: vec![at, ctx_i, sm_i, add_i, mul_i, scores_i, kt_i], insert_at: at, node })
}

/// The `FerriteAttention` node replacing a block whose last node is `out`.
fn attention_node(out: &NodeProto, inputs: [&String; 4], scale: f32, keys_major: bool) -> NodeProto {
    NodeProto {
        name: format!("{}.fused_attention", out.name),
        op_type: ATTENTION.into(),
        domain: DOMAIN.into(),
        // Q, K, V, additive bias
        input: inputs.iter().map(|s| (*s).clone()).collect(),
        output: vec![out.output[0].clone()],
        attribute: vec![
            pb::AttributeProto {
                name: "scale".into(),
                r#type: pb::attribute_proto::AttributeType::Float as i32,
                f: scale,
                ..Default::default()
            },
            pb::AttributeProto {
                name: "keys_major".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: keys_major as i64,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// `(Q f32 [B, H, S, D], K f32 [B, H, T, D], V f32 [B, H, T, D], bias f32 broadcastable to
/// [B, H, T, S] (keys-major, the decoder's) or [B, H, S, T] (query-major, the encoder's))` →
/// context f32 `[B, S, H, D]`, with `probs = softmax over T of (K·Qᵀ)·scale + bias` and
/// `context = probsᵀ·V`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct AttentionExpansion(pub(super) Attention);

impl Expansion for AttentionExpansion {
    fn name(&self) -> StaticName {
        ATTENTION.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        attention_rules(s, inputs, outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Typing rules of both attention ops: four f32 inputs (the first three rank 4), one f32
/// output `[B, S, H, D]` from Q's `[B, H, S, D]`.
pub(super) fn attention_rules<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
) -> TractResult<()> {
    check_input_arity(inputs, 4)?;
    check_output_arity(outputs, 1)?;
    for input in inputs {
        s.equals(&input.datum_type, f32::datum_type())?;
    }
    s.equals(&outputs[0].datum_type, f32::datum_type())?;
    s.equals(&inputs[0].rank, 4)?;
    s.equals(&outputs[0].rank, 4)?;
    s.given(&inputs[0].shape, move |s, q| {
        s.equals(&outputs[0].shape, tvec![q[0].clone(), q[2].clone(), q[1].clone(), q[3].clone()])
    })
}

/// Output fact of both attention ops (see [`attention_rules`]); `op` names the op in errors.
pub(super) fn attention_output_facts(op: &str, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
    ensure!(inputs.len() == 4, "{op}: wrong input count");
    for (f, what) in inputs.iter().zip(["Q", "K", "V", "bias"]) {
        ensure!(f.datum_type == f32::datum_type(), "{op} wants f32 {what}, got {:?}", f.datum_type);
    }
    ensure!(inputs[..3].iter().all(|f| f.rank() == 4), "{op}: Q, K, V must be rank 4");
    let shape = &inputs[0].shape;
    Ok(tvec!(f32::fact([shape[0].clone(), shape[2].clone(), shape[1].clone(), shape[3].clone()])))
}

/// The typed op behind [`AttentionExpansion`]; the scale is kept as its bits so the op is `Eq`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct Attention {
    scale_bits: u32,
    /// The bias is laid out `[B, H, T, S]` (else `[B, H, S, T]`).
    keys_major: bool,
}

impl Attention {
    pub(super) fn new(scale: f32, keys_major: bool) -> Attention {
        Attention { scale_bits: scale.to_bits(), keys_major }
    }
}

impl Op for Attention {
    fn name(&self) -> StaticName {
        ATTENTION.into()
    }

    op_as_typed_op!();
}

/// Element strides that read a bias of `shape` (rank ≤ 4, each dim 1 or the target's) as if
/// broadcast to `target`.
pub(super) fn broadcast_strides(shape: &[usize], target: [usize; 4]) -> TractResult<[usize; 4]> {
    ensure!(shape.len() <= 4, "{ATTENTION}: bias of rank {} for [B, H, T, S]", shape.len());
    let mut padded = [1usize; 4];
    padded[4 - shape.len()..].copy_from_slice(shape);
    let mut strides = [0usize; 4];
    let mut step = 1;
    for i in (0..4).rev() {
        ensure!(
            padded[i] == target[i] || padded[i] == 1,
            "{ATTENTION}: bias {shape:?} does not broadcast to {target:?}"
        );
        strides[i] = if padded[i] == 1 { 0 } else { step };
        step *= padded[i];
    }
    Ok(strides)
}

impl EvalOp for Attention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let scale = f32::from_bits(self.scale_bits);
        let (q, k, v, bias) = args_4!(inputs);
        let &[b, h, s, d] = q.shape() else { bail!("{ATTENTION}: Q {:?} is not [B, H, S, D]", q.shape()) };
        let &[kb, kh, t, kd] = k.shape() else { bail!("{ATTENTION}: K {:?} is not [B, H, T, D]", k.shape()) };
        ensure!(
            (kb, kh, kd) == (b, h, d) && v.shape() == k.shape(),
            "{ATTENTION}: Q {:?}, K {:?} and V {:?} disagree",
            q.shape(),
            k.shape(),
            v.shape()
        );
        // Strides of (batch, head, key, query) into the bias, whichever its layout.
        let strides = if self.keys_major {
            broadcast_strides(bias.shape(), [b, h, t, s])?
        } else {
            let [sb, sh, sq, sk] = broadcast_strides(bias.shape(), [b, h, s, t])?;
            [sb, sh, sk, sq]
        };
        let (q, k, v, bias) =
            (q.try_as_plain_ram()?, k.try_as_plain_ram()?, v.try_as_plain_ram()?, bias.try_as_plain_ram()?);
        let (q, k, v, bias) =
            (q.as_slice::<f32>()?, k.as_slice::<f32>()?, v.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        let mut out = vec![0f32; b * s * h * d];
        // probs for one (batch, head): S rows of T, query-major so the softmax runs along a row.
        let mut probs = vec![0f32; s * t];
        for bi in 0..b {
            for hi in 0..h {
                let head = (bi * h + hi) * t * d;
                let keys = Rows { data: k, base: head, stride: d };
                let values = Rows { data: v, base: head, stride: d };
                let qh = &q[(bi * h + hi) * s * d..][..s * d];
                let bias_at = |ti: usize, si: usize| {
                    bias[bi * strides[0] + hi * strides[1] + ti * strides[2] + si * strides[3]]
                };
                // Output rows for this head are D apart by H·D: [B, S, H, D].
                let out = &mut out[(bi * s * h + hi) * d..];
                attend_head(qh, keys, values, (s, t, d), scale, bias_at, &mut probs, out, h * d)?;
            }
        }
        Ok(tvec!(owned(&[b, s, h, d], out)?))
    }
}

impl TypedOp for Attention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        attention_output_facts(ATTENTION, inputs)
    }

    as_op!();
}

/// Where the keys (or values) of one attention head sit: row `t` (`D` floats) starts at
/// `data[base + t · stride]`. Head-major `[B, H, T, D]` tensors have `stride = D`; ferrite's
/// in-place KV cache for tract (`backend/tract/kv_cache.rs`) is position-major, `[T, B, H, D]`, so `stride = B · H · D`.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub base: usize,
    pub stride: usize,
}

impl<'a> Rows<'a> {
    fn row(&self, t: usize, d: usize) -> &'a [f32] {
        &self.data[self.base + t * self.stride..][..d]
    }

    /// The `t × d` matrix of the first `t` rows, for ndarray's matrix product.
    fn matrix(&self, t: usize, d: usize) -> TractResult<ArrayView2<'a, f32>> {
        if t == 0 {
            return Ok(ArrayView2::from_shape((0, d), &[][..])?);
        }
        Ok(ArrayView2::from_shape((t, d).strides((self.stride, 1)), &self.data[self.base..])?)
    }
}

/// One (batch, head) of attention: `s` query rows (`q`, contiguous `s × d`) against the first
/// `t` rows of `keys` and `values`; `bias_at(key, query)` is the additive bias. Writes the `s`
/// context rows to `out`, `row_stride` floats apart. `probs` is scratch of at least `s · t`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn attend_head(
    q: &[f32],
    keys: Rows<'_>,
    values: Rows<'_>,
    (s, t, d): (usize, usize, usize),
    scale: f32,
    bias_at: impl Fn(usize, usize) -> f32,
    probs: &mut [f32],
    out: &mut [f32],
    row_stride: usize,
) -> TractResult<()> {
    let probs = &mut probs[..s * t];
    if s == 1 {
        // A decode step: one pass over the cache for the scores, one for the context.
        for (ti, p) in probs.iter_mut().enumerate() {
            *p = dot(keys.row(ti, d), q) * scale + bias_at(ti, 0);
        }
        softmax(probs);
        let row = &mut out[..d];
        row.iter_mut().for_each(|o| *o = 0.0);
        for (ti, &p) in probs.iter().enumerate() {
            row.iter_mut().zip(values.row(ti, d)).for_each(|(o, &x)| *o += p * x);
        }
        return Ok(());
    }
    // A prefill: Q·Kᵀ and probs·V as matrix products.
    let qm = ArrayView2::from_shape((s, d), q)?;
    let km = keys.matrix(t, d)?;
    let mut pm = ArrayViewMut2::from_shape((s, t), &mut probs[..])?;
    general_mat_mul(1.0, &qm, &km.t(), 0.0, &mut pm);
    for (si, row) in probs.chunks_exact_mut(t.max(1)).take(s).enumerate() {
        row.iter_mut().enumerate().for_each(|(ti, p)| *p = *p * scale + bias_at(ti, si));
        softmax(row);
    }
    let pm = ArrayView2::from_shape((s, t), &probs[..])?;
    let vm = values.matrix(t, d)?;
    let mut om = ArrayViewMut2::from_shape((s, d).strides((row_stride, 1)), out)?;
    general_mat_mul(1.0, &pm, &vm, 0.0, &mut om);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_broadcasting() {
        assert_eq!(broadcast_strides(&[5, 1], [1, 4, 5, 1]).unwrap(), [0, 0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 4, 5, 3], [2, 4, 5, 3]).unwrap(), [60, 15, 3, 1]);
        assert_eq!(broadcast_strides(&[5, 3], [1, 4, 5, 3]).unwrap(), [0, 0, 3, 1]);
        assert!(broadcast_strides(&[6, 3], [1, 4, 5, 3]).is_err());
        assert!(broadcast_strides(&[1, 1, 1, 5, 3], [1, 4, 5, 3]).is_err());
    }
}
