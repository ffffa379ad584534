//! Bad input is rejected with a clear error before any training, and a checkpoint directory
//! holds exactly the tensor names, shapes and config keys the exporter (and transformers) read.

mod common;

use common::{Scratch, tiny_config, write_corpus};
use ferrite_trainer::TrainError;
use ferrite_trainer::tokenizer::TokenizerKind;
use ferrite_trainer::train::{Arch, train};
use safetensors::SafeTensors;

fn err_of(cfg: &ferrite_trainer::train::TrainConfig) -> TrainError {
    match train(cfg) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => e,
    }
}

#[test]
fn empty_corpus_is_rejected() {
    let dir = Scratch::new("empty");
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).expect("mkdir");
    std::fs::write(corpus.join("a.txt"), "").expect("write");
    let out = dir.path().join("out");
    let e = err_of(&tiny_config(Arch::Lstm, corpus, out.clone()));
    assert!(matches!(e, TrainError::EmptyCorpus(_)), "{e}");
    assert!(!out.exists(), "nothing may be written on bad input");
}

#[test]
fn corpus_shorter_than_a_context_is_rejected() {
    let dir = Scratch::new("short");
    let corpus = dir.path().join("c");
    std::fs::create_dir_all(&corpus).expect("mkdir");
    std::fs::write(corpus.join("a.txt"), "hello world, a short text").expect("write");
    std::fs::write(corpus.join("b.txt"), "tiny").expect("write");
    let mut cfg = tiny_config(Arch::Lstm, corpus, dir.path().join("out"));
    cfg.context = 16;
    let e = err_of(&cfg);
    assert!(matches!(e, TrainError::CorpusTooShort { split: "validation", tokens: 4, needed: 17 }), "{e}");
    assert!(e.to_string().contains("--context"));
}

#[test]
fn unreadable_path_is_named() {
    let dir = Scratch::new("missing");
    let missing = dir.path().join("no-such-file.txt");
    let e = err_of(&tiny_config(Arch::Lstm, missing.clone(), dir.path().join("out")));
    assert!(matches!(e, TrainError::Io { .. }), "{e}");
    assert!(e.to_string().contains("no-such-file.txt"));
}

#[test]
fn invalid_flags_are_rejected() {
    let dir = Scratch::new("flags");
    let corpus = write_corpus(dir.path());
    let out = dir.path().join("out");
    let mut cfg = tiny_config(Arch::Gpt2, corpus.clone(), out.clone());
    cfg.d_model = 10;
    cfg.heads = 3;
    assert!(err_of(&cfg).to_string().contains("--heads"));
    let mut cfg = tiny_config(Arch::Lstm, corpus.clone(), out.clone());
    cfg.steps = 0;
    assert!(err_of(&cfg).to_string().contains("--steps"));
    let mut cfg = tiny_config(Arch::Lstm, corpus.clone(), out.clone());
    cfg.resume = true;
    cfg.init = Some(out.clone());
    assert!(err_of(&cfg).to_string().contains("--init"));
    let mut cfg = tiny_config(Arch::Lstm, corpus.clone(), out.clone());
    cfg.resume = true;
    assert!(err_of(&cfg).to_string().contains("--resume"));
    let mut cfg = tiny_config(Arch::Gpt2, corpus, out.clone());
    cfg.tokenizer = TokenizerKind::Char;
    assert!(err_of(&cfg).to_string().contains("bpe"));
    assert!("bpe:12".parse::<TokenizerKind>().is_err());
    assert!("word".parse::<TokenizerKind>().is_err());
    assert_eq!("bpe:512".parse::<TokenizerKind>(), Ok(TokenizerKind::Bpe(512)));
}

#[test]
fn existing_checkpoint_needs_resume() {
    let dir = Scratch::new("exists");
    let corpus = write_corpus(dir.path());
    let out = dir.path().join("out");
    let mut cfg = tiny_config(Arch::Lstm, corpus, out.clone());
    cfg.steps = 1;
    train(&cfg).expect("first run");
    let e = err_of(&cfg);
    assert!(e.to_string().contains("--resume"), "{e}");
}

#[test]
fn non_utf8_needs_the_byte_level_tokenizer() {
    let dir = Scratch::new("bytes");
    let corpus = write_corpus(dir.path());
    let mut bytes = std::fs::read(corpus.join("part0.txt")).expect("read");
    bytes.splice(10..10, [0xff, 0xfe, 0x80]);
    std::fs::write(corpus.join("part0.txt"), &bytes).expect("write");
    let e = err_of(&tiny_config(Arch::Lstm, corpus.clone(), dir.path().join("a")));
    assert!(matches!(e, TrainError::NotUtf8 { offset: 10, .. }), "{e}");
    assert!(e.to_string().contains("bpe"));
    let mut cfg = tiny_config(Arch::Lstm, corpus, dir.path().join("b"));
    cfg.tokenizer = TokenizerKind::Bpe(300);
    cfg.steps = 2;
    train(&cfg).expect("byte-level BPE takes any bytes");
    assert!(dir.path().join("b/tokenizer.json").is_file());
}

fn tensor_layout(dir: &std::path::Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            (n, v.shape().to_vec())
        })
        .collect();
    out.sort();
    out
}

fn config_of(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config")).expect("config json")
}

#[test]
fn lstm_checkpoint_has_the_pytorch_layout() {
    let dir = Scratch::new("lstm-layout");
    let corpus = write_corpus(dir.path());
    let out = dir.path().join("out");
    let mut cfg = tiny_config(Arch::Lstm, corpus, out.clone());
    cfg.steps = 1;
    train(&cfg).expect("train");
    let config = config_of(&out);
    let vocab: std::collections::BTreeMap<String, u32> =
        serde_json::from_slice(&std::fs::read(out.join("vocab.json")).expect("vocab")).expect("vocab json");
    let v = vocab.len();
    let (e, h) = (16, 24);
    assert_eq!(
        config,
        serde_json::json!({"arch": "lstm", "vocab_size": v, "embed_dim": e,
                           "hidden_size": h, "num_layers": 2})
    );
    let mut ids: Vec<u32> = vocab.values().copied().collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..v as u32).collect::<Vec<_>>(), "dense ids");
    let mut expected = vec![
        ("embedding.weight".to_string(), vec![v, e]),
        ("head.weight".into(), vec![v, h]),
        ("head.bias".into(), vec![v]),
    ];
    for (l, d_in) in [(0, e), (1, h)] {
        expected.push((format!("lstm.weight_ih_l{l}"), vec![4 * h, d_in]));
        expected.push((format!("lstm.weight_hh_l{l}"), vec![4 * h, h]));
        expected.push((format!("lstm.bias_ih_l{l}"), vec![4 * h]));
        expected.push((format!("lstm.bias_hh_l{l}"), vec![4 * h]));
    }
    expected.sort();
    assert_eq!(tensor_layout(&out), expected);
    for f in ["trainer_state.bin", "train_log.jsonl", "loss.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(!out.join("tokenizer.json").exists());
}

#[test]
fn gpt2_checkpoint_has_the_hugging_face_layout() {
    let dir = Scratch::new("gpt-layout");
    let corpus = write_corpus(dir.path());
    let out = dir.path().join("out");
    let mut cfg = tiny_config(Arch::Gpt2, corpus, out.clone());
    cfg.steps = 1;
    train(&cfg).expect("train");
    let config = config_of(&out);
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer.json")).expect("tokenizer"))
            .expect("tokenizer json");
    let eot = tok["added_tokens"][0]["id"].as_u64().expect("eot id");
    assert_eq!(tok["added_tokens"][0]["content"], "<|endoftext|>");
    assert_eq!(tok["pre_tokenizer"]["type"], "ByteLevel");
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["architectures"], serde_json::json!(["GPT2LMHeadModel"]));
    assert_eq!(config["activation_function"], "gelu_new");
    assert_eq!(config["n_positions"], 16);
    assert_eq!(config["n_embd"], 16);
    assert_eq!(config["n_layer"], 2);
    assert_eq!(config["n_head"], 2);
    assert_eq!(config["layer_norm_epsilon"], 1e-5);
    assert_eq!(config["bos_token_id"], eot);
    assert_eq!(config["eos_token_id"], eot);
    assert_eq!(config["tie_word_embeddings"], true);
    let v = config["vocab_size"].as_u64().expect("vocab_size") as usize;
    assert!(v <= 300 && v > 256, "vocab {v}");
    let d = 16;
    let mut expected = vec![
        ("transformer.wte.weight".to_string(), vec![v, d]),
        ("transformer.wpe.weight".into(), vec![16, d]),
        ("transformer.ln_f.weight".into(), vec![d]),
        ("transformer.ln_f.bias".into(), vec![d]),
    ];
    for i in 0..2 {
        let p = format!("transformer.h.{i}");
        for (n, s) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, 4 * d]),
            ("mlp.c_fc.bias", vec![4 * d]),
            ("mlp.c_proj.weight", vec![4 * d, d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            expected.push((format!("{p}.{n}"), s));
        }
    }
    expected.sort();
    assert_eq!(tensor_layout(&out), expected, "no lm_head: it is tied to wte");
    let bytes = std::fs::read(out.join("model.safetensors")).expect("weights");
    let (_, meta) = SafeTensors::read_metadata(&bytes).expect("metadata");
    let meta = meta.metadata().clone().expect("metadata present");
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"), "transformers needs it");
}
