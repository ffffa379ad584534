//! An architecture's ONNX graph written as a model file with ferrite's metadata (architecture,
//! quantisation, context length): what the bundle writer and the GPTQ calibration (which runs
//! the fp32 graph before the bundle exists) both write. Sits below both.

use std::path::Path;

use crate::arch::Architecture;
use crate::error::Result;
use crate::onnx::{self, GraphBuilder};
use crate::quant::QuantScheme;

/// Writes `graph` (built by `arch` under `scheme`) into `dir` with ferrite's metadata.
pub(crate) fn write_graph(
    arch: &dyn Architecture,
    scheme: QuantScheme,
    graph: GraphBuilder,
    dir: &Path,
) -> Result<()> {
    let mut meta = vec![
        ("ferrite.architecture".to_string(), format!("{:?}", arch.kind()).to_lowercase()),
        ("ferrite.quantisation".to_string(), scheme.name().to_string()),
    ];
    if let Some(n) = arch.context_length() {
        meta.push(("ferrite.context_length".into(), n.to_string()));
    }
    onnx::write_model(dir, graph, &format!("ferrite_{}", scheme.name()), &meta)
}
