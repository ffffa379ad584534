//! ferrite's custom operators for ONNX Runtime (ort's `operator` API, no new dependency), in
//! the `ai.ferrite` domain, registered with a session whose graph was rewritten at load:
//! - `FerriteInPlaceAttention`: a decoder layer's attention on a KV cache kept in place
//!   (`backend/ort/cache.rs` rewrites the graph; the arithmetic is `kernels/attention.rs`, shared with tract);
//! - `FerriteRowQuantizeU8` and `FerriteRowDequantize`: fused int8 quantisation, below.
//!
//! ONNX Runtime runs the standard nodes of a ferrite int8 export (14 per `MatMulInteger` with
//! 8-bit activation codes, 24 with 16-bit ones) one kernel dispatch each; at a decode step, where
//! every tensor is one row, the dispatches cost more than the integer products save (16-bit: the
//! int8 step was 1.1–1.2× the fp32 step; docs/onnxruntime.md). At load, the same
//! rewrite that tract uses (`rewrite/int8_pattern.rs`) replaces each pattern by two `ai.ferrite` nodes,
//! which compute what the replaced nodes compute (`kernels/row_quant.rs`, shared with tract's ops).
//! `MatMulInteger` itself stays ONNX Runtime's.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use super::cache::{IN_PLACE_ATTENTION, Layout, copy_positions};
use crate::kernels::attention::{CacheDims, cached_attention};
use crate::kernels::row_quant::{dequantise_rows, quantise_rows};
use crate::rewrite::int8_pattern::{DOMAIN, ROW_DEQUANTIZE, ROW_QUANTIZE};

/// The `ai.ferrite` domain with all three operators, to register on a session builder.
pub(crate) fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(RowQuantizeOp)?.add(RowDequantizeOp)?.add(InPlaceAttentionOp)
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

/// `(q, k, v f32 [B, S, H·D], past_key, past_value f32 [B, H, capacity, D], past_length i64
/// scalar)` → `(context f32 [B, S, H·D], present_key, present_value f32 [B, H, capacity, D])`:
/// the step's keys and values written at `past_length..past_length + S`, and causal attention
/// over positions `0..past_length + S` (`attend::cached_attention`). When a present output is
/// bound to its past input's buffer (ferrite's IO binding does that), the rows are written in
/// place; otherwise the past positions are copied into the output first.
struct InPlaceAttentionOp;

struct InPlaceAttentionKernel {
    heads: usize,
    scale: f32,
}

impl Operator for InPlaceAttentionOp {
    type Kernel<'attr> = InPlaceAttentionKernel;

    fn name(&self) -> &str {
        IN_PLACE_ATTENTION
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let f32_in = || OperatorInput::required(TensorElementType::Float32);
        [f32_in(), f32_in(), f32_in(), f32_in(), f32_in(), OperatorInput::required(TensorElementType::Int64)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [(); 3].map(|_| OperatorOutput::required(TensorElementType::Float32))
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<InPlaceAttentionKernel> {
        let heads = kctx.get::<i64>("num_heads").filter(|&h| h > 0);
        let scale = kctx.get::<f32>("scale");
        match (heads, scale) {
            (Some(heads), Some(scale)) => Ok(InPlaceAttentionKernel { heads: heads as usize, scale }),
            _ => Err(ort::Error::new(format!("{IN_PLACE_ATTENTION}: needs num_heads > 0 and scale"))),
        }
    }
}

/// The cache output `index` for a past input at `past_ptr` of `shape`: the same buffer when the
/// caller bound it so, else a fresh output holding a copy of the first `dims.past` positions.
fn cache_output<'c>(
    ctx: &'c ComputeContext,
    index: usize,
    past: &ort::value::ValueRef<'_>,
    shape: &[i64],
    dims: CacheDims,
) -> ort::Result<ort::value::ValueRefMut<'c>> {
    let op = IN_PLACE_ATTENTION;
    let past_ptr = past.try_extract_tensor::<f32>()?.1.as_ptr();
    let mut present = ctx.output(index, shape.to_vec())?.ok_or_else(|| missing(op, "present cache"))?;
    let (_, to) = present.try_extract_tensor_mut::<f32>()?;
    if to.as_ptr() != past_ptr {
        log::debug!("{op}: a present cache is not bound to its past buffer; copying the cache");
        let (_, from) = past.try_extract_tensor::<f32>()?;
        let layout = Layout::of_buffer(index - 1, dims.capacity);
        copy_positions((from, layout), (to, layout), (dims.batch, dims.heads, dims.past, dims.head_dim));
    }
    Ok(present)
}

impl Kernel for InPlaceAttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let op = IN_PLACE_ATTENTION;
        let input = |i: usize, what: &str| ctx.input(i)?.ok_or_else(|| missing(op, what));
        let (q, k, v) = (input(0, "queries")?, input(1, "keys")?, input(2, "values")?);
        let (past_key, past_value) = (input(3, "past keys")?, input(4, "past values")?);
        let past_length = input(5, "past length")?;
        let (step_shape, qs) = q.try_extract_tensor::<f32>()?;
        let step_shape = step_shape.to_vec();
        let (cache_shape, _) = past_key.try_extract_tensor::<f32>()?;
        let cache_shape = cache_shape.to_vec();
        let (_, past) = past_length.try_extract_tensor::<i64>()?;
        let fits = |shape: &[i64]| shape.iter().all(|&d| d >= 0);
        let (&[b, s, width], &[cb, ch, capacity, d], &[past]) =
            (step_shape.as_slice(), cache_shape.as_slice(), past)
        else {
            return Err(ort::Error::new(format!(
                "{op}: queries {step_shape:?} are not [B, S, H·D], caches {cache_shape:?} not [B, H, T, D], or the past length not a scalar"
            )));
        };
        let heads = self.heads as i64;
        if !fits(&step_shape)
            || !fits(&cache_shape)
            || past < 0
            || (cb, ch) != (b, heads)
            || width != heads * d
        {
            return Err(ort::Error::new(format!(
                "{op}: queries {step_shape:?} and caches {cache_shape:?} disagree ({heads} heads), past length {past}"
            )));
        }
        let dims = CacheDims {
            batch: b as usize,
            steps: s as usize,
            heads: self.heads,
            head_dim: d as usize,
            capacity: capacity as usize,
            past: past as usize,
        };
        let (_, ks) = k.try_extract_tensor::<f32>()?;
        let (_, vs) = v.try_extract_tensor::<f32>()?;
        let (_, past_values) = past_value.try_extract_tensor::<f32>()?;
        if past_values.len() != dims.cache_len() || dims.past + dims.steps > dims.capacity {
            return Err(ort::Error::new(format!(
                "{op}: {} positions after the step do not fit caches {cache_shape:?} (values: {} floats)",
                dims.past + dims.steps,
                past_values.len()
            )));
        }
        let mut present_key = cache_output(ctx, 1, &past_key, &cache_shape, dims)?;
        let mut present_value = cache_output(ctx, 2, &past_value, &cache_shape, dims)?;
        let mut context = ctx.output(0, step_shape)?.ok_or_else(|| missing(op, "context"))?;
        let (_, keys) = present_key.try_extract_tensor_mut::<f32>()?;
        let (_, values) = present_value.try_extract_tensor_mut::<f32>()?;
        let (_, out) = context.try_extract_tensor_mut::<f32>()?;
        cached_attention(qs, ks, vs, keys, values, dims, self.scale, out)
            .map_err(|e| ort::Error::new(format!("{op}: {e}")))
    }
}
