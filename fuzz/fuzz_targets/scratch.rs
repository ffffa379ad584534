//! A per-process scratch directory: the targets fuzz the public path-based entry points
//! (`Model::open`, `Bundle::open`, the tokenizer loaders) by writing each input to a file.
//! Every target calls `dir()` first.

use std::path::PathBuf;
use std::sync::OnceLock;

pub fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // libfuzzer-sys aborts on every panic, even one the runtime catches and turns into a typed
        // error (it wraps tract, tokenizers and npyz that way). Restore the default hook: a panic
        // that escapes the runtime still fails the run (libfuzzer-sys catches it and aborts).
        let _ = std::panic::take_hook();
        let base =
            std::env::var_os("FERRITE_FUZZ_SCRATCH").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("ferrite-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}
