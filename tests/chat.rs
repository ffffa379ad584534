//! Chat: templates render what transformers' `apply_chat_template` renders (goldens from
//! scripts/make_chat_goldens.py), a conversation keeps its KV cache across turns and gives the
//! tokens a fresh run of the whole prompt gives, the context fills and old turns are dropped,
//! and bundles without a template are refused by the runtime, `generate --chat` and `chat`.
//!
//! The test bundle is models/shakespeare-gpt/int8 with a `chat` object added to its ferrite.json
//! (the manifest is not among the hashed files): tests/golden/chat/ferrite-fixture.jinja, whose
//! turns end with the tokenizer's `<|endoftext|>`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferrite_runtime::chat::{ChatTemplate, Message};
use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::sample::argmax;
use ferrite_runtime::{Bundle, BundleOptions, Conversation, Error, Options, StopReason};

fn goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(common::root().join("tests/golden/chat/goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn template_source(name: &str) -> String {
    std::fs::read_to_string(common::root().join(format!("tests/golden/chat/{name}.jinja"))).unwrap()
}

fn messages(case: &serde_json::Value) -> Vec<Message> {
    case.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

/// models/shakespeare-gpt/int8 copied into `dir` with `chat` (when given) added to ferrite.json.
fn chat_bundle(dir: &Path, chat: Option<serde_json::Value>) -> PathBuf {
    let src = common::root().join("models/shakespeare-gpt/int8");
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    if let Some(chat) = chat {
        let path = dir.join("ferrite.json");
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        manifest["chat"] = chat;
        std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    }
    dir.to_path_buf()
}

fn fixture_chat() -> serde_json::Value {
    serde_json::json!({
        "template": template_source("ferrite-fixture"),
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "end_of_turn": ["<|endoftext|>"],
    })
}

fn open(dir: &Path, run: &Options) -> Bundle {
    Bundle::open_with(dir, &BundleOptions::default().run_options(run.clone())).unwrap()
}

fn ferrite(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .current_dir(common::root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn templates_render_what_transformers_renders() {
    let g = goldens();
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 32, "{} cases", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let name = case["template"].as_str().unwrap();
        names.insert(name);
        let t = ChatTemplate::new(
            &template_source(name),
            case["bos_token"].as_str().unwrap(),
            case["eos_token"].as_str().unwrap(),
        )
        .unwrap();
        let got =
            t.render(&messages(&case["messages"]), case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(got, case["text"].as_str().unwrap(), "case {i} ({name})");
    }
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ferrite-fixture", "llama3", "methods", "smollm2-135m-instruct"]
    );
    // The template's own refusal comes back as a typed error with its message.
    let refused = &g["refused"];
    let t = ChatTemplate::new(&template_source("methods"), "<s>", "</s>").unwrap();
    let err = t.render(&messages(&refused["messages"]), false).unwrap_err();
    let want = refused["message"].as_str().unwrap();
    assert!(matches!(&err, Error::ChatTemplate(m) if m.contains(want)), "{err} (transformers: {want})");
}

#[test]
fn the_rendered_prompt_tokenizes_as_transformers_tokenizes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    let bundle = open(&dir, &Options::default());
    let template = bundle.chat_template().expect("the bundle has a template");
    assert_eq!(template.stop_ids(), [0], "<|endoftext|> is id 0 and the end-of-turn token");
    let tok = bundle.require_tokenizer().unwrap();
    let mut n = 0;
    for case in goldens()["cases"].as_array().unwrap() {
        if case["template"] != "ferrite-fixture" {
            continue;
        }
        let text = template
            .render(&messages(&case["messages"]), case["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        let want: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(&text, false).unwrap(), want, "{text:?}");
        n += 1;
    }
    assert_eq!(n, 8);
}

#[test]
fn a_real_template_uses_little_of_its_fuel() {
    // 400 messages through SmolLM2's template render well inside the fuel budget.
    let t =
        ChatTemplate::new(&template_source("smollm2-135m-instruct"), "<|im_start|>", "<|im_end|>").unwrap();
    let long: Vec<Message> =
        (0..400)
            .map(|i| {
                if i % 2 == 0 { Message::user(format!("question {i}")) } else { Message::assistant("answer") }
            })
            .collect();
    let text = t.render(&long, true).unwrap();
    assert_eq!(text.matches("<|im_start|>").count(), 402);
}

#[test]
fn bundles_without_or_with_a_bad_chat_object() {
    let tmp = tempfile::tempdir().unwrap();
    // An older bundle (no `chat`) opens as before and refuses a conversation.
    let plain = open(&common::root().join("models/shakespeare-gpt/int8"), &Options::default());
    assert!(plain.chat_template().is_none());
    let err = Conversation::new(&plain, None, GenerateOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::ChatTemplate(m) if m.contains("has no chat template")), "{err}");

    let open_err = |name: &str, chat: serde_json::Value| {
        let dir = chat_bundle(&tmp.path().join(name), Some(chat));
        Bundle::open(&dir).unwrap_err()
    };
    let mut chat = fixture_chat();
    chat["end_of_turn"] = serde_json::json!(["<|im_end|>"]);
    let err = open_err("eot", chat);
    assert!(matches!(&err, Error::InvalidBundle { reason, .. } if reason.contains("<|im_end|>")), "{err}");
    let mut chat = fixture_chat();
    chat["template"] = serde_json::json!("{% for m in messages %}");
    let err = open_err("syntax", chat);
    assert!(matches!(&err, Error::InvalidBundle { reason, .. } if reason.contains("syntax")), "{err}");
    let err = open_err("type", serde_json::json!({"template": 7}));
    assert!(matches!(err, Error::InvalidBundle { .. }), "{err}");
}

/// A user message of about 60 tokens.
fn long_message(turn: usize) -> String {
    format!(
        "Turn {turn}: speak to me of kings and of their queens, of castles high upon the hills, of \
         battles lost and battles won, of swords and crowns and heavy hearts, and of the sea that \
         bears the ships of England home."
    )
}

/// Greedy ids after `prompt` from a fresh generator (the whole prompt run at once).
fn fresh_greedy(bundle: &Bundle, prompt: &[u32], n: usize, stop: u32) -> Vec<u32> {
    let mut g = Generator::new(bundle).unwrap();
    let mut opts = GenerateOptions { max_tokens: n, ..GenerateOptions::default() };
    opts.stop_ids.push(stop).unwrap();
    g.generate(prompt, &opts, &|_| None, &mut |_| {}).unwrap().ids
}

#[test]
fn a_conversation_reuses_its_cache_and_matches_fresh_runs_on_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    for run in common::backends() {
        let bundle = open(&dir, &run);
        let tok = bundle.require_tokenizer().unwrap();
        let template = bundle.chat_template().unwrap();
        let opts = GenerateOptions { max_tokens: 12, ..GenerateOptions::default() };
        let mut chat = Conversation::new(&bundle, Some("Speak as a king."), opts).unwrap();
        let mut prefilled = Vec::new();
        for (turn, text) in ["Who goes there?", "Thy name, good sir?", "Farewell."].iter().enumerate() {
            let before: Vec<Message> = chat.messages().to_vec();
            let mut streamed = String::new();
            let reply = chat
                .send(text, &mut |s| {
                    streamed.push_str(s);
                    true
                })
                .unwrap();
            assert_eq!(reply.text, streamed);
            assert_eq!(reply.dropped_messages, 0);
            // The reply equals a fresh greedy run on the whole rendered conversation.
            let mut sent = before.clone();
            sent.push(Message::user(*text));
            let prompt = tok.encode(&template.render(&sent, true).unwrap(), false).unwrap();
            assert_eq!(reply.prompt_tokens, prompt.len());
            assert_eq!(reply.ids, fresh_greedy(&bundle, &prompt, 12, 0), "{:?} turn {turn}", run.backend);
            if turn > 0 {
                assert!(
                    reply.prefilled_tokens < reply.prompt_tokens / 2,
                    "turn {turn}: {} of {} prompt tokens prefilled: the cache was not reused",
                    reply.prefilled_tokens,
                    reply.prompt_tokens
                );
            }
            prefilled.push(reply.prefilled_tokens);
            let last = chat.messages().last().unwrap();
            assert_eq!((last.role.as_str(), last.content.as_str()), ("assistant", reply.text.as_str()));
        }
        assert_eq!(chat.messages().len(), 7, "system + 3 turns");
        // /reset keeps the system message and empties the cache.
        chat.reset().unwrap();
        assert_eq!(chat.messages(), [Message::system("Speak as a king.")]);
        assert_eq!(chat.cached_tokens(), 0);
        let again = chat.send("Who goes there?", &mut |_| true).unwrap();
        assert_eq!(again.prefilled_tokens, again.prompt_tokens, "{prefilled:?}");
    }
}

#[test]
fn cutting_the_cache_back_equals_a_fresh_run_on_every_backend() {
    let bundle_dir = common::root().join("models/shakespeare-gpt/int8");
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 4000).collect();
    for run in common::backends() {
        let bundle = open(&bundle_dir, &run);
        let mut g = Generator::new(&bundle).unwrap();
        g.feed(&ids).unwrap();
        g.truncate(25).unwrap();
        assert_eq!(g.position(), 25);
        let cut = g.feed(&[7, 8, 9]).unwrap();
        let mut fresh = Generator::new(&bundle).unwrap();
        let mut seq = ids[..25].to_vec();
        seq.extend([7, 8, 9]);
        let all = fresh.feed(&seq).unwrap();
        let v = g.vocab_size();
        let want = &all[25 * v..];
        let diff = cut.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-3, "{:?}: max abs difference {diff}", run.backend);
        assert_eq!(argmax(&cut[2 * v..]), argmax(&want[2 * v..]));
        assert!(matches!(g.truncate(99), Err(Error::InvalidGeneration(_))));
    }
}

#[test]
fn a_full_context_drops_the_oldest_turns_and_keeps_the_system_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    let bundle = open(&dir, &Options::default());
    let ctx = bundle.context_length().unwrap();
    // Long messages and short replies fill the context quickly (a prefill is one model call).
    let opts = GenerateOptions { max_tokens: 8, ..GenerateOptions::default() };
    let mut chat = Conversation::new(&bundle, Some("Be brief."), opts).unwrap();
    let mut dropped = 0;
    for turn in 0..6 {
        let reply = chat.send(&long_message(turn), &mut |_| true).unwrap();
        assert!(reply.prompt_tokens < ctx);
        assert!(chat.cached_tokens() <= ctx);
        dropped += reply.dropped_messages;
        assert_eq!(chat.messages()[0], Message::system("Be brief."));
        assert_eq!(chat.messages()[1].role, "user", "a conversation resumes with a user message");
    }
    assert!(dropped >= 2, "{ctx} tokens of context, 6 turns of about 70 tokens: something must go");
    // A message that cannot fit even alone is refused and changes nothing.
    let before = chat.messages().to_vec();
    let err = chat.send(&"word ".repeat(400), &mut |_| true).unwrap_err();
    assert!(matches!(err, Error::ContextFull { .. }), "{err}");
    assert_eq!(chat.messages(), before);
    chat.send("Still there?", &mut |_| true).unwrap();
}

#[test]
fn cli_generate_chat_answers_one_turn_and_refuses_a_bundle_without_a_template() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    let d = dir.to_str().unwrap();
    let out = ferrite(
        &[
            "generate",
            d,
            "--chat",
            "Who goes there?",
            "--system",
            "Be brief.",
            "--max-tokens",
            "10",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The same tokens as --prompt with the rendered conversation.
    let bundle = Bundle::open(&dir).unwrap();
    let rendered = bundle
        .chat_template()
        .unwrap()
        .render(&[Message::system("Be brief."), Message::user("Who goes there?")], true)
        .unwrap();
    let plain = ferrite(&["generate", d, "--prompt", &rendered, "--max-tokens", "10", "--json"], "");
    let plain: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(json["ids"], plain["ids"]);
    assert_eq!(json["prompt_tokens"], plain["prompt_tokens"]);

    for args in [
        vec!["generate", "models/shakespeare-gpt/int8", "--chat", "hello"],
        vec!["chat", "models/shakespeare-gpt/int8"],
    ] {
        let out = ferrite(&args, "hello\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains("no chat template"), "{args:?}: {stderr}");
    }
}

#[test]
fn cli_chat_talks_over_stdin_resets_and_says_when_the_context_fills() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    let d = dir.to_str().unwrap();
    let out = ferrite(
        &["chat", d, "--system", "Be brief.", "--max-tokens", "8"],
        "Who goes there?\n\n/reset\nWho goes there?\n/exit\nnever read\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Two replies, each ending with a newline: after /reset the same question gets the same
    // greedy reply, and nothing after /exit is answered.
    let (first, second) = stdout.split_at(stdout.len() / 2);
    assert!(!first.trim().is_empty() && first.ends_with('\n'), "{stdout:?}");
    assert_eq!(first, second, "{stdout:?}");
    assert!(stderr.contains("[conversation reset]"), "{stderr}");

    // Long messages into a 256-token context: old turns go, and the CLI says so.
    let lines: String = (0..6).map(|i| long_message(i) + "\n").collect();
    let out = ferrite(&["chat", d, "--max-tokens", "8"], &lines);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("[context full: dropped the"), "{stderr}");
}

#[test]
fn a_conversation_streams_its_stop_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    let bundle = open(&dir, &Options::default());
    let opts = GenerateOptions { max_tokens: 5, ..GenerateOptions::default() };
    let mut chat = Conversation::new(&bundle, None, opts).unwrap();
    let reply = chat.send("Hark!", &mut |_| false).unwrap();
    assert_eq!(reply.stop, StopReason::Cancelled);
    let reply = chat.send("Again.", &mut |_| true).unwrap();
    assert!(matches!(reply.stop, StopReason::MaxTokens | StopReason::StopToken), "{:?}", reply.stop);
}

#[test]
fn the_c_api_renders_into_a_caller_buffer() {
    use ferrite_c::ferrite_status::*;
    use ferrite_c::*;
    use std::ffi::CString;
    let tmp = tempfile::tempdir().unwrap();
    let dir = chat_bundle(&tmp.path().join("b"), Some(fixture_chat()));
    let open_c = |dir: &Path| {
        let path = CString::new(dir.to_str().unwrap()).unwrap();
        let mut b = std::ptr::null_mut();
        // SAFETY: a valid path, NULL params, a writable out-pointer.
        assert_eq!(unsafe { ferrite_bundle_open(path.as_ptr(), std::ptr::null(), &mut b) }, FERRITE_OK);
        b
    };
    let mut b = open_c(&dir);
    let messages = [
        ferrite_chat_message { role: c"system".as_ptr(), content: c"Be brief.".as_ptr() },
        ferrite_chat_message { role: c"user".as_ptr(), content: c"Who goes there?".as_ptr() },
    ];
    let want = Bundle::open(&dir)
        .unwrap()
        .chat_template()
        .unwrap()
        .render(&[Message::system("Be brief."), Message::user("Who goes there?")], true)
        .unwrap();
    let mut written = 0usize;
    let mut buf = vec![b'#' as std::ffi::c_char; want.len()];
    let mut stop = [0u32; 8];
    let mut n_stop = 0usize;
    // SAFETY (all calls): a live bundle, two valid messages, buffers of the lengths given.
    unsafe {
        // The size first: too small writes nothing but the length.
        assert_eq!(
            ferrite_chat_render(b, messages.as_ptr(), 2, 1, std::ptr::null_mut(), 0, &mut written),
            FERRITE_ERR_BUFFER_TOO_SMALL
        );
        assert_eq!(written, want.len());
        // One byte short (no room for the NUL) is still too small.
        assert_eq!(
            ferrite_chat_render(b, messages.as_ptr(), 2, 1, buf.as_mut_ptr(), buf.len(), &mut written),
            FERRITE_ERR_BUFFER_TOO_SMALL
        );
        assert!(buf.iter().all(|&c| c == b'#' as std::ffi::c_char));
        buf.resize(want.len() + 1, 0);
        assert_eq!(
            ferrite_chat_render(b, messages.as_ptr(), 2, 1, buf.as_mut_ptr(), buf.len(), &mut written),
            FERRITE_OK
        );
        assert_eq!(std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap(), want);
        assert_eq!(ferrite_chat_stop_ids(b, stop.as_mut_ptr(), 8, &mut n_stop), FERRITE_OK);
        assert_eq!(&stop[..n_stop], [0]);
        // Invalid UTF-8 in a message is its own status.
        let bad = [ferrite_chat_message { role: c"user".as_ptr(), content: c"\xc3(".as_ptr() }];
        assert_eq!(
            ferrite_chat_render(b, bad.as_ptr(), 1, 1, buf.as_mut_ptr(), buf.len(), &mut written),
            FERRITE_ERR_INVALID_UTF8
        );
        ferrite_bundle_destroy(&mut b);
    }
    // A bundle without a template says so.
    let mut plain = open_c(&common::root().join("models/shakespeare-gpt/int8"));
    // SAFETY: a live bundle, a valid message, a writable buffer.
    unsafe {
        assert_eq!(
            ferrite_chat_render(plain, messages.as_ptr(), 2, 1, buf.as_mut_ptr(), buf.len(), &mut written),
            FERRITE_ERR_CHAT_TEMPLATE
        );
        let message = std::ffi::CStr::from_ptr(ferrite_last_error()).to_str().unwrap();
        assert!(message.contains("no chat template"), "{message}");
        assert_eq!(
            ferrite_chat_stop_ids(plain, stop.as_mut_ptr(), 8, &mut n_stop),
            FERRITE_ERR_CHAT_TEMPLATE
        );
        ferrite_bundle_destroy(&mut plain);
    }
}
