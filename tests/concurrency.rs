//! Concurrency: one bundle shared by 8 threads, each generating (GPT-2, LSTM) and embedding
//! (BERT) in turn, gives results identical to a single thread, on every backend; and the
//! thread-safety bounds of the public types are stated at compile time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::sample::SamplingParams;
use ferrite_runtime::{Bundle, BundleOptions, Embedder, Error, Model, Options, Plan, Session, TextTokenizer};

/// The bounds callers rely on: bundles, plans and models are shared between threads; sessions,
/// generators and embedders move to a thread (one per thread). A change that breaks one of these
/// fails to compile here.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shared::<Bundle>();
    shared::<Plan>();
    shared::<Model>();
    shared::<TextTokenizer>();
    shared::<Error>();
    movable::<Session>();
    movable::<Generator<&Bundle>>();
    movable::<Generator<Arc<Bundle>>>();
    movable::<Embedder<&Bundle>>();
    movable::<Embedder<Arc<Bundle>>>();
};

const THREADS: usize = 8;
const ROUNDS: usize = 2;

fn export(src: &Path, out: &Path) -> PathBuf {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["export", src.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "export failed: {}", String::from_utf8_lossy(&o.stderr));
    out.to_path_buf()
}

fn golden(case: &str) -> PathBuf {
    common::root().join("exporter/tests/golden").join(case)
}

/// The BERT golden checkpoint plus a small lower-casing WordPiece tokenizer over its 64 ids.
fn bert_source(tmp: &Path) -> PathBuf {
    let src = tmp.join("bert-src");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden("bert").join(f), src.join(f)).unwrap();
    }
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    tokens.extend("abcdefghijklmnopqrstuvwxyz0123456789.,!?".chars().map(String::from));
    tokens.extend("abcdefghijklmnopqrstuvwxyz".chars().map(|c| format!("##{c}")));
    tokens.truncate(64);
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let special = |t: &str, id: usize| serde_json::json!({"id": t, "ids": [id], "tokens": [t]});
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": special("[CLS]", 2), "[SEP]": special("[SEP]", 3)}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    std::fs::write(src.join("tokenizer.json"), serde_json::to_string(&tok).unwrap()).unwrap();
    src
}

/// Work item `i`: a seeded sampled generation on each LM bundle and one embedding.
#[derive(Debug, Clone, PartialEq)]
struct Result3 {
    gpt2: Vec<u32>,
    lstm: Vec<u32>,
    embedding: Vec<f32>,
}

fn work(i: usize, gpt2: &Bundle, lstm: &Bundle, bert: &Bundle) -> Result3 {
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams { temperature: 0.9, top_k: 20, seed: i as u64, ..Default::default() },
        ..GenerateOptions::default()
    };
    let prompt = [1 + i as u32, 2, 3 + i as u32];
    let run =
        |b: &Bundle| Generator::new(b).unwrap().generate(&prompt, &opts, &|_| None, &mut |_| {}).unwrap().ids;
    let (gpt2, lstm) = (run(gpt2), run(lstm));
    let text = format!("thread {i} says hello, world!");
    let embedding = Embedder::new(bert).unwrap().embed(&[text.as_str()]).unwrap().remove(0);
    Result3 { gpt2, lstm, embedding }
}

#[test]
fn eight_threads_on_one_bundle_match_a_single_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let gpt2_dir = export(&golden("gpt2"), &tmp.path().join("gpt2"));
    let lstm_dir = export(&golden("lstm"), &tmp.path().join("lstm"));
    let bert_dir = export(&bert_source(tmp.path()), &tmp.path().join("bert"));
    for run in common::backends() {
        let open =
            |d: &Path| Bundle::open_with(d, &BundleOptions::default().run_options(run.clone())).unwrap();
        let (gpt2, lstm, bert) = (open(&gpt2_dir), open(&lstm_dir), open(&bert_dir));
        let reference: Vec<Result3> = (0..THREADS).map(|i| work(i, &gpt2, &lstm, &bert)).collect();
        assert!(reference.windows(2).any(|w| w[0].gpt2 != w[1].gpt2), "seeds must give different ids");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (gpt2, lstm, bert, reference) = (&gpt2, &lstm, &bert, &reference);
                    s.spawn(move || {
                        // Every thread runs every work item, starting at a different one, so
                        // threads overlap on the same plan with different inputs.
                        for _ in 0..ROUNDS {
                            for k in 0..THREADS {
                                let i = (t + k) % THREADS;
                                let got = work(i, gpt2, lstm, bert);
                                assert_eq!(got, reference[i], "{:?}: thread {t}, item {i}", run.backend);
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
        // Shared ownership: the same through Arc handles moved into threads.
        let shared = Arc::new(gpt2);
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let b = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let opts = GenerateOptions {
                        max_tokens: 12,
                        sampling: SamplingParams {
                            temperature: 0.9,
                            top_k: 20,
                            seed: i as u64,
                            ..Default::default()
                        },
                        ..GenerateOptions::default()
                    };
                    let prompt = [1 + i as u32, 2, 3 + i as u32];
                    Generator::new(b).unwrap().generate(&prompt, &opts, &|_| None, &mut |_| {}).unwrap().ids
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), reference[i].gpt2, "{:?}: Arc thread {i}", run.backend);
        }
    }
}

#[test]
fn one_plan_runs_sessions_on_many_threads() {
    let model = Model::open(common::test_models().join("lstm/model.onnx")).unwrap();
    let inputs = ["X", "initial_h", "initial_c"].map(|n| {
        (
            n,
            ferrite_runtime::npy::read_npy(common::test_models().join(format!("lstm/input_{n}.npy")))
                .unwrap(),
        )
    });
    for run in common::backends() {
        let plan: Plan = model.prepare(&Options::default().backend(run.backend)).unwrap();
        let views: Vec<_> = inputs.iter().map(|(n, t)| (*n, t.view())).collect();
        let want = plan.session().unwrap().run(&views).unwrap();
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    let mut session = plan.session().unwrap();
                    for _ in 0..4 {
                        let got = session.run(&views).unwrap();
                        for (name, w) in want.iter() {
                            assert_eq!(got.get(name).unwrap(), w, "{:?}: {name}", run.backend);
                        }
                    }
                });
            }
        });
    }
}
