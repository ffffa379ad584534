//! An int8 matrix product for the few-row case tract 0.23 has no kernel for: a decode step.
//!
//! The exporter's int8 matmuls are `MatMulInteger(codes u8 [..., K], weights i8 [K, N])` with no
//! zero points (the row's zero point is folded out afterwards, see `FerriteRowDequantize`). tract
//! runs them on its int8 tile kernels (AMX / AVX-512 VNNI 16×16 on this x86 machine, 8×8 on
//! arm64), which have no matrix-vector variant: a decode step multiplies by one activation row,
//! so 15 of every 16 columns of a tile are padding, and the int8 step came out *slower* than the
//! f32 one, which does have `fma_mmm_f32_64x1` (BENCHMARKS.md, issue 3).
//!
//! [`MatMulI8`] keeps the weights transposed (one row of K codes per output) and computes up to
//! [`MAX_ROWS`] activation rows as plain dot products, widened to i16 so the compiler emits
//! `pmaddwd` (x86) or `smlal` (arm64); on x86-64 CPUs with AVX2 the same loop is compiled a
//! second time for AVX2 and picked at run time. More rows (a prefill) go to tract's own optimised
//! plan of the same `MatMulInteger`, built once per matmul when the graph is typed. The product is
//! exact integer arithmetic either way, so outputs are bit-identical to the unfused graph
//! (tests/fused_int8.rs).
//!
//! Cost: each fused matmul holds its int8 weights twice (the transposed copy and tract's packed
//! one), so the rewrite is applied only to step graphs (decoders with a KV cache, LSTMs with a
//! state), where it pays every generated token.

use std::fmt;
use std::sync::Arc;

use tract_onnx::pb::{self, GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    Expansion, Solver, TensorProxy, check_input_arity, check_output_arity,
};

use super::fuse::owned;
use crate::kernels::matmul_i8::dot_rows;
use crate::rewrite::graph::GraphIndex;
use crate::rewrite::int8_pattern::DOMAIN;

/// Op type of the fused matmul node (registered in tract's ONNX op registry only).
pub(crate) const MATMUL_I8: &str = "FerriteMatMulI8";

/// Activation rows up to which [`MatMulI8`] uses its own dot products; above, tract's tile
/// kernels win (measured on the shipped GPT's 4096 × 128 LM head: ~24 µs per row with AVX2
/// against ~80 µs for tract's first 16-row tile).
pub(crate) const MAX_ROWS: usize = 4;

/// ONNX `TensorProto.DataType` of int8.
const ONNX_INT8: i32 = 3;

/// A graph that generation steps through (see [`crate::backend::is_step_input`]).
pub(super) fn is_step_graph(g: &GraphProto) -> bool {
    g.input.iter().any(|i| crate::backend::is_step_input(&i.name))
}

/// `MatMulInteger(a, b)` with `b` a 2-D int8 initializer and no zero points → the
/// [`MATMUL_I8`] node that takes its place (same inputs and output).
pub(super) fn match_matmul_integer(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<NodeProto> {
    let n = &g.node[at];
    if n.op_type != "MatMulInteger" || !n.domain.is_empty() || n.input.len() != 2 || n.output.len() != 1 {
        return None;
    }
    let b = ix.initializer.get(n.input[1].as_str())?;
    if b.data_type != ONNX_INT8 || b.dims.len() != 2 {
        return None;
    }
    Some(NodeProto {
        name: format!("{}.fused_i8", n.name),
        op_type: MATMUL_I8.into(),
        domain: DOMAIN.into(),
        input: n.input.clone(),
        output: n.output.clone(),
        ..Default::default()
    })
}

/// `(a u8 [..., K], b i8 [K, N] constant)` → i32 `[..., N]`, `MatMulInteger` without zero points.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct MatMulI8Expansion;

impl Expansion for MatMulI8Expansion {
    fn name(&self) -> StaticName {
        MATMUL_I8.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, u8::datum_type())?;
        s.equals(&inputs[1].datum_type, i8::datum_type())?;
        s.equals(&outputs[0].datum_type, i32::datum_type())?;
        s.equals(&inputs[1].rank, 2)?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, a, b| {
            let mut c = a.clone();
            if let Some(last) = c.last_mut() {
                *last = b[1].clone();
            }
            s.equals(&outputs[0].shape, c)
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let weights = model
            .outlet_fact(inputs[1])?
            .konst
            .clone()
            .with_context(|| format!("{MATMUL_I8}: the weights of {prefix} are not a constant"))?;
        let op = MatMulI8::new(&weights, &model.symbols)?;
        model.wire_node(prefix, op, &inputs[..1])
    }
}

/// The typed op behind [`MatMulI8Expansion`]; the weights are its own, not an input.
#[derive(Clone)]
pub(crate) struct MatMulI8 {
    k: usize,
    n: usize,
    /// The weights transposed, `[N, K]`: output `j` is the dot product of a row with `columns[j]`.
    columns: Arc<[i8]>,
    /// tract's plan of `MatMulInteger(a [rows, K], weights)`, for more than [`MAX_ROWS`] rows.
    many_rows: Arc<TypedRunnableModel>,
}

impl fmt::Debug for MatMulI8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MATMUL_I8}(K={}, N={})", self.k, self.n)
    }
}

impl PartialEq for MatMulI8 {
    fn eq(&self, other: &Self) -> bool {
        self.k == other.k && self.n == other.n && self.columns == other.columns
    }
}

impl Eq for MatMulI8 {}

impl MatMulI8 {
    /// `symbols`: the scope of the model being typed, which the inner plan must share (see
    /// [`plan_matmul_integer`]).
    fn new(weights: &Tensor, symbols: &SymbolScope) -> TractResult<MatMulI8> {
        let &[k, n] = weights.shape() else {
            bail!("{MATMUL_I8}: weights {:?} are not [K, N]", weights.shape())
        };
        let w = weights.try_as_plain_ram()?;
        let w = w.as_slice::<i8>()?;
        let mut columns = vec![0i8; k * n];
        for (ki, row) in w.chunks(n.max(1)).enumerate().take(k) {
            for (ni, &v) in row.iter().enumerate() {
                columns[ni * k + ki] = v;
            }
        }
        Ok(MatMulI8 { k, n, columns: columns.into(), many_rows: plan_matmul_integer(k, n, w, symbols)? })
    }

    /// `out[r·N + j] = Σₖ a[r·K + k] · w[k, j]` for every row of `a`.
    fn rows(&self, a: &[u8], out: &mut [i32]) {
        if self.k == 0 || self.n == 0 {
            out.fill(0); // an empty sum (or no output at all)
            return;
        }
        let mut wide = vec![0i16; self.k];
        for (row, out) in a.chunks_exact(self.k).zip(out.chunks_exact_mut(self.n)) {
            wide.iter_mut().zip(row).for_each(|(w, &v)| *w = i16::from(v));
            dot_rows(&wide, &self.columns, out);
        }
    }
}

/// tract's own optimised plan of `MatMulInteger(a u8 [rows, K], w i8 [K, N])`, parsed from a
/// one-node ONNX graph so it is exactly what tract would have run in place of [`MatMulI8`].
///
/// The inner model is built in the symbol scope of the model being typed: tract caches symbolic
/// proofs per thread for the scope it is optimising (`ProofCacheSession`), and a second scope
/// optimised inside that session would read and fill the outer scope's cache (a debug assertion
/// in tract-data, `ProofCacheSession scope_id mismatch`; silently shared proofs in release).
fn plan_matmul_integer(
    k: usize,
    n: usize,
    w: &[i8],
    symbols: &SymbolScope,
) -> TractResult<Arc<TypedRunnableModel>> {
    use pb::tensor_shape_proto::{Dimension, dimension::Value as Dim};
    let dim = |value| Dimension { value: Some(value), ..Default::default() };
    let tensor_type = |elem_type: i32, dims: Vec<Dimension>| pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type,
            shape: Some(pb::TensorShapeProto { dim: dims }),
        })),
        ..Default::default()
    };
    let graph = GraphProto {
        node: vec![NodeProto {
            op_type: "MatMulInteger".into(),
            input: vec!["a".into(), "w".into()],
            output: vec!["c".into()],
            ..Default::default()
        }],
        initializer: vec![pb::TensorProto {
            name: "w".into(),
            dims: vec![k as i64, n as i64],
            data_type: ONNX_INT8,
            raw_data: w.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        }],
        input: vec![pb::ValueInfoProto {
            name: "a".into(),
            r#type: Some(tensor_type(
                2,
                vec![dim(Dim::DimParam("rows".into())), dim(Dim::DimValue(k as i64))],
            )),
            ..Default::default()
        }],
        output: vec![pb::ValueInfoProto { name: "c".into(), ..Default::default() }],
        ..Default::default()
    };
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(graph),
        ..Default::default()
    };
    let template = InferenceModel { symbols: symbols.clone(), ..Default::default() };
    tract_onnx::onnx()
        .model_for_proto_model_with_model_template(&proto, template)?
        .into_optimized()?
        .into_runnable()
}

impl Op for MatMulI8 {
    fn name(&self) -> StaticName {
        MATMUL_I8.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("K={} N={}, own dot products up to {MAX_ROWS} rows", self.k, self.n)])
    }

    op_as_typed_op!();
}

impl EvalOp for MatMulI8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = args_1!(inputs);
        Ok(tvec!(self.multiply(a)?))
    }
}

impl MatMulI8 {
    fn multiply(&self, a: TValue) -> TractResult<TValue> {
        let mut shape = a.shape().to_vec();
        ensure!(shape.last() == Some(&self.k), "{MATMUL_I8}: input {shape:?} does not end in K = {}", self.k);
        let rows = shape[..shape.len() - 1].iter().product::<usize>();
        *shape.last_mut().expect("rank checked above") = self.n;
        if rows <= MAX_ROWS {
            let codes = a.try_as_plain_ram()?;
            let mut out = vec![0i32; rows * self.n];
            self.rows(codes.as_slice::<u8>()?, &mut out);
            return owned(&shape, out);
        }
        let a = a.into_tensor().into_shape(&[rows, self.k])?;
        let c = self.many_rows.run(tvec!(a.into_tvalue()))?.remove(0);
        Ok(c.into_tensor().into_shape(&shape)?.into_tvalue())
    }
}

impl TypedOp for MatMulI8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let a = inputs[0];
        ensure!(a.datum_type == u8::datum_type(), "{MATMUL_I8} wants u8 codes, got {:?}", a.datum_type);
        ensure!(a.rank() > 0, "{MATMUL_I8} of a scalar");
        let mut shape: TVec<TDim> = a.shape.iter().cloned().collect();
        *shape.last_mut().expect("rank checked above") = self.n.to_dim();
        Ok(tvec!(i32::fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(k: usize, n: usize) -> Tensor {
        let w: Vec<i8> = (0..k * n).map(|i| ((i * 91 % 255) as i32 - 127) as i8).collect();
        tract_onnx::tract_core::ndarray::Array2::from_shape_vec((k, n), w).unwrap().into()
    }

    /// Every row count on both paths equals a plain i64 reference, including extreme codes.
    #[test]
    fn both_paths_equal_the_definition() {
        let (k, n) = (37, 11);
        let op = MatMulI8::new(&weights(k, n), &SymbolScope::default()).unwrap();
        let w = weights(k, n);
        let w = w.try_as_plain_ram().unwrap();
        let w = w.as_slice::<i8>().unwrap();
        for rows in [1, 2, MAX_ROWS, MAX_ROWS + 1, 9] {
            let a: Vec<u8> = (0..rows * k).map(|i| [0u8, 255, (i * 37 % 256) as u8][i % 3]).collect();
            let input = owned(&[1, rows, k], a.clone()).unwrap();
            let out = op.multiply(input).unwrap();
            assert_eq!(out.shape(), &[1, rows, n]);
            let got = out.try_as_plain_ram().unwrap();
            let got = got.as_slice::<i32>().unwrap();
            for r in 0..rows {
                for j in 0..n {
                    let want: i64 = (0..k).map(|x| i64::from(a[r * k + x]) * i64::from(w[x * n + j])).sum();
                    assert_eq!(i64::from(got[r * n + j]), want, "rows {rows}, ({r}, {j})");
                }
            }
        }
    }

    /// Degenerate weights (`K = 0` or `N = 0`) give zeros or nothing, as `MatMulInteger` does.
    #[test]
    fn empty_weights() {
        for (k, n) in [(0, 3), (3, 0), (0, 0)] {
            let op = MatMulI8::new(&weights(k, n), &SymbolScope::default()).unwrap();
            let out = op.multiply(owned(&[2, k], vec![7u8; 2 * k]).unwrap()).unwrap();
            assert_eq!(out.shape(), &[2, n]);
            assert!(out.try_as_plain_ram().unwrap().as_slice::<i32>().unwrap().iter().all(|&v| v == 0));
        }
    }

    #[test]
    fn wrong_width_is_an_error() {
        let op = MatMulI8::new(&weights(8, 3), &SymbolScope::default()).unwrap();
        let input = owned(&[1, 7], vec![0u8; 7]).unwrap();
        assert!(op.multiply(input).is_err());
    }
}
