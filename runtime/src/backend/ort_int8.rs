//! ferrite's fused int8 quantisation as ONNX Runtime custom operators.
//!
//! ONNX Runtime runs the standard nodes of a ferrite int8 export (14 per `MatMulInteger` with
//! 8-bit activation codes, 24 with 16-bit ones) one kernel dispatch each; at a decode step, where
//! every tensor is one row, the dispatches cost more than the integer products save (16-bit: the
//! int8 step was 1.1–1.2× the fp32 step; docs/runtime.md, "Session 10"). At load, the same
//! rewrite that tract uses (`int8_pattern.rs`) replaces each pattern by two `ai.ferrite` nodes,
//! and this module registers them with the session as custom operators (ort's `operator` API):
//! `FerriteRowQuantizeU8` and `FerriteRowDequantize`, computing what the replaced nodes compute
//! (`row_quant.rs`, shared with tract's ops). `MatMulInteger` itself stays ONNX Runtime's.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use super::int8_pattern::{DOMAIN, ROW_DEQUANTIZE, ROW_QUANTIZE};
use super::row_quant::{dequantise_rows, quantise_rows};

/// The `ai.ferrite` domain with both operators, to register on a session builder.
pub(crate) fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(RowQuantizeOp)?.add(RowDequantizeOp)
}

fn flag(kctx: &KernelContext<'_>, name: &str) -> bool {
    kctx.get::<i64>(name).unwrap_or(0) == 1
}

fn missing(op: &str, what: &str) -> ort::Error {
    ort::Error::new(format!("{op}: no {what}"))
}

/// `x[..., D]` f32 → codes u8 `[..., D]` (`[2, ..., D]` with `digits`), row scale and row minimum
/// f32 `[..., 1]`.
struct RowQuantizeOp;

struct RowQuantizeKernel {
    digits: bool,
}

impl Operator for RowQuantizeOp {
    type Kernel<'attr> = RowQuantizeKernel;

    fn name(&self) -> &str {
        ROW_QUANTIZE
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [
            OperatorOutput::required(TensorElementType::Uint8),
            OperatorOutput::required(TensorElementType::Float32),
            OperatorOutput::required(TensorElementType::Float32),
        ]
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<RowQuantizeKernel> {
        Ok(RowQuantizeKernel { digits: flag(kctx, "digits") })
    }
}

impl Kernel for RowQuantizeKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let x = ctx.input(0)?.ok_or_else(|| missing(ROW_QUANTIZE, "input"))?;
        let (shape, xs) = x.try_extract_tensor::<f32>()?;
        let shape: Vec<i64> = shape.to_vec();
        let d = match shape.last() {
            Some(&d) if d > 0 => d as usize,
            _ => return Err(ort::Error::new(format!("{ROW_QUANTIZE}: rows of {shape:?}"))),
        };
        let mut row_shape = shape.clone();
        *row_shape.last_mut().expect("rank checked above") = 1;
        let mut codes_shape = shape.clone();
        if self.digits {
            codes_shape.insert(0, 2);
        }
        let mut codes = ctx.output(0, codes_shape)?.ok_or_else(|| missing(ROW_QUANTIZE, "codes"))?;
        let mut scales = ctx.output(1, row_shape.clone())?.ok_or_else(|| missing(ROW_QUANTIZE, "scales"))?;
        let mut minima = ctx.output(2, row_shape)?.ok_or_else(|| missing(ROW_QUANTIZE, "minima"))?;
        let (_, codes) = codes.try_extract_tensor_mut::<u8>()?;
        let (_, scales) = scales.try_extract_tensor_mut::<f32>()?;
        let (_, minima) = minima.try_extract_tensor_mut::<f32>()?;
        quantise_rows(xs, d, self.digits, codes, scales, minima);
        Ok(())
    }
}

/// `(product i32 [..., N] ([2, ..., N] with digits), row minimum, row scale, column sums,
/// weight scales(, bias)(, residual))` → f32 `[..., N]` (see `row_quant::dequantise_rows`).
struct RowDequantizeOp;

struct RowDequantizeKernel {
    bias: bool,
    residual: bool,
    digits: bool,
}

impl Operator for RowDequantizeOp {
    type Kernel<'attr> = RowDequantizeKernel;

    fn name(&self) -> &str {
        ROW_DEQUANTIZE
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f32_in = || OperatorInput::required(TensorElementType::Float32);
        [
            OperatorInput::required(TensorElementType::Int32),
            f32_in(),
            f32_in(),
            f32_in(),
            f32_in(),
            // The bias and/or the residual, in that order, as the node's flags say.
            OperatorInput::optional(TensorElementType::Float32),
            OperatorInput::optional(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<RowDequantizeKernel> {
        Ok(RowDequantizeKernel {
            bias: flag(kctx, "bias"),
            residual: flag(kctx, "residual"),
            digits: flag(kctx, "digits"),
        })
    }
}

impl Kernel for RowDequantizeKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let op = ROW_DEQUANTIZE;
        let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| missing(op, what));
        let product = input(0, "product")?;
        let (shape, acc) = product.try_extract_tensor::<i32>()?;
        let mut shape: Vec<i64> = shape.to_vec();
        let (acc, low) = if self.digits {
            if shape.first() != Some(&2) {
                return Err(ort::Error::new(format!("{op}: digit products {shape:?}")));
            }
            shape.remove(0);
            let (high, low) = acc.split_at(acc.len() / 2);
            (high, Some(low))
        } else {
            (acc, None)
        };
        let n = shape.last().copied().unwrap_or(0).max(0) as usize;
        let rows = acc.len().checked_div(n).unwrap_or(0);
        let minima = input(1, "row minima")?;
        let scale = input(2, "row scales")?;
        let sums = input(3, "column sums")?;
        let wscale = input(4, "weight scales")?;
        let (_, minima) = minima.try_extract_tensor::<f32>()?;
        let (_, scale) = scale.try_extract_tensor::<f32>()?;
        let (_, sums) = sums.try_extract_tensor::<f32>()?;
        let (_, wscale) = wscale.try_extract_tensor::<f32>()?;
        if minima.len() != rows || scale.len() != rows || sums.len() != n || wscale.len() != n {
            return Err(ort::Error::new(format!(
                "{op}: {rows} rows × {n} columns, got {} row minima, {} row scales, {} column sums, {} weight scales",
                minima.len(),
                scale.len(),
                sums.len(),
                wscale.len()
            )));
        }
        let mut next = 5;
        let bias = if self.bias {
            next += 1;
            Some(input(5, "bias")?)
        } else {
            None
        };
        let residual = if self.residual { Some(input(next, "residual")?) } else { None };
        let bias = bias.as_ref().map(|b| b.try_extract_tensor::<f32>().map(|(_, v)| v)).transpose()?;
        let residual =
            residual.as_ref().map(|r| r.try_extract_tensor::<f32>().map(|(_, v)| v)).transpose()?;
        if bias.is_some_and(|b| b.len() != n) || residual.is_some_and(|r| r.len() != acc.len()) {
            return Err(ort::Error::new(format!("{op}: a bias or residual does not fit {shape:?}")));
        }
        let mut out = ctx.output(0, shape)?.ok_or_else(|| missing(op, "output"))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        dequantise_rows(out, acc, low, minima, scale, sums, wscale, bias, residual);
        Ok(())
    }
}
