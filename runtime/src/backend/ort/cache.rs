//! An in-place KV cache for ONNX Runtime: at load, a ferrite-exported decoder's attention blocks
//! become one custom operator of ferrite's, `ai.ferrite.FerriteInPlaceAttention` (`backend/ort/ops.rs`),
//! whose past and present caches are one buffer per layer that the backend binds by IO binding
//! (`ort.rs`, `CacheState`).
//!
//! The exported file keeps standard ONNX (issue 3: both backends run it as written), and in it
//! every decode step `Concat`s the whole cache with the step's keys and values into a fresh
//! `present_*` tensor: ONNX values cannot alias, so the cache is rewritten every step and a step
//! at position 200 costs 1.38–1.62× a step at position 10 on ONNX Runtime (BENCHMARKS.md). The
//! operator is given the same buffer as its `past_*` input and its `present_*` output (ONNX
//! Runtime hands a kernel the caller's pre-bound output buffer), writes a step's rows at the past
//! length and reads the earlier rows where they lie, with the causal mask built in — the
//! arithmetic of tract's fused attention (`kernels/attention.rs`). ONNX Runtime's own
//! `com.microsoft.GroupQueryAttention` in its shared-buffer mode does the same job, but its CPU
//! kernel grows by ~0.09 µs per position and layer (MLAS products packed per head): with it the
//! int8 step at position 200 costs 1.31–1.53× the step at position 10 (docs/onnxruntime.md).
//!
//! Per layer the exporter writes (exporter/src/arch/gpt2.rs), with `q`, `k`, `v` the `[B, S, H·D]`
//! thirds of the fused QKV projection:
//! `Concat(past_key, Transpose(Reshape(k, [0, 0, H, D]), 0 2 1 3), axis 2)` → `present_key` (and
//! the same for values), `MatMul(present_key, Transpose(q heads))` → `Mul(scale)` → `+ causal
//! bias` → `Softmax` → `MatMul(Transpose(present_value), probs)` → `Transpose(0 3 1 2)` →
//! `Reshape([0, 0, H·D])`. [`rewrite`] replaces that last `Reshape` by one operator node
//! `(q, k, v, past_key, past_value, past_length) → (context, present_key, present_value)` and
//! drops the `Concat`s; the old attention nodes and the mask are then dead and removed. The
//! positions read the past length from `Shape(past_key.0)`, which is now a buffer's capacity:
//! that `Gather` becomes the input [`PAST_LENGTH`], which the operator reads too. All or nothing:
//! any layer or cache reader outside the pattern leaves the graph untouched (the backend then
//! runs the file).

use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto};

use crate::kernels::attention::{KEY_BLOCK, key_offset};
use crate::rewrite::graph::{
    CacheNames, GraphIndex, ONNX_INT64, PAST_LENGTH, fusable_graph, int_attr, ints_attr, past_length_gather,
    past_length_node, remove_dead_nodes, value_info,
};
use crate::rewrite::int8_pattern::DOMAIN;

/// Op type of the operator (registered with ONNX Runtime only; tract's in-place cache is its own
/// op, `backend/tract/kv_cache.rs`).
pub(crate) const IN_PLACE_ATTENTION: &str = "FerriteInPlaceAttention";

/// What the rewrite found: the layers in order and the cache geometry.
#[derive(Debug, Clone)]
pub(crate) struct CacheGraph {
    pub layers: Vec<CacheNames>,
    pub heads: usize,
    pub head_dim: usize,
}

/// `Transpose` with exactly permutation `perm`, producing `name`: its input.
fn transposed<'g>(ix: &GraphIndex<'_>, g: &'g GraphProto, name: &str, perm: &[i64]) -> Option<&'g String> {
    let (_, t) = ix.node(g, name, "Transpose", 1)?;
    (ints_attr(t, "perm") == Some(perm)).then_some(&t.input[0])
}

/// The i64 values of a small inline int64 initializer.
fn int_vector(ix: &GraphIndex<'_>, name: &str) -> Option<Vec<i64>> {
    let t = ix.initializer.get(name)?;
    if t.data_type != ONNX_INT64 || t.dims.len() != 1 || t.data_location == Some(1) {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    let raw = &t.raw_data;
    (raw.len() % 8 == 0)
        .then(|| raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

/// `Transpose(Reshape(flat, [0, 0, H, D]), 0 2 1 3)` producing `name`, each value read once:
/// `(flat, H, D)`.
fn heads_of(ix: &GraphIndex<'_>, g: &GraphProto, name: &str) -> Option<(String, i64, i64)> {
    let reshaped = transposed(ix, g, name, &[0, 2, 1, 3])?;
    let (_, r) = ix.node(g, reshaped, "Reshape", 2)?;
    let &[0, 0, h, d] = int_vector(ix, &r.input[1])?.as_slice() else { return None };
    (ix.uses(name) == 1 && ix.uses(reshaped) == 1 && h > 0 && d > 0).then(|| (r.input[0].clone(), h, d))
}

/// The one node of type `op` reading `name` (other readers may exist, of other types).
fn reader<'g>(
    ix: &GraphIndex<'_>,
    g: &'g GraphProto,
    name: &str,
    op: &str,
) -> Option<(usize, &'g NodeProto)> {
    let mut found =
        ix.consumers.get(name)?.iter().filter(|&&i| g.node[i].op_type == op && g.node[i].domain.is_empty());
    let &i = found.next()?;
    found.next().is_none().then(|| (i, &g.node[i]))
}

/// One matched layer: the `Concat` indices to drop, the context `Reshape` to replace and its
/// operator node.
struct Layer {
    concats: [usize; 2],
    context: usize,
    node: NodeProto,
    names: CacheNames,
    heads: i64,
    head_dim: i64,
}

/// Matches the layer whose key cache is `Concat` node `ck` (see the module docs).
fn match_layer(ix: &GraphIndex<'_>, g: &GraphProto, ck: usize) -> Option<Layer> {
    let is_input = |name: &str| g.input.iter().any(|i| i.name == name) && !ix.initializer.contains_key(name);
    let is_output = |name: &str| g.output.iter().any(|o| o.name == name);
    let cache_concat = |n: &NodeProto| {
        n.op_type == "Concat"
            && n.domain.is_empty()
            && n.input.len() == 2
            && n.output.len() == 1
            && int_attr(n, "axis") == Some(2)
            && is_input(&n.input[0])
            && is_output(&n.output[0])
            && ix.uses(&n.output[0]) == 2
    };
    let key = &g.node[ck];
    if !cache_concat(key) {
        return None;
    }
    let present_key = &key.output[0];
    // The scores: MatMul(present_key, Transpose(q heads, 0 1 3 2)) → Mul(scale).
    let &[scores_i] = ix.consumers.get(present_key.as_str())?.as_slice() else { return None };
    let scores = &g.node[scores_i];
    if scores.op_type != "MatMul" || scores.input.len() != 2 || scores.input[0] != *present_key {
        return None;
    }
    let q_heads = transposed(ix, g, &scores.input[1], &[0, 1, 3, 2])?;
    let (q, hq, dq) = heads_of(ix, g, q_heads)?;
    let (_, mul) = ix.sole_consumer(g, &scores.output[0]).filter(|(_, m)| m.op_type == "Mul")?;
    let scale = ix.scalar_value(&mul.input[1])?;
    let (k, hk, dk) = heads_of(ix, g, &key.input[1])?;
    // The probabilities: Mul → Add(causal bias) → Softmax (layer 0's Mul also feeds the `Shape`
    // that sizes the shared bias), then the context MatMul(Transpose(present_value), probs).
    let (_, add) = reader(ix, g, &mul.output[0], "Add")?;
    let (_, softmax) = reader(ix, g, &add.output[0], "Softmax")?;
    let (_, ctx_t) = reader(ix, g, &softmax.output[0], "MatMul")?;
    if ctx_t.input.len() != 2 || ctx_t.input[1] != softmax.output[0] {
        return None;
    }
    let value_cache = transposed(ix, g, &ctx_t.input[0], &[0, 1, 3, 2])?;
    let value_concat = *ix.producer.get(value_cache.as_str())?;
    let value = &g.node[value_concat];
    if !cache_concat(value) {
        return None;
    }
    let (v, hv, dv) = heads_of(ix, g, &value.input[1])?;
    let present_value = &value.output[0];
    if ix.uses(&ctx_t.input[0]) != 1 {
        return None;
    }
    let (_, back) = ix.sole_consumer(g, &ctx_t.output[0])?;
    if back.op_type != "Transpose" || ints_attr(back, "perm") != Some(&[0, 3, 1, 2]) {
        return None;
    }
    let (context_i, context) = ix.sole_consumer(g, &back.output[0])?;
    if context.op_type != "Reshape" || int_vector(ix, &context.input[1])? != [0, 0, hq * dq] {
        return None;
    }
    if (hq, dq) != (hk, dk) || (hq, dq) != (hv, dv) {
        return None;
    }
    let attr_int = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    let names = CacheNames {
        past_key: key.input[0].clone(),
        past_value: value.input[0].clone(),
        present_key: present_key.clone(),
        present_value: present_value.clone(),
    };
    let node = NodeProto {
        name: format!("{}.in_place_attention", context.name),
        op_type: IN_PLACE_ATTENTION.into(),
        domain: DOMAIN.into(),
        input: vec![q, k, v, names.past_key.clone(), names.past_value.clone(), PAST_LENGTH.into()],
        output: vec![context.output[0].clone(), names.present_key.clone(), names.present_value.clone()],
        attribute: vec![
            attr_int("num_heads", hq),
            pb::AttributeProto {
                name: "scale".into(),
                r#type: pb::attribute_proto::AttributeType::Float as i32,
                f: scale,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    Some(Layer { concats: [ck, value_concat], context: context_i, node, names, heads: hq, head_dim: dq })
}

/// Rewrites a ferrite-exported decoder step graph for an in-place cache (see the module docs);
/// returns the layers found in layer order (by their `past_key` names' order among the graph
/// inputs), or `None` with the graph untouched. The caller registers ferrite's operators and
/// imports their domain.
pub(crate) fn rewrite(model: &mut ModelProto) -> Option<CacheGraph> {
    let graph = fusable_graph(model)?;
    let index = GraphIndex::new(graph);
    let layers: Vec<Layer> = (0..graph.node.len()).filter_map(|i| match_layer(&index, graph, i)).collect();
    let cache_inputs: Vec<&str> =
        graph.input.iter().map(|i| i.name.as_str()).filter(|n| n.starts_with("past_")).collect();
    if layers.is_empty() || cache_inputs.len() != 2 * layers.len() {
        return None;
    }
    let (heads, head_dim) = (layers[0].heads, layers[0].head_dim);
    if layers.iter().any(|l| (l.heads, l.head_dim) != (heads, head_dim)) {
        return None;
    }
    // Every other reader of a cache input: `Shape`, read only by `Gather(·, 2, axis 0)`.
    let mut lengths = Vec::new();
    for layer in &layers {
        for (past, concat) in
            [(&layer.names.past_key, layer.concats[0]), (&layer.names.past_value, layer.concats[1])]
        {
            for &reader in index.consumers.get(past.as_str()).map(Vec::as_slice).unwrap_or_default() {
                if reader == concat {
                    continue;
                }
                let gather = past_length_gather(&index, graph, reader)?;
                lengths.push((reader, gather));
            }
        }
    }
    // Layer order: the order of the `past_key` inputs.
    let mut layers = layers;
    let position = |name: &str| graph.input.iter().position(|i| i.name == name);
    layers.sort_by_key(|l| position(&l.names.past_key));
    drop(index);

    let mut remove = vec![false; graph.node.len()];
    let mut found = Vec::with_capacity(layers.len());
    for layer in layers {
        remove[layer.concats[0]] = true;
        remove[layer.concats[1]] = true;
        graph.node[layer.context] = layer.node;
        found.push(layer.names);
    }
    for (shape, gather) in lengths {
        remove[shape] = true;
        graph.node[gather] = past_length_node(&graph.node[gather]);
    }
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !remove[i - 1]
    });
    remove_dead_nodes(graph);
    graph.input.push(value_info(PAST_LENGTH, ONNX_INT64, &[]));
    Some(CacheGraph { layers: found, heads: heads as usize, head_dim: head_dim as usize })
}

/// The geometry of a session's cache buffers: `[B, H, capacity, D]` per layer and half, of which
/// the first `len` positions hold the cache (per layer and half, so given caches can be loaded
/// one by one; a run needs them all equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

impl Geometry {
    /// The buffer's shape as ONNX Runtime takes it.
    pub(crate) fn shape(&self) -> Vec<i64> {
        [self.batch, self.heads, self.capacity, self.head_dim].iter().map(|&d| d as i64).collect()
    }
}

/// How one head's positions lie in a cache buffer, or in a dense `[B, H, T, D]` tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `capacity` rows of `D` floats: the values' buffers, and dense tensors (`capacity = T`).
    Rows { capacity: usize },
    /// The keys' buffers: blocks of positions, each `[D][KEY_BLOCK]` (`attend::key_offset`),
    /// `capacity` a multiple of the block.
    KeyBlocks { capacity: usize },
}

impl Layout {
    /// The layout of a buffer of `capacity` positions for the keys (`half` 0) or values (1).
    pub(crate) fn of_buffer(half: usize, capacity: usize) -> Layout {
        if half == 0 { Layout::KeyBlocks { capacity } } else { Layout::Rows { capacity } }
    }

    fn capacity(self) -> usize {
        match self {
            Layout::Rows { capacity } | Layout::KeyBlocks { capacity } => capacity,
        }
    }

    fn offset(self, t: usize, j: usize, d: usize) -> usize {
        match self {
            Layout::Rows { .. } => t * d + j,
            Layout::KeyBlocks { .. } => key_offset(t, j, d),
        }
    }
}

/// Copies the first `len` positions of `B · H` heads from one layout to another (`len ≤ both
/// capacities`), e.g. a dense `[B, H, len, D]` tensor (`Rows { capacity: len }`) into a buffer.
pub(crate) fn copy_positions(
    (from, from_layout): (&[f32], Layout),
    (to, to_layout): (&mut [f32], Layout),
    (batch, heads, len, d): (usize, usize, usize, usize),
) {
    let (from_len, to_len) = (from_layout.capacity() * d, to_layout.capacity() * d);
    for bh in 0..batch * heads {
        let (src, dst) = (&from[bh * from_len..][..from_len], &mut to[bh * to_len..][..to_len]);
        match (from_layout, to_layout) {
            (Layout::Rows { .. }, Layout::Rows { .. }) => dst[..len * d].copy_from_slice(&src[..len * d]),
            (Layout::KeyBlocks { .. }, Layout::KeyBlocks { .. }) => {
                let n = len.div_ceil(KEY_BLOCK) * KEY_BLOCK * d;
                dst[..n].copy_from_slice(&src[..n]);
            }
            _ => {
                for t in 0..len {
                    for j in 0..d {
                        dst[to_layout.offset(t, j, d)] = src[from_layout.offset(t, j, d)];
                    }
                }
            }
        }
    }
}

/// The capacity to allocate for `needed` positions when `current` is too small: doubling (so
/// growing costs amortised O(1) per step), at least 64, a whole number of key blocks.
pub(crate) fn grown_capacity(current: usize, needed: usize) -> usize {
    needed.max(current.saturating_mul(2)).max(64).next_multiple_of(KEY_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    fn proto(rel: &str) -> ModelProto {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel).join("model.onnx");
        Model::open(path).unwrap().proto().unwrap()
    }

    #[test]
    fn rewrites_the_shipped_decoders_and_nothing_else() {
        for rel in ["models/shakespeare-gpt/int8", "models/shakespeare-gpt/q4"] {
            let mut model = proto(rel);
            let before = model.graph.as_ref().unwrap().node.len();
            let found = rewrite(&mut model).unwrap_or_else(|| panic!("{rel}: no match"));
            assert_eq!(found.layers.len(), 4, "{rel}");
            assert_eq!((found.heads, found.head_dim), (4, 32), "{rel}");
            assert_eq!(found.layers[3].past_value, "past_value.3");
            let g = model.graph.as_ref().unwrap();
            let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
            assert_eq!(count(IN_PLACE_ATTENTION), 4, "{rel}");
            assert_eq!(count("Softmax"), 0, "{rel}: the old attention is gone");
            assert!(g.node.iter().all(|n| {
                n.input.iter().all(|i| !i.starts_with("past_") || n.op_type == IN_PLACE_ATTENTION)
            }));
            assert!(g.node.len() < before - 4 * 10, "{rel}: {before} → {} nodes", g.node.len());
            let inputs: Vec<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(inputs.last(), Some(&PAST_LENGTH));
        }
        // An LSTM (no attention) and an encoder (query-major attention, no cache).
        for rel in ["models/shakespeare-lstm/int8", "fuzz/fixtures/bert-int8"] {
            let mut model = proto(rel);
            let before = model.clone();
            assert!(rewrite(&mut model).is_none(), "{rel}");
            assert_eq!(model, before, "{rel}: untouched");
        }
    }

    #[test]
    fn copies_positions_between_layouts() {
        let (b, h, d) = (2, 3, 4);
        let dense: Vec<f32> = (0..b * h * 5 * d).map(|i| i as f32).collect();
        let rows = Layout::Rows { capacity: 5 };
        for wide in [Layout::Rows { capacity: 16 }, Layout::KeyBlocks { capacity: 16 }] {
            let mut buffer = vec![-1.0; b * h * 16 * d];
            copy_positions((&dense, rows), (&mut buffer, wide), (b, h, 5, d));
            // Batch 1, head 2, position 4, element 3.
            let head = (3 + 2) * 16 * d;
            assert_eq!(buffer[head + wide.offset(4, 3, d)], dense[((3 + 2) * 5 + 4) * d + 3], "{wide:?}");
            assert_eq!(buffer[head + wide.offset(5, 0, d)], -1.0, "{wide:?}: positions past len stay");
            // Into a larger buffer of the same layout (growing), and back out.
            let larger = Layout::of_buffer(usize::from(wide == Layout::Rows { capacity: 16 }), 24);
            assert_eq!(std::mem::discriminant(&larger), std::mem::discriminant(&wide));
            let mut grown = vec![0.0; b * h * 24 * d];
            copy_positions((&buffer, wide), (&mut grown, larger), (b, h, 5, d));
            let mut back = vec![0.0; dense.len()];
            copy_positions((&grown, larger), (&mut back, rows), (b, h, 5, d));
            assert_eq!(back, dense, "{wide:?}");
        }
    }

    #[test]
    fn capacity_doubles_from_64() {
        assert_eq!(grown_capacity(0, 9), 64);
        assert_eq!(grown_capacity(64, 65), 128);
        assert_eq!(grown_capacity(64, 300), 304, "a whole number of key blocks");
    }
}
