//! An int8 matrix product for the few-row case tract 0.23 has no kernel for: a decode step.
//!
//! The exporter's int8 matmuls are `MatMulInteger(codes u8 [..., K], weights i8 [K, N])` with no
//! zero points (the row's zero point is folded out afterwards, see `FerriteRowDequantize`). tract
//! runs them on its int8 tile kernels (AMX / AVX-512 VNNI 16×16 on this x86 machine, 8×8 on
//! arm64), which have no matrix-vector variant: a decode step multiplies by one activation row,
//! so 15 of every 16 columns of a tile are padding, and the int8 step came out *slower* than the
//! f32 one, which does have `fma_mmm_f32_64x1` (BENCHMARKS.md, issue 3).
//!
//! [`MatMulI8`] keeps the weights transposed (one row of K codes per output) and computes every
//! activation row as plain dot products (`kernels::matmul_i8`: AVX-VNNI `vpdpbusd` where the CPU
//! has it, four rows per load of a column; otherwise `pmaddwd`/`smlal` on codes widened to i16),
//! split by output columns over tract's thread pool when the plan has one and the product is
//! large. The product is exact integer arithmetic, so outputs are bit-identical to the unfused
//! graph (tests/fused_int8.rs).
//!
//! Cost: the transposed copy. tract's own `MatMulInteger` would keep the file's `[K, N]` tensor
//! and, at each run with more than a few rows, pack it into its tile layout (a transient the size
//! of the weights, widened: SmolLM2's 28 MB tied head took ~110 MB per prefill), and a plan of
//! it kept for prefills held one more copy. The file's tensor is dropped after loading unless
//! another node reads it (a tied table's embedding `Gather`). Applied to step graphs only
//! (decoders with a KV cache, LSTMs with a state), where it pays every generated token.

use std::fmt;
use std::sync::Arc;

use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{
    Expansion, Solver, TensorProxy, check_input_arity, check_output_arity,
};

use super::fuse::owned;
use crate::kernels::matmul_i8::matmul_rows;
use crate::rewrite::graph::GraphIndex;
use crate::rewrite::int8_pattern::DOMAIN;

/// Op type of the fused matmul node (registered in tract's ONNX op registry only).
pub(crate) const MATMUL_I8: &str = "FerriteMatMulI8";

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
        let op = MatMulI8::new(&weights)?;
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
    fn new(weights: &Tensor) -> TractResult<MatMulI8> {
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
        Ok(MatMulI8 { k, n, columns: columns.into() })
    }
}

impl Op for MatMulI8 {
    fn name(&self) -> StaticName {
        MATMUL_I8.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("K={} N={}, own dot products", self.k, self.n)])
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
        let codes = a.try_as_plain_ram()?;
        let mut out = vec![0i32; rows * self.n];
        let a = codes.as_slice::<u8>()?;
        super::split::by_columns(rows, self.k, self.n, &mut out, |cols, out| {
            matmul_rows(a, self.k, &self.columns, cols, out)
        });
        owned(&shape, out)
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

    /// Every row count equals a plain i64 reference, including extreme codes.
    #[test]
    fn both_paths_equal_the_definition() {
        let (k, n) = (37, 11);
        let op = MatMulI8::new(&weights(k, n)).unwrap();
        let w = weights(k, n);
        let w = w.try_as_plain_ram().unwrap();
        let w = w.as_slice::<i8>().unwrap();
        for rows in [1, 2, 4, 5, 9] {
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
            let op = MatMulI8::new(&weights(k, n)).unwrap();
            let out = op.multiply(owned(&[2, k], vec![7u8; 2 * k]).unwrap()).unwrap();
            assert_eq!(out.shape(), &[2, n]);
            assert!(out.try_as_plain_ram().unwrap().as_slice::<i32>().unwrap().iter().all(|&v| v == 0));
        }
    }

    #[test]
    fn wrong_width_is_an_error() {
        let op = MatMulI8::new(&weights(8, 3)).unwrap();
        let input = owned(&[1, 7], vec![0u8; 7]).unwrap();
        assert!(op.multiply(input).is_err());
    }
}
