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

/// Flags of every subcommand that opens a bundle: the run flags plus the hash-check opt-out.
#[derive(clap::Args, Debug, Clone)]
pub struct BundleFlags {
    /// Skip the sha256 check of the bundle's files.
    #[arg(long)]
    pub no_verify: bool,
    #[command(flatten)]
    pub run: RunFlags,
}

impl BundleFlags {
    /// Opens the bundle at `dir` with these flags.
    pub fn open(&self, dir: &std::path::Path) -> ferrite_runtime::Result<ferrite_runtime::Bundle> {
        let options = ferrite_runtime::BundleOptions::default()
            .run_options(self.run.options())
            .verify_hashes(!self.no_verify);
        ferrite_runtime::Bundle::open_with(dir, &options)
    }
}
