//! The data pipeline: corpus paths → files (sorted, so every run sees the same order) → a
//! train/validation split by whole file → one token stream per split → random context windows
//! drawn with a seeded generator. It deliberately does no shuffling of documents, no padding and
//! no streaming from disk: the corpora this trainer is for fit in memory many times over.
//!
//! Split rule (documented for users in the README): with `n ≥ 2` files in path order, file `i`
//! goes to validation when `i % 10 == 9`, or, with fewer than 10 files, the last file does. A
//! single file is split by tokens instead: its last 10 % is validation.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};
use crate::rng::SplitMix64;

/// A corpus file as read from disk.
#[derive(Debug, Clone)]
pub struct CorpusFile {
    /// Where it came from (for error messages and the split report).
    pub path: PathBuf,
    /// Its raw bytes: the byte-level tokenizer takes anything, the char tokenizer checks UTF-8.
    pub bytes: Vec<u8>,
}

/// Expands `paths` (files, or directories walked recursively) into a sorted, de-duplicated list
/// of non-hidden regular files and reads them. Errors name the first unreadable path.
pub fn read_corpus(paths: &[PathBuf]) -> Result<Vec<CorpusFile>> {
    if paths.is_empty() {
        return Err(TrainError::EmptyCorpus("no --corpus path given".into()));
    }
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    files.sort();
    files.dedup();
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        if !bytes.is_empty() {
            out.push(CorpusFile { path, bytes });
        }
    }
    if out.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(TrainError::EmptyCorpus(format!("no non-empty file under {}", shown.join(", "))));
    }
    Ok(out)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| TrainError::io(path, e))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(TrainError::InvalidArgument(format!("{}: not a file or directory", path.display())));
    }
    let entries = std::fs::read_dir(path).map_err(|e| TrainError::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(path, e))?;
        let child = entry.path();
        // Hidden files are editor and VCS droppings, never corpus text.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        collect_files(&child, out)?;
    }
    Ok(())
}

/// Which files (by index into the sorted list) are held out for validation.
pub fn validation_file_indices(n_files: usize) -> Vec<usize> {
    match n_files {
        0 | 1 => Vec::new(),
        2..=9 => vec![n_files - 1],
        _ => (0..n_files).filter(|i| i % 10 == 9).collect(),
    }
}

/// Train and validation token streams.
#[derive(Debug, Clone)]
pub struct TokenSplits {
    /// Tokens the model trains on.
    pub train: Vec<u32>,
    /// Held-out tokens for validation loss.
    pub validation: Vec<u32>,
    /// The files held out (empty when a single file was split by tokens).
    pub validation_files: Vec<PathBuf>,
}

/// Splits already-tokenised files into the two streams, joining files of one split with
/// `separator` (the end-of-text token for BPE, nothing for characters) so windows may span a
/// file boundary the same way they would in one long document.
pub fn split_tokens(files: &[CorpusFile], tokens: Vec<Vec<u32>>, separator: Option<u32>) -> TokenSplits {
    let held_out = validation_file_indices(files.len());
    let mut train = Vec::new();
    let mut validation = Vec::new();
    let mut validation_files = Vec::new();
    if files.len() == 1 {
        let mut all = tokens.into_iter().next().unwrap_or_default();
        let cut = all.len() - all.len() / 10;
        validation = all.split_off(cut);
        train = all;
    } else {
        for (i, toks) in tokens.into_iter().enumerate() {
            let (stream, is_val) =
                if held_out.contains(&i) { (&mut validation, true) } else { (&mut train, false) };
            if !stream.is_empty()
                && let Some(sep) = separator
            {
                stream.push(sep);
            }
            stream.extend(toks);
            if is_val {
                validation_files.push(files[i].path.clone());
            }
        }
    }
    TokenSplits { train, validation, validation_files }
}

/// A batch of windows: inputs and the next-token targets, both `[batch, context]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Rows of input token ids.
    pub inputs: Vec<i64>,
    /// The same rows shifted by one token.
    pub targets: Vec<i64>,
    /// Number of rows.
    pub batch: usize,
    /// Tokens per row.
    pub context: usize,
}

/// Stream identifier for training windows in [`SplitMix64::for_step`].
const TRAIN_STREAM: u64 = 1;

/// The training batch for `step`: `batch` windows at uniformly random offsets, drawn from a
/// generator derived from `(seed, step)` so a resumed run draws exactly the batches the
/// uninterrupted run would have.
pub fn train_batch(tokens: &[u32], seed: u64, step: u64, batch: usize, context: usize) -> Batch {
    let mut rng = SplitMix64::for_step(seed, TRAIN_STREAM, step);
    let starts = tokens.len() - context; // callers guarantee len >= context + 1
    let offsets: Vec<usize> = (0..batch).map(|_| rng.below(starts as u64) as usize).collect();
    windows_at(tokens, &offsets, context)
}

/// Fixed validation batches: evenly spaced windows covering the stream (at most `max_windows`),
/// the same at every evaluation so validation losses are comparable across steps and runs.
pub fn validation_batches(tokens: &[u32], batch: usize, context: usize, max_windows: usize) -> Vec<Batch> {
    let starts = tokens.len() - context;
    let n = (starts / context).clamp(1, max_windows.max(1));
    let stride = starts / n;
    let offsets: Vec<usize> = (0..n).map(|i| i * stride).collect();
    offsets.chunks(batch).map(|chunk| windows_at(tokens, chunk, context)).collect()
}

fn windows_at(tokens: &[u32], offsets: &[usize], context: usize) -> Batch {
    let mut inputs = Vec::with_capacity(offsets.len() * context);
    let mut targets = Vec::with_capacity(offsets.len() * context);
    for &o in offsets {
        inputs.extend(tokens[o..o + context].iter().map(|&t| i64::from(t)));
        targets.extend(tokens[o + 1..o + context + 1].iter().map(|&t| i64::from(t)));
    }
    Batch { inputs, targets, batch: offsets.len(), context }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rule() {
        assert!(validation_file_indices(1).is_empty());
        assert_eq!(validation_file_indices(3), vec![2]);
        assert_eq!(validation_file_indices(25), vec![9, 19]);
    }

    #[test]
    fn windows_are_shifted_and_in_range() {
        let toks: Vec<u32> = (0..100).collect();
        let b = train_batch(&toks, 3, 5, 4, 8);
        assert_eq!(b.inputs.len(), 32);
        for (x, y) in b.inputs.iter().zip(&b.targets) {
            assert_eq!(*y, *x + 1);
        }
        assert_eq!(b, train_batch(&toks, 3, 5, 4, 8));
        assert_ne!(b, train_batch(&toks, 3, 6, 4, 8));
    }

    #[test]
    fn validation_windows_fit() {
        let toks: Vec<u32> = (0..50).collect();
        let batches = validation_batches(&toks, 2, 10, 16);
        let rows: usize = batches.iter().map(|b| b.batch).sum();
        assert_eq!(rows, 4);
        assert!(batches.iter().all(|b| b.targets.iter().all(|&t| t < 50)));
    }
}
