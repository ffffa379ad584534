//! Reading and editing ONNX graphs as protobuf (`tract_onnx::pb`, always linked): what the
//! load-time rewrites of both backends share (tract's fused ops in `backend/tract/`, ONNX Runtime's
//! in-place KV cache in `backend/ort/cache.rs`). The files on disk are never changed.

use std::collections::HashMap;

use tract_onnx::pb::{self, GraphProto, ModelProto, NodeProto};

/// ONNX `TensorProto.DataType` codes the rewrites check.
pub(crate) const ONNX_FLOAT: i64 = 1;
pub(crate) const ONNX_INT64: i32 = 7;

/// Which half of a layer's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Half {
    Keys,
    Values,
}

/// One layer's KV cache as the file names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheNames {
    pub past_key: String,
    pub present_key: String,
    pub past_value: String,
    pub present_value: String,
}

/// The layer and half a cache input or output named `name` stands for, among `layers`.
pub(crate) fn cache_slot(layers: &[CacheNames], name: &str) -> Option<(usize, Half)> {
    layers.iter().enumerate().find_map(|(layer, c)| {
        if name == c.past_key || name == c.present_key {
            Some((layer, Half::Keys))
        } else if name == c.past_value || name == c.present_value {
            Some((layer, Half::Values))
        } else {
            None
        }
    })
}

/// The graph input that replaces a decoder's past length read from its cache's shape (an i64
/// scalar), where a backend keeps the KV cache in place and the cache input no longer has it.
pub(crate) const PAST_LENGTH: &str = "ferrite.past_length";

/// The graph of a ferrite-exported model without subgraphs: the only kind the rewrites touch.
pub(crate) fn fusable_graph(model: &mut ModelProto) -> Option<&mut GraphProto> {
    if !model.producer_name.starts_with("ferrite") {
        return None;
    }
    let graph = model.graph.as_mut()?;
    // Subgraphs (If/Loop/Scan bodies) could read values by name from here: leave such files alone.
    if graph.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
        return None;
    }
    Some(graph)
}

/// Who produces and how many read each value name.
pub(crate) struct GraphIndex<'g> {
    pub(crate) producer: HashMap<&'g str, usize>,
    pub(crate) consumers: HashMap<&'g str, Vec<usize>>,
    uses: HashMap<&'g str, usize>,
    pub(crate) initializer: HashMap<&'g str, &'g pb::TensorProto>,
}

impl<'g> GraphIndex<'g> {
    pub(crate) fn new(graph: &'g GraphProto) -> GraphIndex<'g> {
        let mut producer = HashMap::new();
        let mut uses: HashMap<&str, usize> = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for o in &node.output {
                producer.insert(o.as_str(), i);
            }
            for inp in &node.input {
                *uses.entry(inp.as_str()).or_default() += 1;
                consumers.entry(inp.as_str()).or_default().push(i);
            }
        }
        for o in &graph.output {
            *uses.entry(o.name.as_str()).or_default() += 1;
        }
        let initializer = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        GraphIndex { producer, consumers, uses, initializer }
    }

    pub(crate) fn uses(&self, name: &str) -> usize {
        self.uses.get(name).copied().unwrap_or(0)
    }

    /// The node producing `name` if it is an `op` node with `inputs` inputs and one output.
    pub(crate) fn node<'a>(
        &self,
        graph: &'a GraphProto,
        name: &str,
        op: &str,
        inputs: usize,
    ) -> Option<(usize, &'a NodeProto)> {
        let i = *self.producer.get(name)?;
        let n = &graph.node[i];
        (n.op_type == op && n.domain.is_empty() && n.input.len() == inputs && n.output.len() == 1)
            .then_some((i, n))
    }

    /// `name` is a 1-D f32 initializer (a bias).
    pub(crate) fn is_vector(&self, name: &str) -> bool {
        self.initializer.get(name).is_some_and(|t| t.data_type == ONNX_FLOAT as i32 && t.dims.len() == 1)
    }

    /// The only node reading `name`, when exactly one node reads it once and it is no graph output.
    pub(crate) fn sole_consumer<'a>(
        &self,
        graph: &'a GraphProto,
        name: &str,
    ) -> Option<(usize, &'a NodeProto)> {
        match self.consumers.get(name)?.as_slice() {
            [i] if self.uses(name) == 1 => Some((*i, &graph.node[*i])),
            _ => None,
        }
    }

    /// `name` is an f32 scalar initializer holding exactly `value`.
    pub(crate) fn is_scalar(&self, name: &str, value: f32) -> bool {
        self.scalar_value(name).is_some_and(|v| v.to_bits() == value.to_bits())
    }

    /// The value of an inline f32 scalar initializer.
    pub(crate) fn scalar_value(&self, name: &str) -> Option<f32> {
        let t = self.initializer.get(name)?;
        if t.data_type != ONNX_FLOAT as i32 || !t.dims.iter().all(|&d| d == 1) || t.data_location == Some(1) {
            return None;
        }
        match (t.float_data.as_slice(), t.raw_data.as_slice()) {
            ([v], []) => Some(*v),
            ([], raw) if raw.len() == 4 => Some(f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])),
            _ => None,
        }
    }
}

pub(crate) fn int_attr(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

pub(crate) fn ints_attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.ints.as_slice())
}

/// The i64 value of a scalar (or one-element) initializer.
pub(crate) fn int_scalar(ix: &GraphIndex<'_>, name: &str) -> Option<i64> {
    let t = ix.initializer.get(name)?;
    if t.dims.iter().product::<i64>() != 1 {
        return None;
    }
    match int_values(t)?.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// The values of an inline int64 initializer (in `int64_data` or `raw_data`, not both).
pub(crate) fn int_values(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != ONNX_INT64 || t.data_location == Some(1) {
        return None;
    }
    match (t.int64_data.as_slice(), t.raw_data.as_slice()) {
        (values, []) if !values.is_empty() => Some(values.to_vec()),
        ([], raw) if raw.len().is_multiple_of(8) => {
            Some(raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
        }
        _ => None,
    }
}

/// Removes nodes none of whose outputs is read by a node or is a graph output, until none is left.
pub(crate) fn remove_dead_nodes(graph: &mut GraphProto) {
    loop {
        let mut used: std::collections::HashSet<&str> =
            graph.output.iter().map(|o| o.name.as_str()).collect();
        used.extend(graph.node.iter().flat_map(|n| n.input.iter().map(String::as_str)));
        let dead: Vec<bool> = graph
            .node
            .iter()
            .map(|n| n.output.iter().all(|o| o.is_empty() || !used.contains(o.as_str())))
            .collect();
        if !dead.contains(&true) {
            return;
        }
        let mut i = 0;
        graph.node.retain(|_| {
            i += 1;
            !dead[i - 1]
        });
    }
}

/// A graph input or output of element type `elem_type` with a fixed-rank shape, each dimension
/// either fixed (`Ok(n)`) or symbolic (`Err(name)`).
pub(crate) fn value_info(name: &str, elem_type: i32, dims: &[Result<i64, &str>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(n) => Value::DimValue(*n),
                Err(s) => Value::DimParam((*s).to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// When node `reader` (a reader of a cache input) is `Shape`, read only by `Gather(·, 2, axis 0)`
/// — the past length, as the exporter computes the positions — the `Gather`'s index.
pub(crate) fn past_length_gather(ix: &GraphIndex<'_>, graph: &GraphProto, reader: usize) -> Option<usize> {
    let shape = &graph.node[reader];
    let [shape_out] = shape.output.as_slice() else { return None };
    let gather = match ix.consumers.get(shape_out.as_str()).map(Vec::as_slice) {
        Some(&[g]) if shape.op_type == "Shape" && shape.attribute.is_empty() => g,
        _ => return None,
    };
    let gn = &graph.node[gather];
    let is_length = gn.op_type == "Gather"
        && gn.input.len() == 2
        && gn.output.len() == 1
        && int_attr(gn, "axis").unwrap_or(0) == 0
        && int_scalar(ix, &gn.input[1]) == Some(2)
        && ix.initializer.get(gn.input[1].as_str()).is_some_and(|t| t.dims.is_empty());
    (is_length && ix.uses(shape_out) == 1).then_some(gather)
}

/// The node that takes a past-length `Gather`'s place: `Identity(PAST_LENGTH)` into its output.
pub(crate) fn past_length_node(gather: &NodeProto) -> NodeProto {
    let out = gather.output[0].clone();
    NodeProto {
        name: format!("{out}.past_length"),
        op_type: "Identity".into(),
        input: vec![PAST_LENGTH.into()],
        output: vec![out],
        ..Default::default()
    }
}
