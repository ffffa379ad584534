//! An in-place KV cache for tract: each decoder layer's attention keeps its keys and values in
//! the op's own state, appends a step's rows where they belong and reads them where they lie.
//!
//! In the exported graph (exporter/src/arch/gpt2.rs) a step's keys reach the attention through
//! `present_key.i = Concat(past_key.i, k_new, axis 2)`, and `present_key.i` comes back as the
//! next step's `past_key.i`. ONNX values are immutable, so that `Concat` rebuilds every layer's
//! cache at every step: at position 200 of the shipped GPT, 8 copies of 100 KB per step, the
//! largest cost that grows with the position (BENCHMARKS.md). tract tensors cannot grow in place
//! either (`Tensor` has no capacity, and its `deep_clone` copies as many bytes as the storage
//! holds into a buffer sized by the shape, so a tensor whose storage outgrows its shape is not
//! an option).
//!
//! [`fuse_kv_cache`] therefore rewrites a step graph whose every cache input feeds exactly such a
//! `Concat` in front of a fused attention (`FerriteAttention`, keys-major): the `Concat`s, the
//! `past_*` inputs and `present_*` outputs go, and each attention becomes one
//! [`CachedAttention`] node reading `(Q, K_new, V_new, bias)`. Its [`KvCache`] state holds the
//! layer's keys and values position-major (`[T, B, H, D]`, so a step's rows are appended at the
//! end of a `Vec`, amortised O(1)) and computes the attention over them with the same kernel as
//! `FerriteAttention`. The one other reader of a cache input, `Gather(Shape(past_key.0), 2)` —
//! the past length, for positions and the causal mask — becomes the graph input
//! [`PAST_LENGTH`], which the backend feeds from the cache.
//!
//! The backend (`backend/tract.rs`) keeps one tract state per session for such a plan, loads
//! given cache tensors into the op states, copies them out when asked, and truncates every cache
//! back to its length before a step that failed (appending never touches earlier rows), so a
//! failed step loses nothing.

use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::{Expansion, Solver, TensorProxy};

use super::attention::{
    ATTENTION, Rows, attend_head, attention_output_facts, attention_rules, broadcast_strides,
};
use super::fuse::owned;
use crate::kernels::attention::{dot, softmax};
use crate::rewrite::graph::{
    GraphIndex, ONNX_INT64, fusable_graph, int_attr, past_length_gather, past_length_node, remove_dead_nodes,
    value_info,
};
use crate::rewrite::int8_pattern::DOMAIN;

/// Op type of the cached attention node (registered in tract's ONNX op registry only).
pub(crate) const CACHED_ATTENTION: &str = "FerriteCachedAttention";
pub(crate) use crate::rewrite::graph::{CacheNames, Half, PAST_LENGTH};

/// A keys-major `FerriteAttention` node whose K and V are `Concat(past, new, axis 2)` of graph
/// inputs, each `Concat` read only by it and as a graph output: (node index, the two `Concat`
/// indices, the names).
fn match_cached(ix: &GraphIndex<'_>, g: &GraphProto, at: usize) -> Option<(usize, usize, usize, CacheNames)> {
    let n = &g.node[at];
    if n.op_type != ATTENTION
        || n.domain != DOMAIN
        || n.input.len() != 4
        || int_attr(n, "keys_major") != Some(1)
    {
        return None;
    }
    let is_input = |name: &str| g.input.iter().any(|i| i.name == name);
    let is_output = |name: &str| g.output.iter().any(|o| o.name == name);
    let concat = |name: &str| -> Option<(usize, String)> {
        let (i, c) = ix.node(g, name, "Concat", 2)?;
        let ok = int_attr(c, "axis") == Some(2)
            && is_input(&c.input[0])
            && !ix.initializer.contains_key(c.input[0].as_str())
            && is_output(name)
            && ix.uses(name) == 2
            && ix.consumers.get(name).is_some_and(|c| c.as_slice() == [at]);
        ok.then(|| (i, c.input[0].clone()))
    };
    let (ck, past_key) = concat(&n.input[1])?;
    let (cv, past_value) = concat(&n.input[2])?;
    let names = CacheNames {
        past_key,
        present_key: n.input[1].clone(),
        past_value,
        present_value: n.input[2].clone(),
    };
    Some((at, ck, cv, names))
}

/// Rewrites a ferrite-exported decoder step graph for the in-place cache (see the module docs);
/// returns the layers' cache names in layer order, or nothing (graph untouched) unless every
/// `past_*` input and every reader of one fits the pattern. Run after `fuse_attention`.
pub(crate) fn fuse_kv_cache(model: &mut ModelProto) -> Vec<CacheNames> {
    let Some(graph) = fusable_graph(model) else { return Vec::new() };
    unexpand_biases(graph);
    let index = GraphIndex::new(graph);
    let layers: Vec<_> = (0..graph.node.len()).filter_map(|i| match_cached(&index, graph, i)).collect();
    let cache_inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| n.starts_with("past_key") || n.starts_with("past_value"))
        .collect();
    if layers.is_empty() || cache_inputs.len() != 2 * layers.len() {
        return Vec::new();
    }
    // Every other reader of a cache input is `Shape`, read only by `Gather(·, 2, axis 0)`.
    let mut lengths = Vec::new();
    for (_, ck, cv, names) in &layers {
        for (past, concat) in [(&names.past_key, *ck), (&names.past_value, *cv)] {
            for &reader in index.consumers.get(past.as_str()).map(Vec::as_slice).unwrap_or_default() {
                if reader == concat {
                    continue;
                }
                let Some(gather) = past_length_gather(&index, graph, reader) else { return Vec::new() };
                lengths.push((reader, gather));
            }
        }
    }
    let names: Vec<CacheNames> = layers.iter().map(|(_, _, _, n)| n.clone()).collect();
    let mut remove = vec![false; graph.node.len()];
    let mut replace: Vec<(usize, NodeProto)> = Vec::new();
    for (layer, (at, ck, cv, _)) in layers.iter().enumerate() {
        remove[*ck] = true;
        remove[*cv] = true;
        let old = &graph.node[*at];
        let k_new = graph.node[*ck].input[1].clone();
        let v_new = graph.node[*cv].input[1].clone();
        let mut attribute: Vec<pb::AttributeProto> =
            old.attribute.iter().filter(|a| a.name == "scale").cloned().collect();
        attribute.push(pb::AttributeProto {
            name: "layer".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: layer as i64,
            ..Default::default()
        });
        replace.push((
            *at,
            NodeProto {
                name: format!("{}.cached", old.name),
                op_type: CACHED_ATTENTION.into(),
                domain: DOMAIN.into(),
                input: vec![old.input[0].clone(), k_new, v_new, old.input[3].clone()],
                output: old.output.clone(),
                attribute,
                ..Default::default()
            },
        ));
    }
    for (shape, gather) in lengths {
        remove[shape] = true;
        replace.push((gather, past_length_node(&graph.node[gather])));
    }
    drop(index);
    for (i, node) in replace {
        graph.node[i] = node;
    }
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !remove[i - 1]
    });
    let cached = |name: &str| names.iter().any(|n| n.past_key == name || n.past_value == name);
    graph.input.retain(|v| !cached(&v.name));
    let present = |name: &str| names.iter().any(|n| n.present_key == name || n.present_value == name);
    graph.output.retain(|v| !present(&v.name));
    graph.input.push(value_info(PAST_LENGTH, ONNX_INT64, &[]));
    names
}

/// The exporter shares one causal bias between the layers, `Expand(bias, Shape(layer 0's
/// scores))`; the attention ops broadcast it themselves, so they read the `Expand`'s input and
/// the `Expand`, its `Shape` and the layer-0 score product kept only for that `Shape` (which reads
/// layer 0's cache) go.
fn unexpand_biases(graph: &mut GraphProto) {
    let index = GraphIndex::new(graph);
    let mut swaps = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        if n.op_type != ATTENTION || n.domain != DOMAIN || n.input.len() != 4 {
            continue;
        }
        let Some((_, expand)) = index.node(graph, &n.input[3], "Expand", 2) else { continue };
        if index.node(graph, &expand.input[1], "Shape", 1).is_some() {
            swaps.push((i, expand.input[0].clone()));
        }
    }
    drop(index);
    for (i, bias) in swaps {
        graph.node[i].input[3] = bias;
    }
    remove_dead_nodes(graph);
}

/// `(Q f32 [B, H, S, D], K_new f32 [B, H, S, D], V_new f32 [B, H, S, D], bias f32 broadcastable to
/// [B, H, T, S])` → context f32 `[B, S, H, D]` over the `T = past + S` cached positions.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct CachedAttentionExpansion(pub(super) CachedAttention);

impl Expansion for CachedAttentionExpansion {
    fn name(&self) -> StaticName {
        CACHED_ATTENTION.into()
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

/// The typed op behind [`CachedAttentionExpansion`]: attention over a cache kept in its
/// [`KvCache`] state. `layer` tells the backend which file inputs/outputs the state stands for.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct CachedAttention {
    scale_bits: u32,
    pub(crate) layer: usize,
}

impl CachedAttention {
    pub(super) fn new(scale: f32, layer: usize) -> CachedAttention {
        CachedAttention { scale_bits: scale.to_bits(), layer }
    }
}

impl Op for CachedAttention {
    fn name(&self) -> StaticName {
        CACHED_ATTENTION.into()
    }

    op_as_typed_op!();
}

impl EvalOp for CachedAttention {
    not_out_of_plan!();

    fn state(&self, _ctx: &EvalContext) -> TractResult<Option<Box<dyn OpState>>> {
        Ok(Some(Box::new(KvCache::default())))
    }
}

impl TypedOp for CachedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        attention_output_facts(CACHED_ATTENTION, inputs)
    }

    as_op!();
}

/// One layer's keys and values, position-major: row `(t, b, h)` (`D` floats) at
/// `((t · B + b) · H + h) · D`. `dims` is `(B, H, D)` once known.
#[derive(Debug, Clone, Default)]
pub(crate) struct KvCache {
    dims: Option<(usize, usize, usize)>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    fn row_len(&self) -> usize {
        self.dims.map_or(0, |(b, h, d)| b * h * d)
    }

    fn half(&self, half: Half) -> &Vec<f32> {
        match half {
            Half::Keys => &self.keys,
            Half::Values => &self.values,
        }
    }

    /// Positions held in `half` (0 when empty or never set).
    pub(crate) fn len(&self, half: Half) -> usize {
        self.half(half).len().checked_div(self.row_len()).unwrap_or(0)
    }

    /// `[B, H, T, D]` of `half`, once its dims are known.
    pub(crate) fn shape(&self, half: Half) -> Option<Vec<usize>> {
        self.dims.map(|(b, h, d)| vec![b, h, self.len(half), d])
    }

    /// Forgets every position from `len` on (the rows before stay as they are).
    pub(crate) fn truncate(&mut self, len: usize) {
        let n = len * self.row_len();
        self.keys.truncate(n);
        self.values.truncate(n);
    }

    /// Replaces `half` with a head-major `[B, H, T, D]` tensor's data. The other half keeps its
    /// rows only if it has the same `(B, H, D)`.
    pub(crate) fn load(&mut self, half: Half, shape: &[usize], data: &[f32]) -> TractResult<()> {
        let &[b, h, t, d] = shape else { bail!("a KV cache is [B, H, T, D], got {shape:?}") };
        ensure!(data.len() == b * h * t * d, "{shape:?} with {} values", data.len());
        if self.dims != Some((b, h, d)) {
            self.keys.clear();
            self.values.clear();
            self.dims = Some((b, h, d));
        }
        let dst = match half {
            Half::Keys => &mut self.keys,
            Half::Values => &mut self.values,
        };
        dst.clear();
        append_rows(dst, data, (b, h, t, d));
        Ok(())
    }

    /// `half` as a head-major `[B, H, T, D]` tensor's data.
    pub(crate) fn read(&self, half: Half) -> Vec<f32> {
        let Some((b, h, d)) = self.dims else { return Vec::new() };
        let (src, t) = (self.half(half), self.len(half));
        let mut out = Vec::with_capacity(src.len());
        for bi in 0..b {
            for hi in 0..h {
                for ti in 0..t {
                    out.extend_from_slice(&src[((ti * b + bi) * h + hi) * d..][..d]);
                }
            }
        }
        out
    }
}

impl KvCache {
    /// Attention of one query row per (batch, head) over all `t` cached positions, walking the
    /// position-major cache front to back (all heads of a position together) for the scores and
    /// again for the context: one sequential pass over each half. Per head the sums are those of
    /// `attend_head`'s decode path, in the same order. On x86-64 CPUs with AVX2 the same code is
    /// compiled for AVX2 (twice the lanes; no FMA, so the same roundings): 13.9 → 8.1 µs per
    /// layer of the shipped GPT at position 200 with the cache in L2 (docs/tract.md).
    fn decode_step(
        &self,
        q: &[f32],
        dims: (usize, usize, usize, usize),
        scale: f32,
        bias_at: impl Fn(usize, usize, usize) -> f32,
    ) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: `decode_step_avx2` only requires AVX2, which the line above found on this CPU.
            return unsafe { self.decode_step_avx2(q, dims, scale, bias_at) };
        }
        self.decode_step_portable(q, dims, scale, bias_at)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn decode_step_avx2(
        &self,
        q: &[f32],
        dims: (usize, usize, usize, usize),
        scale: f32,
        bias_at: impl Fn(usize, usize, usize) -> f32,
    ) -> Vec<f32> {
        self.decode_step_portable(q, dims, scale, bias_at)
    }

    #[inline(always)]
    fn decode_step_portable(
        &self,
        q: &[f32],
        (b, h, t, d): (usize, usize, usize, usize),
        scale: f32,
        bias_at: impl Fn(usize, usize, usize) -> f32,
    ) -> Vec<f32> {
        let heads = b * h;
        let mut probs = vec![0f32; heads * t];
        let mut scores = vec![0f32; heads];
        for (ti, rows) in self.keys.chunks_exact(heads * d).take(t).enumerate() {
            for ((score, key), q) in scores.iter_mut().zip(rows.chunks_exact(d)).zip(q.chunks_exact(d)) {
                *score = dot(key, q);
            }
            for bi in 0..b {
                for hi in 0..h {
                    let bh = bi * h + hi;
                    probs[bh * t + ti] = scores[bh] * scale + bias_at(bi, hi, ti);
                }
            }
        }
        probs.chunks_exact_mut(t).for_each(softmax);
        // Output [B, 1, H, D]: (batch, head) row bh at bh · D, as in the cache rows.
        let mut out = vec![0f32; heads * d];
        for (ti, rows) in self.values.chunks_exact(heads * d).take(t).enumerate() {
            for (bh, (o, value)) in out.chunks_exact_mut(d).zip(rows.chunks_exact(d)).enumerate() {
                let p = probs[bh * t + ti];
                o.iter_mut().zip(value).for_each(|(o, &x)| *o += p * x);
            }
        }
        out
    }
}

/// Appends a head-major `[B, H, S, D]` block to a position-major cache.
fn append_rows(dst: &mut Vec<f32>, src: &[f32], (b, h, s, d): (usize, usize, usize, usize)) {
    dst.reserve(src.len());
    for si in 0..s {
        for bi in 0..b {
            for hi in 0..h {
                dst.extend_from_slice(&src[((bi * h + hi) * s + si) * d..][..d]);
            }
        }
    }
}

impl OpState for KvCache {
    fn eval(&mut self, _ctx: &EvalContext, op: &dyn Op, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = op.downcast_ref::<CachedAttention>().context("KvCache state on another op")?;
        let scale = f32::from_bits(op.scale_bits);
        let (q, k, v, bias) = args_4!(inputs);
        let &[b, h, s, d] = q.shape() else {
            bail!("{CACHED_ATTENTION}: Q {:?} is not [B, H, S, D]", q.shape())
        };
        ensure!(
            k.shape() == q.shape() && v.shape() == q.shape(),
            "{CACHED_ATTENTION}: Q {:?}, K {:?} and V {:?} disagree",
            q.shape(),
            k.shape(),
            v.shape()
        );
        match self.dims {
            None => self.dims = Some((b, h, d)),
            Some(dims) => ensure!(
                dims == (b, h, d),
                "{CACHED_ATTENTION}: a step of [B, H, D] = {:?} on a cache of {dims:?}",
                (b, h, d)
            ),
        }
        let past = self.len(Half::Keys);
        ensure!(
            self.len(Half::Values) == past,
            "{CACHED_ATTENTION}: layer {} holds {past} keys but {} values",
            op.layer,
            self.len(Half::Values)
        );
        let t = past + s;
        let strides = broadcast_strides(bias.shape(), [b, h, t, s])?;
        let (q, k, v, bias) =
            (q.try_as_plain_ram()?, k.try_as_plain_ram()?, v.try_as_plain_ram()?, bias.try_as_plain_ram()?);
        let (q, k, v, bias) =
            (q.as_slice::<f32>()?, k.as_slice::<f32>()?, v.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        append_rows(&mut self.keys, k, (b, h, s, d));
        append_rows(&mut self.values, v, (b, h, s, d));
        if s == 1 {
            let out = self.decode_step(q, (b, h, t, d), scale, |bi, hi, ti| {
                bias[bi * strides[0] + hi * strides[1] + ti * strides[2]]
            });
            return Ok(tvec!(owned(&[b, 1, h, d], out)?));
        }
        let mut out = vec![0f32; b * s * h * d];
        let mut probs = vec![0f32; s * t];
        for bi in 0..b {
            for hi in 0..h {
                let base = (bi * h + hi) * d;
                let keys = Rows { data: &self.keys, base, stride: b * h * d };
                let values = Rows { data: &self.values, base, stride: b * h * d };
                let qh = &q[(bi * h + hi) * s * d..][..s * d];
                let bias_at = |ti: usize, si: usize| {
                    bias[bi * strides[0] + hi * strides[1] + ti * strides[2] + si * strides[3]]
                };
                let out = &mut out[(bi * s * h + hi) * d..];
                attend_head(qh, keys, values, (s, t, d), scale, bias_at, &mut probs, out, h * d)?;
            }
        }
        Ok(tvec!(owned(&[b, s, h, d], out)?))
    }

    fn reset_lanes(&mut self, _lanes: &[LaneId]) -> TractResult<()> {
        bail!("{CACHED_ATTENTION} keeps one stream's cache: it cannot serve lanes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_gpt_with_fused_attention() -> ModelProto {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/shakespeare-gpt/int8/model.onnx");
        let mut model = crate::Model::open(path).unwrap().proto().unwrap();
        assert_eq!(super::super::fuse::fuse_attention(&mut model), 4);
        model
    }

    fn count(model: &ModelProto, op: &str) -> usize {
        model.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == op).count()
    }

    #[test]
    fn rewrites_every_layer_or_none() {
        let mut model = shipped_gpt_with_fused_attention();
        let names = fuse_kv_cache(&mut model);
        assert_eq!(names.len(), 4);
        assert_eq!(names[3].present_value, "present_value.3");
        let graph = model.graph.as_ref().unwrap();
        // The Concats left are the 16-bit activation digits' stacking, one per int8 matmul.
        assert_eq!(
            (count(&model, CACHED_ATTENTION), count(&model, ATTENTION), count(&model, "Concat")),
            (4, 0, count(&model, "MatMulInteger"))
        );
        let inputs: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, ["input_ids", PAST_LENGTH]);
        assert_eq!(graph.output.len(), 1);
        assert!(!graph.node.iter().any(|n| n.input.iter().any(|i| i.starts_with("past_"))));

        // One more reader of a cache input (here an extra graph output): nothing is rewritten.
        let mut model = shipped_gpt_with_fused_attention();
        let graph = model.graph.as_mut().unwrap();
        graph.node.push(NodeProto {
            op_type: "Identity".into(),
            input: vec!["past_value.2".into()],
            output: vec!["peek".into()],
            ..Default::default()
        });
        graph.output.push(pb::ValueInfoProto { name: "peek".into(), ..Default::default() });
        let concats = count(&model, "Concat");
        assert!(fuse_kv_cache(&mut model).is_empty());
        assert_eq!((count(&model, CACHED_ATTENTION), count(&model, "Concat")), (0, concats));
    }

    #[test]
    fn loads_reads_and_appends_position_major() {
        let (b, h, t, d) = (2, 3, 4, 5);
        let data: Vec<f32> = (0..b * h * t * d).map(|i| i as f32).collect();
        let mut cache = KvCache::default();
        cache.load(Half::Keys, &[b, h, t, d], &data).unwrap();
        assert_eq!(cache.len(Half::Keys), t);
        assert_eq!(cache.len(Half::Values), 0);
        assert_eq!(cache.shape(Half::Keys), Some(vec![b, h, t, d]));
        assert_eq!(cache.read(Half::Keys), data);
        // Position 2, batch 1, head 0 is row (2·2 + 1)·3 + 0 of the position-major store.
        let want = &data[(h * t + 2) * d..][..d];
        assert_eq!(&cache.keys[((2 * b + 1) * h) * d..][..d], want);
        // Appending one position keeps the earlier ones; truncating drops it again.
        let step: Vec<f32> = (0..b * h * d).map(|i| -(i as f32)).collect();
        append_rows(&mut cache.keys, &step, (b, h, 1, d));
        assert_eq!(cache.len(Half::Keys), t + 1);
        let read = cache.read(Half::Keys);
        assert_eq!(&read[..t * d], &data[..t * d]);
        assert_eq!(&read[t * d..(t + 1) * d], &step[..d]);
        cache.truncate(t);
        assert_eq!(cache.read(Half::Keys), data);
        // A load with other dims starts both halves over.
        cache.load(Half::Values, &[1, h, 0, d], &[]).unwrap();
        assert_eq!((cache.len(Half::Keys), cache.shape(Half::Values)), (0, Some(vec![1, h, 0, d])));
        assert!(cache.load(Half::Keys, &[1, h, 2, d], &[0.0; 3]).is_err());
    }
}
