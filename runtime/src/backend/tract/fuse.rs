//! Fused per-token int8 quantisation for tract: two ops of ferrite's own, put in place of the
//! standard-ONNX subgraphs the exporter writes around every int8 `MatMulInteger`.
//!
//! The exporter's int8 scheme (exporter/src/quant/int8.rs, `matmul_stored`) quantises each
//! activation row to uint8 codes over the row's own `[min, max]` range, and adds the row minimum
//! back after the integer product (`scale · (q·W) + min · Σ_i W_i`). In standard ONNX that is 9
//! element-wise/reduce nodes before the matmul and 5 after it, which both backends run — but
//! tract evaluates each node on its own (dispatch, an output allocation, a pass over the data),
//! and at a decode step, where every tensor is one row, those nodes cost more than the int8
//! matmul saves (measured: docs/tract.md, "Fused int8 quantisation").
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

use tract_onnx::pb::{ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_hir::internal::{
    Expansion, Solver, TensorProxy, check_input_arity, check_output_arity, expand,
};

use super::attention::{self, ATTENTION};
use super::kv_cache::{self, CACHED_ATTENTION, CachedAttention};
use super::matmul_i8::{self, MATMUL_I8};
use super::matmul_q4::{self, MATMUL_Q4};
use crate::kernels::row_quant::{dequantise_rows, quantise_rows};
use crate::rewrite::graph::{GraphIndex, fusable_graph};
use crate::rewrite::int8_pattern::apply;
pub(crate) use crate::rewrite::int8_pattern::{ROW_DEQUANTIZE, ROW_QUANTIZE, fuse_row_quantisation};

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
    onnx.op_register.insert(MATMUL_Q4, |_, node| {
        let k = usize::try_from(node.get_attr::<i64>("K")?)?;
        let n = usize::try_from(node.get_attr::<i64>("N")?)?;
        let bits = match node.get_attr_opt::<i64>("activation_bits")?.unwrap_or(16) {
            8 => crate::kernels::matmul_q4::ActivationBits::Eight,
            _ => crate::kernels::matmul_q4::ActivationBits::Sixteen,
        };
        Ok((expand(matmul_q4::MatMulQ4Expansion { k, n, bits }), vec![]))
    });
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
/// a ferrite-exported model into one `FerriteAttention` node each (see `backend/tract/attention.rs`); returns how many.
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
/// `backend/tract/matmul_i8.rs`); returns how many. Run after [`fuse_row_quantisation`], whose
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

/// A tensor holding `data` (tract copies it into its own aligned buffer).
pub(super) fn owned<T: Datum>(shape: &[usize], data: Vec<T>) -> TractResult<TValue> {
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
        quantise_rows(xs, d, self.digits, &mut codes, &mut scales, &mut minima);
        let mut codes_shape = shape.clone();
        if self.digits {
            codes_shape.insert(0, 2);
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
        dequantise_rows(&mut out, acc, low, minima, scale, sums, wscale, bias, residual);
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
    use crate::rewrite::int8_pattern::Fused;
    use tract_onnx::pb;

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
        // The shipped GPT has 16-bit activation codes (two digits): 16 nodes → 1 and 7 (+ bias
        // and residual Adds) → 1 per matmul (8-bit codes: 9 → 1 and 5 → 1).
        let after = model.graph.as_ref().unwrap().node.len();
        assert_eq!(after, nodes - matmuls * (15 + 6) - biases - residuals);
        let flags = |n: &NodeProto| n.attribute.iter().map(|a| a.i).collect::<Vec<_>>();
        let graph = model.graph.as_ref().unwrap();
        let with_residual =
            graph.node.iter().filter(|n| n.op_type == ROW_DEQUANTIZE && flags(n)[1] == 1).count();
        assert_eq!(with_residual, residuals);
        let digits =
            |op: &str| graph.node.iter().filter(|n| n.op_type == op && flags(n).last() == Some(&1)).count();
        assert_eq!((digits(ROW_QUANTIZE), digits(ROW_DEQUANTIZE)), (matmuls, matmuls));
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
}
