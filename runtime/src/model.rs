//! Opening an ONNX file: memory-map it, prove it is ONNX, and describe it.
//!
//! This module validates everything a backend would otherwise trip over (dims, initializer sizes,
//! external-data locations) so that bad files end in a typed error, never in a backend panic.
//! It does not run anything: see [`crate::Plan`] for that.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use prost::Message;
use tract_onnx::pb;

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Largest model protobuf accepted: protobuf itself cannot address more than 2 GiB.
pub const MAX_PROTO_BYTES: u64 = 2 << 30;

/// Largest fixed dimension a graph input or output may declare. Found by the bad-input corpus:
/// tract's shape arithmetic overflows (and panics) on dims near `i64::MAX`, and materialises
/// tensors of a declared size; no real model needs a single dim past 2^31.
pub const MAX_DECLARED_DIM: usize = i32::MAX as usize;
/// Highest rank a graph input or output may declare (tract overflows a shift at rank 64).
pub const MAX_DECLARED_RANK: usize = 16;

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size resolved at run time (`batch`, `sequence`).
    Symbolic(String),
    /// No size given.
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input or output as the file declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct IoInfo {
    /// The tensor's name in the graph.
    pub name: String,
    /// The ONNX element type's short name (`f32`, `i64`, `bool`…), `?` when undeclared.
    pub dtype_name: String,
    /// The element type when the runtime can carry it.
    pub dtype: Option<DType>,
    /// The declared shape; `None` when the file gives no shape at all.
    pub shape: Option<Vec<Dim>>,
}

impl IoInfo {
    /// The declared shape formatted as `[batch, 64]`, or `?` when undeclared.
    pub fn shape_string(&self) -> String {
        match &self.shape {
            None => "?".into(),
            Some(dims) => {
                let parts: Vec<String> = dims.iter().map(ToString::to_string).collect();
                format!("[{}]", parts.join(", "))
            }
        }
    }
}

/// What `ferrite inspect` shows: the model's interface and contents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// Graph inputs that are not initializers, in graph order.
    pub inputs: Vec<IoInfo>,
    /// Graph outputs, in graph order.
    pub outputs: Vec<IoInfo>,
    /// Operator → number of nodes, subgraphs included; non-default domains prefix the name.
    pub ops: BTreeMap<String, usize>,
    /// Element type → bytes of initializer data.
    pub initializer_bytes: BTreeMap<String, u64>,
    /// Operator set domain (`""` is the default ONNX domain) → version.
    pub opsets: BTreeMap<String, i64>,
    /// The model's `metadata_props`.
    pub metadata: BTreeMap<String, String>,
    /// ONNX IR version.
    pub ir_version: i64,
    /// The tool that wrote the file.
    pub producer: String,
    /// External data files the initializers live in, relative to the model's directory.
    pub external_data_files: Vec<String>,
}

impl ModelInfo {
    /// Total bytes of initializer data, all dtypes.
    pub fn weight_bytes(&self) -> u64 {
        self.initializer_bytes.values().sum()
    }
}

/// An opened, validated ONNX model file.
///
/// ```no_run
/// let model = ferrite_runtime::Model::open("models/tiny-lstm-lm/model.onnx").unwrap();
/// for input in &model.info().inputs {
///     println!("{} {} {}", input.name, input.dtype_name, input.shape_string());
/// }
/// ```
pub struct Model {
    path: PathBuf,
    dir: PathBuf,
    map: memmap2::Mmap,
    info: ModelInfo,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Model {
    /// Memory-maps `path`, checks that it is a well-formed ONNX model whose external data stays
    /// inside the model's directory, and reads its interface.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        let given = path.as_ref();
        let path = given.canonicalize().map_err(|e| Error::io(given, e))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len == 0 {
            return Err(Error::NotOnnx { path, reason: "the file is empty".into() });
        }
        if len > MAX_PROTO_BYTES {
            return Err(Error::ResourceLimit(format!(
                "{}: {len} bytes is more than an ONNX protobuf can hold (2 GiB); keep weights as external data",
                path.display()
            )));
        }
        // SAFETY: the map is read-only and private to this process. A file truncated by another
        // process while mapped would fault on access; ferrite's bundles are written once and
        // renamed into place, and everything the runtime keeps is copied out of the map.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let proto = decode(&path, &map)?;
        let info = describe(&proto, &dir)?;
        log::debug!(
            "opened {}: {} inputs, {} outputs, {} weight bytes",
            path.display(),
            info.inputs.len(),
            info.outputs.len(),
            info.weight_bytes()
        );
        Ok(Model { path, dir, map, info })
    }

    /// The model's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory external data is resolved against.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's interface and contents.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The mapped protobuf bytes (backends decode them again for their own types).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Decodes the protobuf again (backends that consume `tract_onnx::pb` types use this).
    pub(crate) fn proto(&self) -> Result<pb::ModelProto> {
        decode(&self.path, &self.map)
    }
}

/// Decides between "not ONNX at all" and "ONNX, but broken", then decodes.
fn decode(path: &Path, bytes: &[u8]) -> Result<pb::ModelProto> {
    // Every ONNX writer emits field 1 (ir_version, varint) first: tag byte 0x08.
    let looks_like_onnx = bytes.first() == Some(&0x08);
    let proto = match pb::ModelProto::decode(bytes) {
        Ok(p) => p,
        Err(e) if looks_like_onnx => {
            return Err(Error::InvalidModel(format!(
                "{}: corrupt or truncated ONNX protobuf ({e})",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::NotOnnx {
                path: path.into(),
                reason: format!("not a protobuf ModelProto ({e})"),
            });
        }
    };
    let plausible = proto.ir_version > 0 && proto.ir_version < 100;
    if !plausible || proto.graph.is_none() {
        if looks_like_onnx && plausible {
            return Err(Error::InvalidModel(format!(
                "{}: the model has no graph (truncated file?)",
                path.display()
            )));
        }
        return Err(Error::NotOnnx {
            path: path.into(),
            reason: "no ONNX ir_version and graph found".into(),
        });
    }
    if proto.opset_import.is_empty() {
        return Err(Error::InvalidModel(format!(
            "{}: the model imports no operator set (truncated file?)",
            path.display()
        )));
    }
    Ok(proto)
}

/// Short name of an ONNX `TensorProto.DataType` code, with its size in bits.
pub(crate) fn onnx_dtype(code: i32) -> (&'static str, u64) {
    match code {
        1 => ("f32", 32),
        2 => ("u8", 8),
        3 => ("i8", 8),
        4 => ("u16", 16),
        5 => ("i16", 16),
        6 => ("i32", 32),
        7 => ("i64", 64),
        8 => ("string", 0),
        9 => ("bool", 8),
        10 => ("f16", 16),
        11 => ("f64", 64),
        12 => ("u32", 32),
        13 => ("u64", 64),
        14 => ("c64", 64),
        15 => ("c128", 128),
        16 => ("bf16", 16),
        17 => ("f8e4m3fn", 8),
        18 => ("f8e4m3fnuz", 8),
        19 => ("f8e5m2", 8),
        20 => ("f8e5m2fnuz", 8),
        21 => ("u4", 4),
        22 => ("i4", 4),
        23 => ("f4e2m1", 4),
        _ => ("?", 0),
    }
}

fn io_info(vi: &pb::ValueInfoProto) -> Result<IoInfo> {
    let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    let elem = tensor.map(|t| t.elem_type).unwrap_or(0);
    let shape = match tensor.and_then(|t| t.shape.as_ref()) {
        None => None,
        Some(s) => {
            if s.dim.len() > MAX_DECLARED_RANK {
                return Err(Error::ResourceLimit(format!(
                    "`{}` declares rank {} (at most {MAX_DECLARED_RANK})",
                    vi.name,
                    s.dim.len()
                )));
            }
            let mut dims = Vec::with_capacity(s.dim.len());
            for d in &s.dim {
                dims.push(match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                        let v = usize::try_from(*v).map_err(|_| {
                            Error::InvalidModel(format!("`{}` declares a negative dimension {v}", vi.name))
                        })?;
                        if v > MAX_DECLARED_DIM {
                            return Err(Error::ResourceLimit(format!(
                                "`{}` declares a dimension {v} (at most {MAX_DECLARED_DIM})",
                                vi.name
                            )));
                        }
                        Dim::Fixed(v)
                    }
                    Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                        Dim::Symbolic(p.clone())
                    }
                    _ => Dim::Unknown,
                });
            }
            Some(dims)
        }
    };
    Ok(IoInfo {
        name: vi.name.clone(),
        dtype_name: onnx_dtype(elem).0.into(),
        dtype: DType::from_onnx(elem),
        shape,
    })
}

fn describe(proto: &pb::ModelProto, dir: &Path) -> Result<ModelInfo> {
    let graph = proto.graph.as_ref().ok_or_else(|| Error::InvalidModel("no graph".into()))?;
    let mut info = ModelInfo {
        ir_version: proto.ir_version,
        producer: [proto.producer_name.as_str(), proto.producer_version.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        ..ModelInfo::default()
    };
    for op in &proto.opset_import {
        info.opsets.insert(op.domain.clone(), op.version);
    }
    for kv in &proto.metadata_props {
        info.metadata.insert(kv.key.clone(), kv.value.clone());
    }
    let initializer_names: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for vi in &graph.input {
        if !initializer_names.contains(vi.name.as_str()) {
            info.inputs.push(io_info(vi)?);
        }
    }
    for vi in &graph.output {
        info.outputs.push(io_info(vi)?);
    }
    if info.outputs.is_empty() {
        return Err(Error::InvalidModel("the graph declares no outputs".into()));
    }
    // Every output and every node input of the main graph must be produced by something: tract
    // panics on a name nothing defines (found by the bad-input corpus). Subgraphs may read
    // names of the enclosing graph, so only the main graph is checked this way.
    let mut defined: BTreeSet<&str> = initializer_names.clone();
    defined.extend(graph.input.iter().map(|vi| vi.name.as_str()));
    defined.extend(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    for name in graph.output.iter().map(|vi| vi.name.as_str()) {
        if !defined.contains(name) {
            return Err(Error::InvalidModel(format!("graph output `{name}` is computed by no node")));
        }
    }
    for node in &graph.node {
        if let Some(name) = node.input.iter().find(|i| !i.is_empty() && !defined.contains(i.as_str())) {
            return Err(Error::InvalidModel(format!(
                "node `{}` reads `{name}`, which nothing defines",
                node.name
            )));
        }
    }
    let mut external = BTreeSet::new();
    walk_graph(graph, dir, &mut info, &mut external, 0)?;
    info.external_data_files = external.into_iter().collect();
    Ok(info)
}

/// Deepest subgraph nesting accepted; real models nest If/Loop bodies a few levels at most.
const MAX_GRAPH_DEPTH: usize = 32;

fn walk_graph(
    graph: &pb::GraphProto,
    dir: &Path,
    info: &mut ModelInfo,
    external: &mut BTreeSet<String>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_GRAPH_DEPTH {
        return Err(Error::ResourceLimit(format!("subgraphs nested deeper than {MAX_GRAPH_DEPTH}")));
    }
    for t in &graph.initializer {
        let bytes = check_initializer(t, dir, external)?;
        let (name, _) = onnx_dtype(t.data_type);
        *info.initializer_bytes.entry(name.into()).or_default() += bytes;
    }
    for node in &graph.node {
        if node.op_type.is_empty() {
            return Err(Error::InvalidModel(format!("node `{}` has no op_type", node.name)));
        }
        let op = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}.{}", node.domain, node.op_type)
        };
        *info.ops.entry(op).or_default() += 1;
        for attr in &node.attribute {
            if let Some(t) = &attr.t {
                check_initializer(t, dir, external)?;
            }
            for g in attr.g.iter().chain(attr.graphs.iter()) {
                walk_graph(g, dir, info, external, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Checks an initializer's dims against its data and returns its size in bytes.
fn check_initializer(t: &pb::TensorProto, dir: &Path, external: &mut BTreeSet<String>) -> Result<u64> {
    let mut count: u64 = 1;
    for &d in &t.dims {
        let d = u64::try_from(d).map_err(|_| {
            Error::InvalidModel(format!("initializer `{}` has a negative dimension {d}", t.name))
        })?;
        count = count.checked_mul(d).ok_or_else(|| {
            Error::ResourceLimit(format!("initializer `{}`: the product of its dims overflows", t.name))
        })?;
    }
    let (dtype, bits) = onnx_dtype(t.data_type);
    if dtype == "string" && !t.raw_data.is_empty() {
        // ONNX keeps strings in `string_data`; tract does not implement raw strings and panics.
        return Err(Error::InvalidModel(format!(
            "initializer `{}`: string data stored as raw bytes",
            t.name
        )));
    }
    if dtype == "?" {
        return Err(Error::InvalidModel(format!(
            "initializer `{}` has unknown data type {}",
            t.name, t.data_type
        )));
    }
    let bytes = (count.checked_mul(bits).ok_or_else(|| {
        Error::ResourceLimit(format!("initializer `{}` is larger than addressable memory", t.name))
    })?)
    .div_ceil(8);
    let external_location = t.data_location == Some(pb::tensor_proto::DataLocation::External as i32);
    if external_location {
        check_external(t, bytes, dir, external)?;
    } else if !t.raw_data.is_empty() && bits > 0 && t.raw_data.len() as u64 != bytes {
        return Err(Error::InvalidModel(format!(
            "initializer `{}`: {} bytes of data for dims {:?} of {dtype} ({bytes} bytes expected)",
            t.name,
            t.raw_data.len(),
            t.dims
        )));
    } else if t.raw_data.is_empty() && bits > 0 {
        let typed = match t.data_type {
            1 => t.float_data.len(),
            7 => t.int64_data.len(),
            11 => t.double_data.len(),
            12 | 13 => t.uint64_data.len(),
            _ => t.int32_data.len(),
        } as u64;
        // Sub-byte types pack two values per int32 entry; scalars may also be stored packed.
        let expected = if bits == 4 { count.div_ceil(2) } else { count };
        if typed != expected && count > 0 {
            return Err(Error::InvalidModel(format!(
                "initializer `{}`: {typed} values stored for dims {:?} ({expected} expected)",
                t.name, t.dims
            )));
        }
    }
    Ok(bytes)
}

fn check_external(
    t: &pb::TensorProto,
    bytes: u64,
    dir: &Path,
    external: &mut BTreeSet<String>,
) -> Result<()> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let bad = |what: &str| {
            Error::InvalidModel(format!("initializer `{}`: external data {what} `{}`", t.name, kv.value))
        };
        match kv.key.as_str() {
            "location" => location = Some(kv.value.clone()),
            "offset" => offset = kv.value.parse().map_err(|_| bad("offset"))?,
            "length" => length = Some(kv.value.parse::<u64>().map_err(|_| bad("length"))?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| {
        Error::InvalidModel(format!("initializer `{}`: external data without a location", t.name))
    })?;
    let file = resolve_inside(dir, &location).map_err(|why| {
        Error::InvalidModel(format!("initializer `{}`: external data location `{location}` {why}", t.name))
    })?;
    let size = std::fs::metadata(&file).map_err(|e| Error::io(&file, e))?.len();
    let length = length.unwrap_or(bytes);
    if length != bytes {
        return Err(Error::InvalidModel(format!(
            "initializer `{}`: external length {length} does not match its dims ({bytes} bytes)",
            t.name
        )));
    }
    let end = offset.checked_add(length).ok_or_else(|| {
        Error::InvalidModel(format!("initializer `{}`: external offset + length overflows", t.name))
    })?;
    if end > size {
        return Err(Error::InvalidModel(format!(
            "initializer `{}`: external data [{offset}, {end}) is past the end of `{location}` ({size} bytes)",
            t.name
        )));
    }
    external.insert(location);
    Ok(())
}

/// Resolves an external-data location, refusing anything that leaves the model's directory:
/// absolute paths, `..`, and symlinks that point elsewhere.
fn resolve_inside(dir: &Path, location: &str) -> std::result::Result<PathBuf, &'static str> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err("is empty");
    }
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err("leaves the model directory (absolute path or `..`)");
    }
    let joined = dir.join(rel);
    let canonical = joined.canonicalize().map_err(|_| "does not exist")?;
    let canonical_dir = dir.canonicalize().map_err(|_| "has no readable model directory")?;
    if !canonical.starts_with(&canonical_dir) {
        return Err("is a link that leaves the model directory");
    }
    // A directory, FIFO or device has no meaningful size and could block or never end a read.
    if !canonical.is_file() {
        return Err("is not a regular file");
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_outside_the_directory_are_refused() {
        let dir = std::env::temp_dir();
        assert!(resolve_inside(&dir, "../etc/passwd").is_err());
        assert!(resolve_inside(&dir, "/etc/passwd").is_err());
        assert!(resolve_inside(&dir, "").is_err());
        assert!(resolve_inside(&dir, "no-such-file-ferrite").is_err());
    }

    #[test]
    fn random_bytes_are_not_onnx() {
        let err = decode(Path::new("x"), &[0xff, 0x13, 0x37, 0x00, 0x42]).unwrap_err();
        assert!(matches!(err, Error::NotOnnx { .. }), "{err}");
    }

    #[test]
    fn an_onnx_prefix_that_stops_is_invalid_not_foreign() {
        let err = decode(Path::new("x"), &[0x08]).unwrap_err();
        assert!(matches!(err, Error::InvalidModel(_)), "{err}");
    }
}
