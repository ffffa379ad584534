//! Serialises a [`GraphBuilder`] as `model.onnx` plus `model.onnx.data`.
//!
//! Every tensor in the data file starts at a multiple of [`EXTERNAL_ALIGN`]: ONNX Runtime only
//! memory-maps external initializers at page-aligned offsets, and copies the rest. Tensors below
//! [`INLINE_MAX`] bytes (shape constants, scalars) stay inline: padding each to a page would waste
//! more than they weigh.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use super::graph::{GraphBuilder, IR_VERSION, OPSET, OPSET_MS};
use crate::error::{ExportError, Result};

/// The graph file's name inside a bundle.
pub const MODEL_FILE: &str = "model.onnx";
/// The external weights file's name inside a bundle.
pub const DATA_FILE: &str = "model.onnx.data";
/// Alignment of every tensor inside [`DATA_FILE`].
pub const EXTERNAL_ALIGN: u64 = 4096;
/// Tensors smaller than this are stored inline in the protobuf: below a page, the padding to
/// the next aligned offset would cost more than the tensor (scales, biases and column sums of a
/// small quantised model were a tenth of its data file), and nothing is gained by mapping it.
const INLINE_MAX: usize = EXTERNAL_ALIGN as usize;

fn entry(key: &str, value: impl ToString) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto { key: key.to_string(), value: value.to_string() }
}

/// Writes `graph` into `dir` as [`MODEL_FILE`] + [`DATA_FILE`] with `metadata` as the model's
/// `metadata_props`. Consumes the graph: weights are moved, not copied, into the files.
pub fn write_model(dir: &Path, graph: GraphBuilder, name: &str, metadata: &[(String, String)]) -> Result<()> {
    let data_path = dir.join(DATA_FILE);
    let file = File::create(&data_path).map_err(|e| ExportError::io(&data_path, e))?;
    let mut data = BufWriter::new(file);
    let mut offset = 0u64;
    let mut initializer = Vec::with_capacity(graph.initializers.len());
    let total: usize = graph.initializers.iter().map(|i| i.bytes.len()).sum();
    let progress = crate::progress::Stage::new("writing", total.div_ceil(1 << 20) as u64, "MiB");
    let mut written = 0usize;
    for init in graph.initializers {
        let mib_before = written >> 20;
        written += init.bytes.len();
        progress.inc(((written >> 20) - mib_before) as u64);
        let mut t = pb::TensorProto {
            name: init.name,
            data_type: init.elem.code(),
            dims: init.dims.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        };
        if init.bytes.len() < INLINE_MAX {
            t.raw_data = init.bytes;
        } else {
            let pad = offset.next_multiple_of(EXTERNAL_ALIGN) - offset;
            data.write_all(&vec![0u8; pad as usize]).map_err(|e| ExportError::io(&data_path, e))?;
            offset += pad;
            data.write_all(&init.bytes).map_err(|e| ExportError::io(&data_path, e))?;
            t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
            t.external_data = vec![
                entry("location", DATA_FILE),
                entry("offset", offset),
                entry("length", init.bytes.len()),
            ];
            offset += init.bytes.len() as u64;
        }
        initializer.push(t);
    }
    data.into_inner()
        .map_err(|e| ExportError::io(&data_path, e.into_error()))?
        .sync_all()
        .map_err(|e| ExportError::io(&data_path, e))?;
    progress.finish();

    let mut opset_import = vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }];
    if graph.uses_ms_domain {
        opset_import.push(pb::OperatorSetIdProto { domain: "com.microsoft".into(), version: OPSET_MS });
    }
    let model = pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import,
        producer_name: "ferrite-exporter".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(pb::GraphProto {
            node: graph.nodes,
            name: name.to_string(),
            initializer,
            input: graph.inputs,
            output: graph.outputs,
            ..Default::default()
        }),
        metadata_props: metadata.iter().map(|(k, v)| entry(k, v)).collect(),
        ..Default::default()
    };
    let model_path = dir.join(MODEL_FILE);
    std::fs::write(&model_path, model.encode_to_vec()).map_err(|e| ExportError::io(&model_path, e))?;
    Ok(())
}
