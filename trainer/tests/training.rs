//! End-to-end training behaviour on tiny generated corpora: loss goes down, every parameter
//! learns, checkpoints round-trip exactly, and `--resume` reproduces an uninterrupted run.

mod common;

use burn::tensor::Device;
use common::{Scratch, tiny_config, write_corpus};
use ferrite_trainer::checkpoint;
use ferrite_trainer::corpus::train_batch;
use ferrite_trainer::model::{Gpt2Config, Gpt2Lm, LanguageModel, LstmConfig, LstmLm};
use ferrite_trainer::report::read_log;
use ferrite_trainer::rng::SplitMix64;
use ferrite_trainer::train::{Arch, checkpoint_logits, gradient_norms, train};

fn loss_decreases(arch: Arch) {
    let dir = Scratch::new("loss");
    let corpus = write_corpus(dir.path());
    let out = dir.path().join("out");
    let mut cfg = tiny_config(arch, corpus, out.clone());
    cfg.steps = 40;
    cfg.lr = 2e-2;
    let summary = train(&cfg).expect("train");
    assert_eq!(summary.step, 40);
    let log = read_log(&out).expect("log");
    let first = log.first().expect("log entries").train_loss;
    let last = log.last().expect("log entries").train_loss;
    assert!(last < first * 0.8, "{arch:?}: train loss {first} -> {last} did not fall by 20%");
    let val = summary.val_loss.expect("validation measured");
    assert!(val.is_finite() && val < first, "{arch:?}: val {val} vs first train {first}");
    assert!(out.join("loss.png").is_file());
    assert!(log.iter().any(|e| e.val_loss.is_some() && e.val_ppl.is_some()));
}

#[test]
fn lstm_loss_decreases() {
    loss_decreases(Arch::Lstm);
}

#[test]
fn gpt2_loss_decreases() {
    loss_decreases(Arch::Gpt2);
}

fn assert_all_params_learn<M: LanguageModel>(model: &M, vocab: usize) {
    let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % vocab) as u32).collect();
    let batch = train_batch(&tokens, 1, 0, 3, 8);
    let norms = gradient_norms(model, &batch);
    assert_eq!(norms.len(), model.named_tensors().len());
    for (name, norm) in &norms {
        assert!(norm.is_finite() && *norm > 0.0, "{name}: gradient norm {norm}");
    }
}

#[test]
fn every_lstm_parameter_gets_a_gradient() {
    let device = Device::flex().autodiff();
    let cfg = LstmConfig::new(11, 6, 8, 2);
    let model = LstmLm::load(&cfg, cfg.init_weights(&mut SplitMix64::new(3)), &device).expect("load");
    assert_all_params_learn(&model, 11);
}

#[test]
fn every_gpt2_parameter_gets_a_gradient() {
    let device = Device::flex().autodiff();
    let cfg = Gpt2Config::new(13, 8, 8, 2, 2, 0);
    let model = Gpt2Lm::load(&cfg, cfg.init_weights(&mut SplitMix64::new(3)), &device).expect("load");
    assert_all_params_learn(&model, 13);
}

fn weights_of(dir: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    let loaded = checkpoint::load_model(dir).expect("load checkpoint");
    let device = Device::flex();
    let tensors = match &loaded.config {
        ferrite_trainer::model::ModelConfig::Lstm(c) => {
            LstmLm::load(c, loaded.weights, &device).expect("lstm").named_tensors()
        }
        ferrite_trainer::model::ModelConfig::Gpt2(c) => {
            Gpt2Lm::load(c, loaded.weights, &device).expect("gpt2").named_tensors()
        }
    };
    tensors
        .into_iter()
        .map(|(n, d)| {
            let shape = d.shape().as_slice().to_vec();
            let bits = d.try_to_vec::<f32>().expect("f32").into_iter().map(f32::to_bits).collect();
            (n, shape, bits)
        })
        .collect()
}

fn resume_matches_uninterrupted(arch: Arch) {
    let dir = Scratch::new("resume");
    let corpus = write_corpus(dir.path());

    let straight = dir.path().join("straight");
    let mut cfg = tiny_config(arch, corpus.clone(), straight.clone());
    cfg.steps = 12;
    cfg.checkpoint_every = 100;
    train(&cfg).expect("uninterrupted run");

    let pieces = dir.path().join("pieces");
    let mut cfg = tiny_config(arch, corpus, pieces.clone());
    cfg.steps = 12;
    cfg.checkpoint_every = 100;
    cfg.stop_after = Some(5);
    let first = train(&cfg).expect("interrupted run");
    assert!(first.interrupted);
    assert_eq!(first.step, 5);
    let at_5 = weights_of(&pieces);
    cfg.stop_after = None;
    cfg.resume = true;
    let second = train(&cfg).expect("resumed run");
    assert_eq!(second.step, 12);
    assert!(!second.interrupted);

    let a = weights_of(&straight);
    let b = weights_of(&pieces);
    assert_ne!(at_5, b, "resumed run must have trained further");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert!(x == y, "{arch:?}: {} differs between resumed and uninterrupted runs", x.0);
    }
    // The log of the resumed run continues the interrupted one without gaps or repeats.
    let steps: Vec<u64> = read_log(&pieces).expect("log").iter().map(|e| e.step).collect();
    let mut sorted = steps.clone();
    sorted.dedup();
    assert_eq!(steps, sorted);
    assert_eq!(steps.last(), Some(&12));
}

#[test]
fn lstm_resume_is_bit_identical() {
    resume_matches_uninterrupted(Arch::Lstm);
}

#[test]
fn gpt2_resume_is_bit_identical() {
    resume_matches_uninterrupted(Arch::Gpt2);
}

#[test]
fn save_load_round_trip_is_exact() {
    let dir = Scratch::new("roundtrip");
    let corpus = write_corpus(dir.path());
    let out = dir.path().join("out");
    let mut cfg = tiny_config(Arch::Gpt2, corpus, out.clone());
    cfg.steps = 3;
    train(&cfg).expect("train");
    // Save what we loaded into a second directory and compare bit for bit.
    let loaded = checkpoint::load_model(&out).expect("load");
    let device = Device::flex();
    let ferrite_trainer::model::ModelConfig::Gpt2(c) = &loaded.config else {
        panic!("expected gpt2 config");
    };
    let model = Gpt2Lm::load(c, loaded.weights.clone(), &device).expect("model");
    let (state, optim) = checkpoint::load_state(&out).expect("state");
    let copy = dir.path().join("copy");
    checkpoint::save(&copy, &model.config(), &model.named_tensors(), &loaded.tokenizer, &state, &optim)
        .expect("save copy");
    assert_eq!(weights_of(&out), weights_of(&copy));
    assert_eq!(
        std::fs::read(out.join("config.json")).expect("config"),
        std::fs::read(copy.join("config.json")).expect("config copy")
    );
    let tokens = [1u32, 5, 9, 2];
    let (a, dims) = checkpoint_logits(&out, &tokens).expect("logits");
    let (b, _) = checkpoint_logits(&copy, &tokens).expect("logits copy");
    assert_eq!(dims, [1, 4, c.vocab_size]);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(a.iter().all(|v| v.is_finite()));
}

#[test]
fn fine_tune_from_init_starts_from_the_checkpoint() {
    let dir = Scratch::new("init");
    let corpus = write_corpus(dir.path());
    let base = dir.path().join("base");
    let mut cfg = tiny_config(Arch::Lstm, corpus.clone(), base.clone());
    cfg.steps = 10;
    train(&cfg).expect("base run");
    let tuned = dir.path().join("tuned");
    let mut cfg = tiny_config(Arch::Lstm, corpus, tuned.clone());
    cfg.steps = 2;
    cfg.hidden = 99; // ignored: the checkpoint's sizes win
    cfg.init = Some(base.clone());
    train(&cfg).expect("fine-tune");
    let a = weights_of(&base);
    let b = weights_of(&tuned);
    assert_eq!(
        a.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(),
        b.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>()
    );
    assert_ne!(a, b);
    let base_log = read_log(&base).expect("base log");
    let tuned_log = read_log(&tuned).expect("tuned log");
    // Starting from trained weights, the first fine-tuning loss is near the base's final loss,
    // far below the loss of a fresh model.
    let fresh = base_log.first().expect("entries").train_loss;
    let start = tuned_log.first().expect("entries").train_loss;
    assert!(start < fresh, "fine-tune started at {start}, fresh model at {fresh}");
}
