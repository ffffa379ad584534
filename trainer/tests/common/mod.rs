//! Shared helpers: a scratch directory per test and a small generated corpus.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferrite_trainer::train::{Arch, TrainConfig};

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ferrite-trainer-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a repetitive but not trivial three-file corpus (so the split holds out one file).
pub fn write_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).expect("mkdir corpus");
    let words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"];
    for f in 0..3 {
        let mut text = String::new();
        for i in 0..120 {
            let a = words[(i * 7 + f) % words.len()];
            let b = words[(i * 3 + 1) % words.len()];
            text.push_str(&format!("{a} {b} {}. ", words[i % words.len()]));
            if i % 6 == 5 {
                text.push('\n');
            }
        }
        std::fs::write(corpus.join(format!("part{f}.txt")), text).expect("write corpus");
    }
    corpus
}

/// A tiny, fast configuration.
pub fn tiny_config(arch: Arch, corpus: PathBuf, out: PathBuf) -> TrainConfig {
    let mut cfg = TrainConfig::new(arch, vec![corpus], out);
    cfg.steps = 20;
    cfg.batch = 4;
    cfg.context = 16;
    cfg.layers = 2;
    cfg.embed = 16;
    cfg.hidden = 24;
    cfg.d_model = 16;
    cfg.heads = 2;
    cfg.lr = 1e-2;
    cfg.val_every = 10;
    cfg.checkpoint_every = 10;
    cfg.max_val_windows = 8;
    if arch == Arch::Gpt2 {
        cfg.tokenizer = ferrite_trainer::tokenizer::TokenizerKind::Bpe(300);
    }
    cfg
}
