//! The `ferrite train` command line: flag definitions for the lead's CLI to mount, and [`run`],
//! which turns them into a [`TrainConfig`], installs the Ctrl-C handler and trains. It does not
//! set up logging or choose thread counts (the binary owns both; burn's CPU backend uses rayon's
//! global pool, so `RAYON_NUM_THREADS` applies).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, ValueEnum};

use crate::tokenizer::TokenizerKind;
use crate::train::{Arch, TrainConfig, train};

/// Architecture flag values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchArg {
    /// Embedding → L×LSTM → Linear (PyTorch state_dict layout).
    Lstm,
    /// GPT-2 decoder (Hugging Face layout); needs --tokenizer bpe:N.
    Gpt2,
}

/// `ferrite train`: train an LSTM or GPT-2 language model on text files.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Architecture to train.
    #[arg(long, value_enum)]
    pub arch: ArchArg,
    /// Corpus files or directories (walked recursively, hidden files skipped).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Output directory: the checkpoint the exporter reads, plus train_log.jsonl and loss.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Tokenizer: `char` or `bpe:N` (byte-level BPE with N tokens).
    #[arg(long, default_value = "char")]
    pub tokenizer: TokenizerKind,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Windows per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Tokens per window (for GPT-2 also n_positions).
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// LSTM layers / GPT-2 blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// LSTM embedding width.
    #[arg(long, default_value_t = 128)]
    pub embed: usize,
    /// LSTM hidden size.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// GPT-2 width (n_embd).
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// GPT-2 attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Peak learning rate (linear warmup, cosine decay to a tenth).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Seed for initialisation and batch sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Continue the run checkpointed in --out exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune from this checkpoint directory (its tokenizer and sizes are used).
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Measure validation loss every N steps.
    #[arg(long, default_value_t = 100)]
    pub val_every: u64,
    /// Write a checkpoint every N steps (and always at the end and on Ctrl-C).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
}

impl TrainArgs {
    /// The library configuration these flags describe.
    pub fn to_config(&self) -> TrainConfig {
        let arch = match self.arch {
            ArchArg::Lstm => Arch::Lstm,
            ArchArg::Gpt2 => Arch::Gpt2,
        };
        let mut cfg = TrainConfig::new(arch, self.corpus.clone(), self.out.clone());
        cfg.tokenizer = self.tokenizer;
        cfg.steps = self.steps;
        cfg.batch = self.batch;
        cfg.context = self.context;
        cfg.layers = self.layers;
        cfg.embed = self.embed;
        cfg.hidden = self.hidden;
        cfg.d_model = self.d_model;
        cfg.heads = self.heads;
        cfg.lr = self.lr;
        cfg.seed = self.seed;
        cfg.resume = self.resume;
        cfg.init = self.init.clone();
        cfg.val_every = self.val_every;
        cfg.checkpoint_every = self.checkpoint_every;
        cfg
    }
}

/// Runs `ferrite train`. The first Ctrl-C finishes the current step, checkpoints and returns;
/// a second one exits at once.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = args.to_config();
    cfg.validate()?;
    cfg.progress = true;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handler = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint after this step (press again to abort)");
    });
    if let Err(e) = handler {
        // A host program may own SIGINT already; training still works, just without the save.
        log::warn!("Ctrl-C handler not installed ({e}); an interrupt will not checkpoint");
    }
    cfg.stop = Some(stop);
    let summary = train(&cfg)?;
    let val = summary.val_loss.map_or_else(|| "n/a".into(), |v| format!("{v:.4} (ppl {:.2})", v.exp()));
    eprintln!(
        "{} at step {}: train loss {:.4}, validation loss {val}; checkpoint in {}",
        if summary.interrupted { "stopped" } else { "done" },
        summary.step,
        summary.train_loss,
        cfg.out.display()
    );
    Ok(())
}
