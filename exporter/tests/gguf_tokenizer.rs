//! The tokenizer ferrite rebuilds from a GGUF's metadata encodes text to the same ids as the
//! references, read back through the runtime's own tokenizer (`tokenizers`, as a bundle is read):
//!
//! - the real SmolLM2-135M-Instruct GGUF (byte-level BPE, `pre = smollm`; fetched by
//!   `models/fetch-smollm2.sh`, a failed download fails the test): llama.cpp's ids on every text,
//!   which are transformers' (`gguf_file=`) on every text where transformers applies the file's
//!   pre-tokenizer (it ignores `smollm`'s digit split, so a whitespace run before a digit differs);
//! - a small byte-level BPE vocabulary written with `pre` = llama-bpe, qwen2 and gpt-2: llama.cpp's
//!   ids on every text, and transformers' (see the test for the one exception);
//! - a SentencePiece BPE vocabulary trained with `sentencepiece` and written as a `llama`-type
//!   GGUF: llama.cpp's ids on every text, SentencePiece's own on every text that spells no added
//!   token, transformers' on every text where it prefixes `▁` as they do (it does not before a
//!   leading space, nor after a special token).
//!
//! Goldens: scripts/make_tokenizer_goldens.py. With `FERRITE_TOKENIZER_JSON_DIR` set, the written
//! tokenizer.json files are kept there (`make_tokenizer_goldens.py --check DIR` loads them in
//! Python's `tokenizers`).

mod common;

use std::path::{Path, PathBuf};

use common::smollm2;
use ferrite_exporter::gguf_tokenizer::{chat_spec, tokenizer_json};
use ferrite_gguf::GgufFile;
use ferrite_runtime::TextTokenizer;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/gguf-tokenizer")
}

fn read_golden(name: &str) -> Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Option<Vec<u32>> {
    v.as_array().map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect())
}

/// Writes the tokenizer.json ferrite builds for `gguf` and loads it as a bundle's tokenizer.
fn ferrite_tokenizer(gguf: &Path, name: &str) -> TextTokenizer {
    let file = GgufFile::open(gguf).unwrap();
    let json = tokenizer_json(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, &json).unwrap();
    if let Some(keep) = std::env::var_os("FERRITE_TOKENIZER_JSON_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(Path::new(&keep).join(format!("{name}.json")), &json).unwrap();
    }
    TextTokenizer::from_tokenizer_json(&path).unwrap()
}

#[test]
fn smollm2_ids_equal_llama_cpp_and_transformers() {
    let golden = read_golden("smollm2_ids.json");
    let tok = ferrite_tokenizer(&smollm2(), "smollm2");
    let cases = golden["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut transformers_differs = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        let cpp = ids(&case["llama_cpp"]).unwrap();
        let hf = ids(&case["transformers"]).unwrap();
        if got != cpp {
            failures.push(format!("{text:?}: ferrite {got:?}, llama.cpp {cpp:?}"));
        }
        if hf != cpp {
            transformers_differs += 1;
            // Where transformers differs, it is for the one reason it is known to: a whitespace
            // run before a digit, which `smollm`'s digit split cuts and GPT-2's rule does not.
            let ws_digit =
                text.as_bytes().windows(2).any(|w| w[0].is_ascii_whitespace() && w[1].is_ascii_digit());
            assert!(ws_digit, "{text:?}: transformers {hf:?} and llama.cpp {cpp:?} differ unexpectedly");
        } else if got != hf {
            failures.push(format!("{text:?}: ferrite {got:?}, transformers {hf:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(transformers_differs < cases.len() / 4, "transformers differs on {transformers_differs} texts");
    // The text set covers special tokens inside text, and this file adds no BOS.
    assert_eq!(golden["adds_bos"], false);
    let chat = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!((chat[0], *chat.last().unwrap()), (1, 2), "control tokens are one id each: {chat:?}");
}

/// For a small byte-level vocabulary written with `pre` = llama-bpe (Llama 3's split, whole-word
/// tokens before merges, BOS added), qwen2 (single digits) and gpt-2: llama.cpp's ids on every
/// text, and transformers' on every text for qwen2 and gpt-2. For llama-bpe transformers
/// ignores the file's `ignore_merges`, so it may differ where a whole word is a token.
#[test]
fn byte_level_pre_tokenizers_equal_llama_cpp() {
    for pre in ["llama-bpe", "qwen2", "gpt-2"] {
        let golden = read_golden(&format!("bpe-{pre}_ids.json"));
        let tok = ferrite_tokenizer(&golden_dir().join(format!("bpe-{pre}.gguf")), &format!("bpe-{pre}"));
        let cases = golden["cases"].as_array().unwrap();
        let mut failures = Vec::new();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let got = tok.encode(text, true).unwrap();
            let cpp = ids(&case["llama_cpp"]).unwrap();
            let hf = ids(&case["transformers"]).unwrap();
            if got != cpp {
                failures.push(format!("{text:?}: ferrite {got:?}, llama.cpp {cpp:?}"));
            }
            if got != hf && (pre != "llama-bpe" || hf == cpp) {
                failures.push(format!("{text:?}: ferrite {got:?}, transformers {hf:?}"));
            }
        }
        assert!(failures.is_empty(), "pre {pre}: {} differences:\n{}", failures.len(), failures.join("\n"));
        assert_eq!(golden["adds_bos"], pre == "llama-bpe", "pre {pre}");
    }
}

#[test]
fn smollm2_chat_spec_comes_from_the_metadata() {
    let file = GgufFile::open(smollm2()).unwrap();
    let spec = chat_spec(&file).expect("SmolLM2's GGUF carries a chat template");
    assert!(spec.template.contains("<|im_start|>"), "{}", spec.template);
    assert_eq!(spec.bos_token, "<|im_start|>");
    assert_eq!(spec.eos_token, "<|im_end|>");
    assert_eq!(spec.end_of_turn, vec!["<|im_end|>".to_string()]);
}

#[test]
fn sentencepiece_ids_equal_llama_cpp_sentencepiece_and_transformers() {
    let golden = read_golden("spm_ids.json");
    let gguf = golden_dir().join("spm.gguf");
    let tok = ferrite_tokenizer(&gguf, "spm");
    let cases = golden["cases"].as_array().unwrap();
    let added = ["<s>", "</s>", "<unk>", "<|end|>", "<|user|>"];
    let mut failures = Vec::new();
    let (mut against_spm, mut transformers_differs) = (0, 0);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, true).unwrap();
        let cpp = ids(&case["llama_cpp"]).unwrap();
        let hf = ids(&case["transformers"]).unwrap();
        if got != cpp {
            failures.push(format!("{text:?}: ferrite {got:?}, llama.cpp {cpp:?}"));
        }
        if let Some(sp) = ids(&case["sentencepiece"]) {
            against_spm += 1;
            if got != sp {
                failures.push(format!("{text:?}: ferrite {got:?}, sentencepiece {sp:?}"));
            }
        }
        if hf != cpp {
            transformers_differs += 1;
            // transformers prefixes `▁` only at the very start, and not before a leading space.
            let reason = text.starts_with(char::is_whitespace) || added.iter().any(|a| text.contains(a));
            assert!(reason, "{text:?}: transformers {hf:?} and llama.cpp {cpp:?} differ unexpectedly");
        } else if got != hf {
            failures.push(format!("{text:?}: ferrite {got:?}, transformers {hf:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences over {} texts:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(against_spm * 4 >= cases.len() * 3, "only {against_spm} texts checked against sentencepiece");
    assert!(transformers_differs * 3 < cases.len(), "transformers differs on {transformers_differs} texts");
    // BOS is added (the file's add_bos_token), and characters outside the small vocabulary fall
    // back to <0xXX> tokens rather than <unk>.
    assert_eq!(golden["adds_bos"], true);
    let cjk = tok.encode("日本", true).unwrap();
    assert!(cjk.len() > 3 && !cjk[1..].contains(&0), "{cjk:?}");
    assert_eq!(tok.decode(&cjk[1..]).unwrap(), "日本");
    // Streaming: each token's bytes, concatenated, are the text (the words keep their spaces,
    // byte-fallback pieces their bytes); the prompt's leading `▁` shows as one leading space.
    for text in ["the cat sat on the mat", "日本 and 3.14"] {
        let ids = tok.encode(text, false).unwrap();
        let streamed: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).unwrap().to_vec()).collect();
        assert_eq!(String::from_utf8(streamed).unwrap(), format!(" {text}"), "{ids:?}");
    }
}

#[test]
fn sentencepiece_gguf_has_no_chat_template() {
    let file = GgufFile::open(golden_dir().join("spm.gguf")).unwrap();
    assert!(chat_spec(&file).is_none());
}
