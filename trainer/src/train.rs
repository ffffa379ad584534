//! The training loop: validates the request, prepares tokens and the model (fresh, `--init` or
//! `--resume`), then runs AdamW with warmup + cosine decay and global gradient-norm clipping,
//! measures validation loss periodically, logs, and checkpoints every N steps, at the end and
//! when asked to stop. Determinism: weights are initialised from our own seeded generator and
//! batch `s` is a function of `(seed, s)`, so a run resumed at step k reproduces the
//! uninterrupted run bit for bit. It does not do mixed precision, gradient accumulation, data
//! parallelism or early stopping.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkpoint::{self, TrainerState};
use crate::corpus::{self, Batch};
use crate::error::{Result, TrainError};
use crate::model::{
    Gpt2Config, Gpt2Lm, LanguageModel, LstmConfig, LstmLm, ModelConfig, cross_entropy, gradient_sums,
};
use crate::report::{self, LogEntry};
use crate::rng::SplitMix64;
use crate::schedule::LrSchedule;
use crate::tokenizer::{TextTokenizer, TokenizerKind};

/// Which architecture to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Embedding → L×LSTM → Linear.
    Lstm,
    /// GPT-2 decoder.
    Gpt2,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Self::Lstm => "lstm",
            Self::Gpt2 => "gpt2",
        }
    }
}

/// Everything a training run needs (the CLI's [`crate::cli::TrainArgs`] map onto it).
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Architecture.
    pub arch: Arch,
    /// Corpus files or directories.
    pub corpus: Vec<PathBuf>,
    /// Output (checkpoint) directory.
    pub out: PathBuf,
    /// Tokenizer to train (ignored with `resume`/`init`, which reuse the checkpoint's).
    pub tokenizer: TokenizerKind,
    /// Total optimizer steps.
    pub steps: u64,
    /// Windows per batch.
    pub batch: usize,
    /// Tokens per window.
    pub context: usize,
    /// LSTM layers or GPT blocks.
    pub layers: usize,
    /// LSTM embedding width E.
    pub embed: usize,
    /// LSTM hidden size H.
    pub hidden: usize,
    /// GPT width (n_embd).
    pub d_model: usize,
    /// GPT attention heads.
    pub heads: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay (not applied to biases, norms and embeddings).
    pub weight_decay: f64,
    /// Global gradient-norm clipping threshold.
    pub grad_clip: f64,
    /// Seed for initialisation and batches.
    pub seed: u64,
    /// Continue the run checkpointed in `out`.
    pub resume: bool,
    /// Start from the weights and tokenizer of this checkpoint.
    pub init: Option<PathBuf>,
    /// Measure validation loss every N steps (and at the end).
    pub val_every: u64,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: u64,
    /// Maximum validation windows per evaluation (bounds evaluation cost on big corpora).
    pub max_val_windows: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Set from outside (Ctrl-C) to checkpoint and stop after the current step.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop (checkpointed, as if interrupted) once this many steps are done: for tests and for
    /// training in slices.
    pub stop_after: Option<u64>,
}

impl TrainConfig {
    /// Defaults for everything but the arch, corpus and output directory.
    pub fn new(arch: Arch, corpus: Vec<PathBuf>, out: PathBuf) -> Self {
        Self {
            arch,
            corpus,
            out,
            tokenizer: TokenizerKind::Char,
            steps: 1000,
            batch: 32,
            context: 128,
            layers: 2,
            embed: 128,
            hidden: 256,
            d_model: 128,
            heads: 4,
            lr: 3e-3,
            weight_decay: 0.1,
            grad_clip: 1.0,
            seed: 42,
            resume: false,
            init: None,
            val_every: 100,
            checkpoint_every: 500,
            max_val_windows: 256,
            progress: false,
            stop: None,
            stop_after: None,
        }
    }

    /// Checks flag values and combinations (before any file is read).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::InvalidArgument(m));
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch == 0 || self.context == 0 {
            return bad("--batch and --context must be at least 1".into());
        }
        if self.val_every == 0 || self.checkpoint_every == 0 {
            return bad("--val-every and --checkpoint-every must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if self.resume && self.init.is_some() {
            return bad("--resume and --init exclude each other: --resume continues the run in --out, --init starts a new run from another checkpoint".into());
        }
        if self.layers == 0 {
            return bad("--layers must be at least 1".into());
        }
        match self.arch {
            Arch::Lstm if self.embed == 0 || self.hidden == 0 => {
                bad("--embed and --hidden must be at least 1".into())
            }
            Arch::Gpt2
                if self.heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.heads) =>
            {
                bad(format!(
                    "--d-model ({}) must be a positive multiple of --heads ({})",
                    self.d_model, self.heads
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Steps completed (in total, across resumes).
    pub step: u64,
    /// Mean training loss of the last logged interval.
    pub train_loss: f64,
    /// Last validation loss measured.
    pub val_loss: Option<f64>,
    /// Whether the run stopped early (Ctrl-C or `stop_after`) with a checkpoint.
    pub interrupted: bool,
}

/// Where the model and tokenizer come from.
struct Prepared {
    tokenizer: TextTokenizer,
    config: ModelConfig,
    weights: crate::model::Weights,
    resumed: Option<(TrainerState, Vec<u8>)>,
}

/// Runs (or resumes) a training run as configured. See the module docs.
pub fn train(cfg: &TrainConfig) -> Result<TrainSummary> {
    cfg.validate()?;
    let files = corpus::read_corpus(&cfg.corpus)?;
    let prepared = prepare(cfg, &files)?;

    let tokens = files.iter().map(|f| prepared.tokenizer.encode_file(f)).collect::<Result<Vec<_>>>()?;
    let splits = corpus::split_tokens(&files, tokens, prepared.tokenizer.end_of_text());
    let needed = cfg.context + 1;
    for (split, toks) in [("train", &splits.train), ("validation", &splits.validation)] {
        if toks.len() < needed {
            return Err(TrainError::CorpusTooShort { split, tokens: toks.len(), needed });
        }
    }
    if let ModelConfig::Gpt2(c) = &prepared.config
        && cfg.context > c.n_positions
    {
        return Err(TrainError::InvalidArgument(format!(
            "--context {} exceeds the model's n_positions {}",
            cfg.context, c.n_positions
        )));
    }
    if prepared.tokenizer.vocab_size() > prepared.config.vocab_size() {
        return Err(TrainError::InvalidArgument(format!(
            "tokenizer has {} tokens but the model's vocab_size is {}",
            prepared.tokenizer.vocab_size(),
            prepared.config.vocab_size()
        )));
    }
    log::info!(
        "corpus: {} files, {} train / {} validation tokens, vocab {}; held out: {:?}",
        files.len(),
        splits.train.len(),
        splits.validation.len(),
        prepared.tokenizer.vocab_size(),
        splits.validation_files
    );

    let device = Device::flex().autodiff();
    let data = Data {
        train: splits.train,
        validation: corpus::validation_batches(
            &splits.validation,
            cfg.batch,
            cfg.context,
            cfg.max_val_windows,
        ),
    };
    match &prepared.config {
        ModelConfig::Lstm(c) => {
            let model = LstmLm::load(c, prepared.weights, &device)?;
            run_loop(cfg, model, prepared.tokenizer, prepared.resumed, &data, &device)
        }
        ModelConfig::Gpt2(c) => {
            let model = Gpt2Lm::load(c, prepared.weights, &device)?;
            run_loop(cfg, model, prepared.tokenizer, prepared.resumed, &data, &device)
        }
    }
}

fn prepare(cfg: &TrainConfig, files: &[corpus::CorpusFile]) -> Result<Prepared> {
    let check_arch = |config: &ModelConfig, dir: &PathBuf| {
        if config.arch() != cfg.arch.name() {
            return Err(TrainError::InvalidArgument(format!(
                "{} holds a {} model but --arch is {}",
                dir.display(),
                config.arch(),
                cfg.arch.name()
            )));
        }
        Ok(())
    };
    if cfg.resume {
        checkpoint::finish_interrupted_save(&cfg.out)?;
        if !cfg.out.join(checkpoint::STATE_FILE).is_file() {
            return Err(TrainError::InvalidArgument(format!(
                "--resume: {} holds no {} to resume from",
                cfg.out.display(),
                checkpoint::STATE_FILE
            )));
        }
        let (state, optim) = checkpoint::load_state(&cfg.out)?;
        let loaded = checkpoint::load_model(&cfg.out)?;
        check_arch(&loaded.config, &cfg.out)?;
        if loaded.step != Some(state.step) {
            return Err(TrainError::checkpoint(
                &cfg.out,
                format!(
                    "weights are from step {:?} but the resume state from step {} (a crash during a save?)",
                    loaded.step, state.step
                ),
            ));
        }
        if (state.batch, state.context, state.seed) != (cfg.batch, cfg.context, cfg.seed) {
            log::warn!(
                "resuming with --batch/--context/--seed {:?} different from the checkpoint's {:?}: the run will not match an uninterrupted one",
                (cfg.batch, cfg.context, cfg.seed),
                (state.batch, state.context, state.seed)
            );
        }
        if state.total_steps != cfg.steps || state.lr != cfg.lr {
            log::warn!("--steps/--lr changed on resume: the learning-rate schedule changes too");
        }
        return Ok(Prepared {
            tokenizer: loaded.tokenizer,
            config: loaded.config,
            weights: loaded.weights,
            resumed: Some((state, optim)),
        });
    }
    if checkpoint::has_checkpoint(&cfg.out) {
        return Err(TrainError::InvalidArgument(format!(
            "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
            cfg.out.display()
        )));
    }
    if let Some(init) = &cfg.init {
        let loaded = checkpoint::load_model(init)?;
        check_arch(&loaded.config, init)?;
        log::info!(
            "fine-tuning from {} (its tokenizer and size flags replace the command line's)",
            init.display()
        );
        return Ok(Prepared {
            tokenizer: loaded.tokenizer,
            config: loaded.config,
            weights: loaded.weights,
            resumed: None,
        });
    }
    let tokenizer = TextTokenizer::train(cfg.tokenizer, files)?;
    let vocab = tokenizer.vocab_size();
    let mut rng = SplitMix64::for_step(cfg.seed, 0, 0);
    let (config, weights) = match cfg.arch {
        Arch::Lstm => {
            let c = LstmConfig::new(vocab, cfg.embed, cfg.hidden, cfg.layers);
            let w = c.init_weights(&mut rng);
            (ModelConfig::Lstm(c), w)
        }
        Arch::Gpt2 => {
            let eot = tokenizer.end_of_text().ok_or_else(|| {
                TrainError::InvalidArgument(
                    "--arch gpt2 needs --tokenizer bpe:N (GPT-2 checkpoints carry a byte-level BPE tokenizer.json)".into(),
                )
            })?;
            let c = Gpt2Config::new(vocab, cfg.context, cfg.d_model, cfg.layers, cfg.heads, eot);
            let w = c.init_weights(&mut rng);
            (ModelConfig::Gpt2(c), w)
        }
    };
    Ok(Prepared { tokenizer, config, weights, resumed: None })
}

struct Data {
    train: Vec<u32>,
    validation: Vec<Batch>,
}

fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let shape = [batch.batch, batch.context];
    let x = Tensor::<2, Int>::from_data(TensorData::new(batch.inputs.clone(), shape), device);
    let y = Tensor::<2, Int>::from_data(TensorData::new(batch.targets.clone(), shape), device);
    (x, y)
}

/// AdamW with decay off for biases, norms and embeddings (GPT-2 practice; decaying them only
/// hurts small models).
fn optimizer<M: LanguageModel>(model: &M, weight_decay: f64) -> ModuleOptimizer {
    let base = AdamWConfig::new().with_beta_2(0.99).with_epsilon(1e-8).with_weight_decay(weight_decay as f32);
    let no_decay = base.clone().with_weight_decay(0.0).build();
    base.init().with_group(ParamGroup::from_ids(model.no_decay_ids()), no_decay, None)
}

/// Scales all gradients together so their global L2 norm is at most `max_norm` (as PyTorch's
/// `clip_grad_norm_`; burn's own clipping works per tensor). Returns the norm before clipping.
fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = gradient_sums(model, grads).iter().map(|p| p.sum_sq).sum::<f64>().sqrt();
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / (norm + 1e-6);
        struct Scale<'a> {
            grads: &'a mut GradientsParams,
            scale: f64,
        }
        impl burn::module::ModuleVisitor for Scale<'_> {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                if let Some(g) = self.grads.remove::<D>(p.id) {
                    self.grads.register::<D>(p.id, g.mul_scalar(self.scale));
                }
            }
        }
        model.visit(&mut Scale { grads, scale });
    }
    norm
}

/// Gradient L2 norm of every parameter for one batch, by checkpoint name: what the
/// "every parameter learns" test checks.
pub fn gradient_norms<M: LanguageModel>(model: &M, batch: &Batch) -> Vec<(String, f64)> {
    let device = Device::flex().autodiff();
    let (x, y) = batch_tensors(batch, &device);
    let loss = cross_entropy(model.forward(x), y);
    let grads = GradientsParams::from_grads(loss.backward(), model);
    let names = model.named_tensors();
    let mut out: Vec<(String, f64)> = gradient_sums(model, &grads)
        .into_iter()
        .map(|p| {
            // Ids are assigned 1.. in the order `named_tensors` lists them (see `Weights::param`).
            let name = usize::try_from(p.id.val())
                .ok()
                .and_then(|i| names.get(i.wrapping_sub(1)))
                .map_or_else(|| format!("param#{}", p.id.val()), |(n, _)| n.clone());
            (name, if p.has_grad { p.sum_sq.sqrt() } else { 0.0 })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Mean validation cross-entropy (nats/token) over the fixed validation batches.
pub fn validation_loss<M: LanguageModel>(model: &M, batches: &[Batch]) -> f64 {
    let model = model.valid();
    let device = Device::flex();
    let (mut sum, mut rows) = (0.0f64, 0usize);
    for b in batches {
        let (x, y) = batch_tensors(b, &device);
        let loss = cross_entropy(model.forward(x), y).into_scalar::<f32>();
        sum += f64::from(loss) * b.batch as f64;
        rows += b.batch;
    }
    sum / rows.max(1) as f64
}

fn run_loop<M: LanguageModel>(
    cfg: &TrainConfig,
    mut model: M,
    tokenizer: TextTokenizer,
    resumed: Option<(TrainerState, Vec<u8>)>,
    data: &Data,
    device: &Device,
) -> Result<TrainSummary> {
    let mut optim = optimizer(&model, cfg.weight_decay);
    let mut state = TrainerState {
        step: 0,
        total_steps: cfg.steps,
        seed: cfg.seed,
        arch: cfg.arch.name().into(),
        batch: cfg.batch,
        context: cfg.context,
        lr: cfg.lr,
        elapsed_s: 0.0,
        tokens_seen: 0,
    };
    let mut history = Vec::new();
    if let Some((saved, optim_bytes)) = resumed {
        optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(optim_bytes))
            .map_err(|e| TrainError::checkpoint(&cfg.out, format!("optimizer state: {e}")))?;
        history = report::truncate_log(&cfg.out, saved.step)?;
        state.step = saved.step;
        state.elapsed_s = saved.elapsed_s;
        state.tokens_seen = saved.tokens_seen;
        log::info!("resuming at step {} of {}", state.step, cfg.steps);
    } else {
        std::fs::create_dir_all(&cfg.out).map_err(|e| TrainError::io(&cfg.out, e))?;
        // A fresh run starts a fresh log (an old one could only be from a deleted checkpoint).
        let log_path = cfg.out.join(report::LOG_FILE);
        if log_path.exists() {
            std::fs::remove_file(&log_path).map_err(|e| TrainError::io(&log_path, e))?;
        }
    }
    let schedule = LrSchedule::new(cfg.lr, cfg.steps);
    let log_every = cfg.val_every.min(10);
    let bar = progress_bar(cfg, state.step);

    let session_start = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut interval = (0.0f64, 0u64, Instant::now(), 0u64); // loss sum, steps, start, tokens
    let mut summary = TrainSummary {
        step: state.step,
        train_loss: f64::NAN,
        val_loss: history.iter().rev().find_map(|e| e.val_loss),
        interrupted: false,
    };
    if state.step >= cfg.steps {
        log::info!("nothing to do: {} steps already done", state.step);
        bar.finish_and_clear();
        return Ok(summary);
    }

    while state.step < cfg.steps {
        let step = state.step;
        let lr = schedule.lr(step);
        let batch = corpus::train_batch(&data.train, cfg.seed, step, cfg.batch, cfg.context);
        let (x, y) = batch_tensors(&batch, device);
        let loss = cross_entropy(model.forward(x), y);
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        if !loss_value.is_finite() {
            return Err(TrainError::InvalidArgument(format!(
                "training diverged at step {step} (loss {loss_value}); lower --lr"
            )));
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_global_norm(&model, &mut grads, cfg.grad_clip);
        model = optim.step(lr, model, grads);

        state.step += 1;
        let tokens = (cfg.batch * cfg.context) as u64;
        state.tokens_seen += tokens;
        interval.0 += loss_value;
        interval.1 += 1;
        interval.3 += tokens;
        state.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();

        let done = state.step == cfg.steps;
        let stop_requested =
            cfg.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) || cfg.stop_after == Some(state.step);
        let validate = state.step.is_multiple_of(cfg.val_every) || done;
        let save = state.step.is_multiple_of(cfg.checkpoint_every) || done || stop_requested;
        let log_now = state.step.is_multiple_of(log_every) || validate || save;

        let tok_s = interval.3 as f64 / interval.2.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(state.step);
        bar.set_message(format!("loss {loss_value:.3} | {tok_s:.0} tok/s"));
        if log_now {
            let val_loss = validate.then(|| validation_loss(&model, &data.validation));
            let entry = LogEntry {
                step: state.step,
                train_loss: interval.0 / interval.1 as f64,
                val_loss,
                val_ppl: val_loss.map(f64::exp),
                lr,
                tokens_per_s: tok_s,
                elapsed_s: state.elapsed_s,
            };
            if let Some(v) = val_loss {
                let line = format!(
                    "step {:>6}  train {:.4}  val {:.4}  ppl {:.2}",
                    state.step,
                    entry.train_loss,
                    v,
                    v.exp()
                );
                // A visible bar owns the terminal; without one (pipes, CI) the log carries it.
                if bar.is_hidden() {
                    log::info!("{line}");
                } else {
                    bar.println(line);
                }
                summary.val_loss = Some(v);
            }
            summary.train_loss = entry.train_loss;
            report::append_log(&cfg.out, &entry)?;
            history.push(entry);
            interval = (0.0, 0, Instant::now(), 0);
        }
        if save {
            let optim_bytes = optim
                .into_bytes()
                .map_err(|e| TrainError::checkpoint(&cfg.out, format!("optimizer state: {e}")))?;
            checkpoint::save(
                &cfg.out,
                &model.config(),
                &model.named_tensors(),
                &tokenizer,
                &state,
                &optim_bytes,
            )?;
            let tmp = cfg.out.join(".loss.tmp.png");
            report::plot_losses(&tmp, &history)?;
            let png = cfg.out.join(report::PLOT_FILE);
            std::fs::rename(&tmp, &png).map_err(|e| TrainError::io(&png, e))?;
        }
        summary.step = state.step;
        if stop_requested && !done {
            summary.interrupted = true;
            bar.println(format!("stopped at step {}; checkpoint saved, continue with --resume", state.step));
            break;
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

fn progress_bar(cfg: &TrainConfig, start: u64) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::with_draw_target(Some(cfg.steps), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(cfg.steps);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style);
    }
    bar.set_position(start);
    bar
}

/// Loads a checkpoint directory on the plain (no autodiff) device and returns the logits
/// `[1, len, vocab]` (flattened) for `tokens`: the reference the exporter's parity tests compare
/// fp32 ONNX output against.
pub fn checkpoint_logits(dir: &std::path::Path, tokens: &[u32]) -> Result<(Vec<f32>, [usize; 3])> {
    let loaded = checkpoint::load_model(dir)?;
    let device = Device::flex();
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
    let logits = match &loaded.config {
        ModelConfig::Lstm(c) => LstmLm::load(c, loaded.weights, &device)?.forward(x),
        ModelConfig::Gpt2(c) => Gpt2Lm::load(c, loaded.weights, &device)?.forward(x),
    };
    let dims = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| TrainError::checkpoint(dir, format!("{e:?}")))?;
    Ok((values, dims))
}
