//! One module per subcommand; shared option parsing lives here.

pub mod embed;
pub mod eval;
pub mod generate;
pub mod infer;
pub mod inspect;

use ferrite_runtime::{BackendKind, Options};

/// Backend and thread flags shared by every subcommand that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct RunFlags {
    /// Engine: tract (pure Rust, default) or ort (ONNX Runtime, needs libonnxruntime.so).
    #[arg(long, default_value = "tract")]
    pub backend: BackendKind,
    /// Compute threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Path to libonnxruntime.so (default: ORT_DYLIB_PATH, next to the binary, .deps/onnxruntime).
    #[arg(long)]
    pub ort_library: Option<std::path::PathBuf>,
}

impl RunFlags {
    pub fn options(&self) -> Options {
        let mut o = Options::default().backend(self.backend).threads(self.threads);
        if let Some(p) = &self.ort_library {
            o = o.ort_library(p);
        }
        o
    }
}
