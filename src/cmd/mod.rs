//! One module per subcommand; shared option parsing lives here.

pub mod bench;
pub mod chat;
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
    /// Refuse models estimated to need more memory than this: bytes, or with a K/M/G suffix
    /// (binary: 512M = 512 MiB). A board's budget is in boards/BOARD.toml.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub memory_budget: Option<u64>,
    /// tract only: run the file's standard ONNX nodes instead of ferrite's fused ops (an int8
    /// file's per-token quantisation, a decoder's attention blocks); the same outputs, to
    /// rounding. For measuring what the fusion buys.
    #[arg(long)]
    pub tract_unfused: bool,
    /// tract only: rebuild a decoder's KV cache with the file's `Concat` at every step instead
    /// of appending to it in place (the same outputs). For measuring what the in-place cache buys.
    #[arg(long)]
    pub tract_kv_concat: bool,
    /// ort only: run the file's attention and its `Concat` that rebuilds a decoder's KV cache
    /// every step, instead of ferrite's attention operator on a cache kept in place (the
    /// same outputs, to rounding). For measuring what the in-place cache buys.
    #[arg(long)]
    pub ort_kv_concat: bool,
    /// ort only: run the standard ONNX nodes of an int8 file's per-token quantisation instead
    /// of ferrite's fused custom operators (the same arithmetic). For measuring what they buy.
    #[arg(long)]
    pub ort_unfused: bool,
}

/// `1048576`, `1024K`, `512M`, `1G` (binary multiples).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 30),
        t => (t, 0),
    };
    let n: u64 =
        digits.parse().map_err(|_| format!("`{s}` is not a byte count (e.g. 335544320, 320M, 1G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

impl RunFlags {
    pub fn options(&self) -> Options {
        let mut o = Options::default()
            .backend(self.backend)
            .threads(self.threads)
            .tract_fused_int8(!self.tract_unfused)
            .tract_fused_attention(!self.tract_unfused)
            .tract_in_place_kv(!self.tract_kv_concat)
            .ort_in_place_kv(!self.ort_kv_concat)
            .ort_fused_int8(!self.ort_unfused);
        if let Some(p) = &self.ort_library {
            o = o.ort_library(p);
        }
        if let Some(bytes) = self.memory_budget {
            o = o.memory_budget(bytes);
        }
        o
    }
}

/// Sampling and stopping flags shared by `generate` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingFlags {
    /// Most new tokens (per reply, for `chat`).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling threshold in (0, 1] (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// PRNG seed: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains STR (repeatable; the stop string is not printed).
    #[arg(long = "stop", value_name = "STR")]
    pub stop: Vec<String>,
}

impl SamplingFlags {
    /// Generation options from these flags; `stop_ids` is left empty for the caller.
    pub fn options(&self) -> ferrite_runtime::Result<ferrite_runtime::GenerateOptions> {
        Ok(ferrite_runtime::GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: ferrite_runtime::SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop_strings: ferrite_runtime::stream::stop_strings(&self.stop)?,
            ..ferrite_runtime::GenerateOptions::default()
        })
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
    /// Opens the bundle at `dir` with these flags; a memory budget counts its full context.
    pub fn open(&self, dir: &std::path::Path) -> ferrite_runtime::Result<ferrite_runtime::Bundle> {
        ferrite_runtime::Bundle::open_with(dir, &self.bundle_options())
    }

    /// Opens the bundle at `dir` for sequences of at most `positions` tokens: a memory budget
    /// counts that many (a generator checks its own prompt plus `max_tokens` before running).
    pub fn open_for(
        &self,
        dir: &std::path::Path,
        positions: usize,
    ) -> ferrite_runtime::Result<ferrite_runtime::Bundle> {
        ferrite_runtime::Bundle::open_with(dir, &self.bundle_options().positions(positions))
    }

    fn bundle_options(&self) -> ferrite_runtime::BundleOptions {
        ferrite_runtime::BundleOptions::default()
            .run_options(self.run.options())
            .verify_hashes(!self.no_verify)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("335544320"), Ok(335544320));
        assert_eq!(parse_bytes("320M"), Ok(320 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }
}
