//! Nothing lost: `ferrite export` and `ferrite train` are SIGKILLed at random points, again and
//! again, and after every kill
//!
//! - export: the output directory is absent (only if it was absent before) or a complete bundle
//!   that opens with every sha256 verified — never a partial one, and a bundle being replaced
//!   (`--force`) is never lost;
//! - train: a checkpoint is visible only with its commit marker, `trainer_state.bin` (renamed
//!   last), and then the next run resumes it with `--resume` (any failure to resume fails the
//!   test); a final `--resume` runs to the end and the result exports.
//!
//! Trials are deterministic for a seed (`FERRITE_KILL_SEED`, default 1); `FERRITE_KILL_TRIALS`
//! changes the number of trials per command (default 50).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrite_runtime::Bundle;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn trials() -> usize {
    std::env::var("FERRITE_KILL_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(50)
}

fn rng() -> Rng {
    let seed: u64 = std::env::var("FERRITE_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits up to `delay`, then SIGKILLs. `Some(status)` when the process ended on its own first.
fn kill_after(child: &mut Child, delay: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < delay {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let _ = child.wait();
    None
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// How long one uninterrupted run takes: kill points are drawn from [0, 1.2 × that].
fn time_run(args: &[&str]) -> Duration {
    let start = Instant::now();
    let mut child = spawn(args);
    let status = child.wait().unwrap();
    assert!(status.success(), "{args:?}: {}", stderr_of(&mut child));
    start.elapsed()
}

#[test]
fn killed_exports_never_leave_a_partial_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::root().join("exporter/tests/golden/lstm");
    let out = tmp.path().join("bundle");
    let (src_s, out_s) = (src.to_str().unwrap(), out.to_str().unwrap());
    let full = time_run(&["export", src_s, "-o", out_s, "--force"]);
    std::fs::remove_dir_all(&out).unwrap();
    let mut rng = rng();
    let (mut killed, mut finished, mut replaced) = (0, 0, 0);
    for trial in 0..trials() {
        let existed = out.exists();
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5));
        let mut child = spawn(&["export", src_s, "-o", out_s, "--force"]);
        match kill_after(&mut child, delay) {
            Some(status) => {
                assert!(status.success(), "trial {trial}: export failed: {}", stderr_of(&mut child));
                finished += 1;
            }
            None => killed += 1,
        }
        if existed {
            replaced += 1;
            assert!(out.exists(), "trial {trial}: killed after {delay:?}, the previous bundle is gone");
        }
        if out.exists()
            && let Err(e) = Bundle::open(&out)
        {
            panic!("trial {trial}: killed after {delay:?}: a partial bundle is visible: {e}");
        }
        // Every third trial starts from nothing again, so fresh exports are killed too.
        if trial % 3 == 2 && out.exists() {
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    let leftovers = std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.path() != out).count();
    eprintln!(
        "export: {} trials ({killed} killed, {finished} finished, {replaced} over an existing bundle), \
         full run {full:?}, {leftovers} hidden temporary dirs left by kills",
        trials()
    );
}

fn train_args<'a>(corpus: &'a str, out: &'a str, steps: &'a str, resume: bool) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--arch",
        "lstm",
        "--corpus",
        corpus,
        "--out",
        out,
        "--steps",
        steps,
        "--batch",
        "2",
        "--context",
        "8",
        "--layers",
        "1",
        "--embed",
        "8",
        "--hidden",
        "8",
        "--val-every",
        "1000000",
        "--checkpoint-every",
        "1",
    ];
    if resume {
        args.push("--resume");
    }
    args
}

fn checkpoint_visible(dir: &Path) -> bool {
    dir.join("trainer_state.bin").is_file()
}

#[test]
fn killed_training_always_resumes_from_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus: PathBuf = tmp.path().join("corpus.txt");
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    std::fs::write(&corpus, &text).unwrap();
    let out = tmp.path().join("ckpt");
    let (corpus_s, out_s) = (corpus.to_str().unwrap(), out.to_str().unwrap());
    const STEPS: &str = "12";
    let full = time_run(&train_args(corpus_s, out_s, STEPS, false));
    std::fs::remove_dir_all(&out).unwrap();
    let mut rng = rng();
    let (mut killed, mut resumed, mut completed) = (0, 0, 0);
    for trial in 0..trials() {
        let resume = checkpoint_visible(&out);
        if !resume && out.exists() {
            // Killed before the first checkpoint was committed: nothing to keep; start over.
            std::fs::remove_dir_all(&out).unwrap();
        }
        resumed += usize::from(resume);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5));
        let mut child = spawn(&train_args(corpus_s, out_s, STEPS, resume));
        match kill_after(&mut child, delay) {
            Some(status) => {
                let err = stderr_of(&mut child);
                assert!(status.success(), "trial {trial} (resume: {resume}): {err}");
                completed += 1;
                // The run finished: start the next trial from nothing.
                std::fs::remove_dir_all(&out).unwrap();
            }
            None => killed += 1,
        }
        if checkpoint_visible(&out) {
            for f in ["config.json", "model.safetensors", "vocab.json"] {
                assert!(out.join(f).is_file(), "trial {trial}: a committed checkpoint without {f}");
            }
        }
    }
    // The last checkpoint resumes to the end, and what it holds exports.
    if checkpoint_visible(&out) {
        let mut child = spawn(&train_args(corpus_s, out_s, STEPS, true));
        let status = child.wait().unwrap();
        assert!(status.success(), "final resume: {}", stderr_of(&mut child));
        let bundle = tmp.path().join("bundle");
        let mut child = spawn(&["export", out_s, "-o", bundle.to_str().unwrap()]);
        let status = child.wait().unwrap();
        assert!(status.success(), "export of the resumed checkpoint: {}", stderr_of(&mut child));
        Bundle::open(&bundle).unwrap();
    }
    eprintln!(
        "train: {} trials ({killed} killed, {completed} ran to the end, {resumed} started with --resume), full run {full:?}",
        trials()
    );
}
