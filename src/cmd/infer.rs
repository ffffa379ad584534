//! `ferrite infer MODEL --input NAME=FILE.npy ... [--output OUT.npz] [--backend] [--threads]`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ferrite_runtime::{Model, Tensor, TensorData};

use super::RunFlags;

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// The ONNX model file.
    pub model: PathBuf,
    /// An input as NAME=FILE.npy; repeat for every model input.
    #[arg(long = "input", value_name = "NAME=FILE.npy", required = true)]
    pub inputs: Vec<String>,
    /// Write all outputs to this .npz file (keys are output names); otherwise print a summary.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunFlags,
}

fn summary(t: &Tensor) -> String {
    let shown = 6;
    let head = |v: Vec<String>| {
        let more = if v.len() > shown { ", …" } else { "" };
        format!("[{}{more}]", v.into_iter().take(shown).collect::<Vec<_>>().join(", "))
    };
    let values = match t.data() {
        TensorData::F32(v) => head(v.iter().map(|x| format!("{x:.6}")).collect()),
        TensorData::F16(v) => head(v.iter().map(|x| format!("{x}")).collect()),
        TensorData::I64(v) => head(v.iter().map(|x| x.to_string()).collect()),
        TensorData::I32(v) => head(v.iter().map(|x| x.to_string()).collect()),
        TensorData::U8(v) => head(v.iter().map(|x| x.to_string()).collect()),
        TensorData::I8(v) => head(v.iter().map(|x| x.to_string()).collect()),
    };
    format!("{} {:?} {values}", t.dtype(), t.shape())
}

pub fn run(args: InferArgs) -> Result<()> {
    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for spec in &args.inputs {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--input `{spec}` must be NAME=FILE.npy");
        };
        let t = ferrite_runtime::npy::read_npy(file).with_context(|| format!("reading input `{name}`"))?;
        inputs.push((name.to_string(), t));
    }
    let model = Model::open(&args.model)?;
    let plan = model.prepare(&args.run.options())?;
    let mut session = plan.session()?;
    let views: Vec<(&str, _)> = inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
    let outputs = session.run(&views)?;
    match &args.output {
        Some(path) => {
            ferrite_runtime::npy::write_npz(path, outputs.iter())?;
            log::info!("wrote {} outputs to {}", outputs.len(), path.display());
        }
        None => {
            for (name, t) in outputs.iter() {
                println!("{name}: {}", summary(t));
            }
        }
    }
    Ok(())
}
