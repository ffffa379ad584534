//! The bad-input corpus (scripts/make_bad_inputs.py, generated into a temporary directory on
//! every run) through the Rust API and the CLI: every case must end in a typed error or a correct
//! result — no panic, no abort, no hang, no unbounded allocation.
//!
//! The Rust API side runs in a child process (this same test binary, `corpus_worker`), so that an
//! abort or a hang is observed and reported instead of taking the whole test down: the parent
//! reads one result line per case with a deadline, kills a child that overruns it and starts a
//! new child at the next case. In the child a counting allocator aborts on any single allocation
//! over [`MAX_ALLOCATION`] or on more than [`MAX_LIVE`] bytes live at once: that is how "the
//! runtime checks sizes before allocating" is tested. The CLI runs each case as its own process
//! under `ulimit -v` with the same deadline. With both passing, results must agree (generated ids,
//! output shapes). The same cases then go through the C API (`runtime/ffi`'s `extern "C"`
//! functions, in a worker child too), which must succeed or fail exactly when the Rust API does.
//! GGUF cases go through `ferrite_gguf` (open, every tensor read) and `ferrite inspect --json`;
//! the C API has no GGUF reader.
//!
//! `FERRITE_BAD_INPUTS=DIR` reuses (or creates) a corpus in DIR instead of a temporary one.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::sample::SamplingParams;
use ferrite_runtime::{Bundle, BundleOptions, Embedder, Error, Message, Model, Options, stream};

/// Largest single allocation a case may make (the biggest legitimate one is well under 16 MiB).
const MAX_ALLOCATION: usize = 1 << 30;
/// Most bytes live at once while the worker runs cases.
const MAX_LIVE: usize = 3 << 30;
/// A case that takes longer than this has hung (generous: debug builds on a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(120);
/// Address-space limit for each CLI process, in KiB (`ulimit -v`).
const CLI_ADDRESS_SPACE_KIB: u64 = 8 << 20;

struct Guarded;

static ENFORCE: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);

fn over_limit(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if ENFORCE.load(Ordering::Relaxed) && (size > MAX_ALLOCATION || live > MAX_LIVE) {
        // No allocation from here on: write straight to the file descriptor and abort.
        let _ = std::io::stderr().write_fmt(format_args!(
            "ferrite-corpus: unbounded allocation: {size} bytes requested, {live} live\n"
        ));
        std::process::abort();
    }
}

// SAFETY: every method forwards to the system allocator with the caller's own arguments; the
// bookkeeping uses atomics only and never allocates.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        over_limit(layout.size());
        // SAFETY: same contract as the caller's: layout is valid and non-zero-sized.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        over_limit(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: ptr was allocated by System (through this allocator) with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        over_limit(new_size);
        // SAFETY: ptr was allocated by System with layout; new_size is the caller's valid size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Guarded = Guarded;

#[derive(Debug, Clone)]
struct Case {
    id: String,
    category: String,
    kind: String,
    path: String,
    expect: String,
    errors: Vec<String>,
    inputs: BTreeMap<String, String>,
    generate: Option<Generate>,
    embed: Option<Vec<String>>,
    /// A user message to render with the bundle's chat template.
    chat: Option<String>,
    no_verify: bool,
}

#[derive(Debug, Clone)]
struct Generate {
    ids: Option<Vec<u64>>,
    prompt: Option<String>,
    max_tokens: u64,
    temperature: Option<String>,
    top_k: Option<u64>,
    top_p: Option<String>,
    repetition_penalty: Option<String>,
    seed: Option<u64>,
    stop: Vec<String>,
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| s.as_str()).map(String::from)
}

impl Case {
    /// One entry of cases.json (see scripts/make_bad_inputs.py for the format).
    fn from_json(v: &serde_json::Value) -> Case {
        let field = |k: &str| text(v, k).unwrap_or_else(|| panic!("case without `{k}`: {v}"));
        let generate = v.get("generate").map(|g| Generate {
            ids: g
                .get("ids")
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect()),
            prompt: text(g, "prompt"),
            max_tokens: g.get("max_tokens").and_then(|x| x.as_u64()).unwrap_or(3),
            temperature: text(g, "temperature"),
            top_k: g.get("top_k").and_then(|x| x.as_u64()),
            top_p: text(g, "top_p"),
            repetition_penalty: text(g, "repetition_penalty"),
            seed: g.get("seed").and_then(|x| x.as_u64()),
            stop: g.get("stop").map(strings).unwrap_or_default(),
        });
        let inputs = v
            .get("inputs")
            .and_then(|m| m.as_object())
            .map(|m| m.iter().filter_map(|(k, f)| Some((k.clone(), f.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        Case {
            id: field("id"),
            category: field("category"),
            kind: field("kind"),
            path: field("path"),
            expect: field("expect"),
            errors: v.get("errors").map(strings).unwrap_or_default(),
            inputs,
            generate,
            embed: v.get("embed").map(strings),
            chat: text(v, "chat"),
            no_verify: v.get("no_verify").and_then(|b| b.as_bool()).unwrap_or(false),
        }
    }
}

/// Every error kind by name, as the corpus's `errors` lists them.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Io { .. } => "Io",
        Error::NotOnnx { .. } => "NotOnnx",
        Error::InvalidModel(_) => "InvalidModel",
        Error::UnsupportedOp { .. } => "UnsupportedOp",
        Error::ShapeMismatch { .. } => "ShapeMismatch",
        Error::DTypeMismatch { .. } => "DTypeMismatch",
        Error::InvalidInput(_) => "InvalidInput",
        Error::BackendUnavailable { .. } => "BackendUnavailable",
        Error::ResourceLimit(_) => "ResourceLimit",
        Error::Backend { .. } => "Backend",
        Error::InvalidBundle { .. } => "InvalidBundle",
        Error::HashMismatch { .. } => "HashMismatch",
        Error::Tokenizer(_) => "Tokenizer",
        Error::UnknownToken { .. } => "UnknownToken",
        Error::InvalidGeneration(_) => "InvalidGeneration",
        Error::ContextFull { .. } => "ContextFull",
        Error::ChatTemplate(_) => "ChatTemplate",
        _ => "Other",
    }
}

fn float(s: &Option<String>, default: f32) -> Result<f32, Error> {
    match s {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| Error::InvalidGeneration(format!("bad float {s}"))),
    }
}

/// Runs one case through the Rust API; `Ok` carries a summary the CLI's result must match.
fn run_api(corpus: &Path, case: &Case) -> Result<String, Error> {
    let path = corpus.join(&case.path);
    match case.kind.as_str() {
        "model" => {
            let model = Model::open(&path)?;
            let plan = model.prepare(&Options::default())?;
            if case.inputs.is_empty() {
                return Ok("opened".into());
            }
            let tensors = case
                .inputs
                .iter()
                .map(|(n, f)| Ok((n.clone(), ferrite_runtime::npy::read_npy(corpus.join(f))?)))
                .collect::<Result<Vec<_>, Error>>()?;
            let views: Vec<_> = tensors.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
            let out = plan.session()?.run(&views)?;
            Ok(out.iter().map(|(n, t)| format!("{n}{:?}", t.shape())).collect::<Vec<_>>().join(" "))
        }
        "bundle" => {
            let options = BundleOptions::default().verify_hashes(!case.no_verify);
            let bundle = Bundle::open_with(&path, &options)?;
            if let Some(texts) = &case.embed {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                let e = Embedder::new(&bundle)?.embed(&texts)?;
                return Ok(format!("{} x {}", e.len(), e.first().map_or(0, Vec::len)));
            }
            if let Some(message) = &case.chat {
                let prompt =
                    bundle.require_chat_template()?.render(&[Message::user(message.as_str())], true)?;
                return Ok(format!("chat prompt of {} bytes", prompt.len()));
            }
            let g = case.generate.as_ref().expect("a bundle case generates or embeds");
            let prompt: Vec<u32> = match (&g.ids, &g.prompt) {
                (Some(ids), _) => ids
                    .iter()
                    .map(|&i| u32::try_from(i).map_err(|_| Error::InvalidGeneration("id > u32".into())))
                    .collect::<Result<_, _>>()?,
                (None, Some(text)) => bundle.require_tokenizer()?.encode(text, false)?,
                (None, None) => Vec::new(),
            };
            let mut opts = GenerateOptions {
                max_tokens: usize::try_from(g.max_tokens).unwrap_or(usize::MAX),
                sampling: SamplingParams {
                    temperature: float(&g.temperature, 0.0)?,
                    top_k: usize::try_from(g.top_k.unwrap_or(0)).unwrap_or(usize::MAX),
                    top_p: float(&g.top_p, 1.0)?,
                    repetition_penalty: float(&g.repetition_penalty, 1.0)?,
                    seed: g.seed.unwrap_or(0),
                },
                stop_strings: stream::stop_strings(&g.stop)?,
                ..GenerateOptions::default()
            };
            if let Some(eos) = bundle.special_token("eos").and_then(|e| u32::try_from(e).ok()) {
                let _ = opts.stop_ids.push(eos);
            }
            let tok = bundle.tokenizer();
            let token_bytes = |id: u32| tok.and_then(|t| t.token_bytes(id));
            let out = Generator::new(&bundle)?.generate(&prompt, &opts, &token_bytes, &mut |_| {})?;
            Ok(format!("ids {:?}", out.ids))
        }
        other => panic!("unknown case kind {other}"),
    }
}

/// Runs a GGUF case through the reader the way the exporter uses it: open (which checks the whole
/// layout), read the metadata, look every tensor up by name and dequantise each one of a type the
/// reader supports. `Ok` carries the tensor count, which `ferrite inspect --json` must agree with.
fn run_gguf(corpus: &Path, case: &Case) -> Result<String, ferrite_gguf::Error> {
    let file = ferrite_gguf::GgufFile::open(corpus.join(&case.path))?;
    let _ = file.architecture();
    for (key, _) in file.metadata().iter() {
        let _ = (file.metadata().get_u64(key), file.metadata().get_str_array(key));
    }
    let mut values = 0;
    for info in file.tensors() {
        let info = file.tensor(info.name())?;
        file.tensor_bytes(info)?;
        if info.ggml_type().can_dequantize() {
            values += file.dequantize(info)?.len();
        }
    }
    Ok(format!("tensors {} values {values}", file.tensors().len()))
}

/// Runs one case through the C API (`runtime/ffi`, called as `extern "C"` functions). Model cases
/// open the model and create a session (running inputs is left to the Rust API and the CLI);
/// bundle cases generate or embed. `Ok` carries generated ids or the embedding count; `Err` the
/// status name and `ferrite_last_error()`.
fn run_c(corpus: &Path, case: &Case) -> Result<String, (String, String)> {
    use ferrite_c::*;
    use std::ffi::{CStr, CString, c_char};
    use std::ptr::{null, null_mut};
    fn fail(st: ferrite_status) -> Result<String, (String, String)> {
        // SAFETY: both return static or thread-local NUL-terminated strings, never NULL.
        let name = unsafe { CStr::from_ptr(ferrite_status_name(st as i32)) }.to_string_lossy().into_owned();
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(ferrite_last_error()) }.to_string_lossy().into_owned();
        Err((name, msg))
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| ("NulByte".to_string(), String::new()));
    if case.kind == "gguf" {
        return Err(("NotExpressible".into(), "the C API does not read GGUF files".into()));
    }
    let path = cstr(&corpus.join(&case.path).display().to_string())?;
    let mut params = ferrite_open_default_params();
    params.verify_hashes = i32::from(!case.no_verify);
    if case.kind == "model" {
        let mut model = null_mut();
        // SAFETY: valid C strings and params; `model` is an out pointer.
        let st = unsafe { ferrite_model_open(path.as_ptr(), &params, &mut model) };
        if st != ferrite_status::FERRITE_OK {
            return fail(st);
        }
        let mut session = null_mut();
        // SAFETY: `model` is live until destroyed below.
        let st = unsafe { ferrite_session_create(model, &mut session) };
        // SAFETY: each handle is live or NULL; destroy nulls it.
        unsafe {
            ferrite_session_destroy(&mut session);
            ferrite_model_destroy(&mut model);
        }
        return if st == ferrite_status::FERRITE_OK { Ok("opened".into()) } else { fail(st) };
    }
    let mut bundle = null_mut();
    // SAFETY: valid C string and params; `bundle` is an out pointer.
    let st = unsafe { ferrite_bundle_open(path.as_ptr(), &params, &mut bundle) };
    if st != ferrite_status::FERRITE_OK {
        return fail(st);
    }
    let result = if let Some(message) = &case.chat {
        let (role, content) = (cstr("user")?, cstr(message)?);
        let messages = [ferrite_chat_message { role: role.as_ptr(), content: content.as_ptr() }];
        let mut written = 0usize;
        // SAFETY: `bundle` is live; one message of NUL-terminated strings; a NULL buffer of
        // length 0 asks for the size; `written` is an out pointer.
        let st = unsafe { ferrite_chat_render(bundle, messages.as_ptr(), 1, 1, null_mut(), 0, &mut written) };
        if st == ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL {
            let mut buf = vec![0 as c_char; written + 1];
            // SAFETY: as above, with a buffer of `written + 1` bytes.
            let st = unsafe {
                ferrite_chat_render(
                    bundle,
                    messages.as_ptr(),
                    1,
                    1,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut written,
                )
            };
            if st == ferrite_status::FERRITE_OK {
                Ok(format!("chat prompt of {written} bytes"))
            } else {
                fail(st)
            }
        } else {
            fail(st)
        }
    } else if let Some(texts) = &case.embed {
        let owned = texts.iter().map(|t| cstr(t)).collect::<Result<Vec<_>, _>>()?;
        let ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        let mut embedder = null_mut();
        // SAFETY: `bundle` is live; `embedder` is an out pointer.
        let mut st = unsafe { ferrite_embedder_create(bundle, &mut embedder) };
        let mut len = 0usize;
        if st == ferrite_status::FERRITE_OK {
            // SAFETY: a size query (NULL buffer, capacity 0), then a buffer of the size asked for.
            st = unsafe {
                ferrite_embedder_embed(embedder, ptrs.as_ptr(), ptrs.len(), null_mut(), 0, &mut len)
            };
            if st == ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL || st == ferrite_status::FERRITE_OK {
                let mut out = vec![0f32; len];
                // SAFETY: `out` holds `len` floats.
                st = unsafe {
                    ferrite_embedder_embed(
                        embedder,
                        ptrs.as_ptr(),
                        ptrs.len(),
                        out.as_mut_ptr(),
                        out.len(),
                        &mut len,
                    )
                };
            }
        }
        let r = if st == ferrite_status::FERRITE_OK { Ok(format!("{len} floats")) } else { fail(st) };
        // SAFETY: live or NULL; destroy nulls it.
        unsafe { ferrite_embedder_destroy(&mut embedder) };
        r
    } else {
        let g = case.generate.as_ref().expect("a bundle case generates or embeds");
        let parse = |s: &Option<String>, d: f32| s.as_deref().map_or(Some(d), |s| s.parse().ok());
        let mut sampling = ferrite_sampling_default_params();
        let fields = (
            parse(&g.temperature, 0.0),
            parse(&g.top_p, 1.0),
            parse(&g.repetition_penalty, 1.0),
            u32::try_from(g.top_k.unwrap_or(0)).ok(),
        );
        let (Some(t), Some(p), Some(r), Some(k)) = fields else {
            // SAFETY: live; destroy nulls it.
            unsafe { ferrite_bundle_destroy(&mut bundle) };
            return Err(("NotExpressible".into(), "a setting the C API types cannot hold".into()));
        };
        (sampling.temperature, sampling.top_p, sampling.repetition_penalty, sampling.top_k) = (t, p, r, k);
        sampling.seed = g.seed.unwrap_or(0);
        let stops = g.stop.iter().map(|s| cstr(s)).collect::<Result<Vec<_>, _>>()?;
        let stop_ptrs: Vec<*const c_char> = stops.iter().map(|c| c.as_ptr()).collect();
        let mut gp = ferrite_generate_default_params();
        gp.max_tokens = u32::try_from(g.max_tokens).unwrap_or(u32::MAX);
        gp.stop_at_eos = 1;
        gp.stop_strings = if stop_ptrs.is_empty() { null() } else { stop_ptrs.as_ptr() };
        gp.n_stop_strings = stop_ptrs.len();
        let mut generator = null_mut();
        // SAFETY: `bundle` is live, `sampling` a valid struct; `generator` is an out pointer.
        let mut st = unsafe { ferrite_generator_create(bundle, &sampling, &mut generator) };
        let mut generation = ferrite_generation {
            struct_size: std::mem::size_of::<ferrite_generation>(),
            prompt_tokens: 0,
            generated_tokens: 0,
            stop_reason: 0,
            time_to_first_token_ms: 0.0,
            tokens_per_s: 0.0,
        };
        if st == ferrite_status::FERRITE_OK {
            st = match (&g.ids, &g.prompt) {
                (Some(ids), _) => {
                    match ids.iter().map(|&i| u32::try_from(i)).collect::<Result<Vec<u32>, _>>() {
                        // SAFETY: `ids` holds ids.len() values; no callback; `generation` is valid.
                        Ok(ids) => unsafe {
                            ferrite_generator_generate_ids(
                                generator,
                                ids.as_ptr(),
                                ids.len(),
                                &gp,
                                None,
                                null_mut(),
                                &mut generation,
                            )
                        },
                        Err(_) => ferrite_status::FERRITE_ERR_INVALID_ARGUMENT,
                    }
                }
                (None, Some(prompt)) => {
                    let prompt = cstr(prompt)?;
                    // SAFETY: a valid C string; no callback; `generation` is valid.
                    unsafe {
                        ferrite_generator_generate(
                            generator,
                            prompt.as_ptr(),
                            &gp,
                            None,
                            null_mut(),
                            &mut generation,
                        )
                    }
                }
                // SAFETY: zero ids (a NULL pointer with length 0 is allowed and refused as empty).
                (None, None) => unsafe {
                    ferrite_generator_generate_ids(
                        generator,
                        null(),
                        0,
                        &gp,
                        None,
                        null_mut(),
                        &mut generation,
                    )
                },
            };
        }
        let r = if st == ferrite_status::FERRITE_OK {
            let mut ids = vec![0u32; generation.generated_tokens];
            let mut len = 0usize;
            // SAFETY: `ids` holds generated_tokens values.
            let st =
                unsafe { ferrite_generator_generated_ids(generator, ids.as_mut_ptr(), ids.len(), &mut len) };
            if st == ferrite_status::FERRITE_OK { Ok(format!("ids {:?}", &ids[..len])) } else { fail(st) }
        } else {
            fail(st)
        };
        // SAFETY: live or NULL; destroy nulls it.
        unsafe { ferrite_generator_destroy(&mut generator) };
        r
    };
    // SAFETY: live; destroy nulls it.
    unsafe { ferrite_bundle_destroy(&mut bundle) };
    result
}

/// The child side: runs cases from `start` and prints one `ferrite-case` line per case.
#[test]
fn corpus_worker() {
    let Ok(spec) = std::env::var("FERRITE_CORPUS_WORKER") else { return };
    let (spec, api) = spec.rsplit_once(':').expect("DIR:START:API");
    let c_api = api == "c";
    let (dir, start) = spec.rsplit_once(':').expect("DIR:START:API");
    let corpus = PathBuf::from(dir);
    let cases = load_cases(&corpus);
    let start: usize = start.parse().unwrap();
    std::panic::set_hook(Box::new(|_| {}));
    let mut out = std::io::stdout();
    for (i, case) in cases.iter().enumerate().skip(start) {
        writeln!(out, "ferrite-case\tstart\t{i}").unwrap();
        out.flush().unwrap();
        ENFORCE.store(true, Ordering::SeqCst);
        let result = std::panic::catch_unwind(|| match c_api {
            false if case.kind == "gguf" => {
                run_gguf(&corpus, case).map_err(|e| (e.kind().to_string(), e.to_string()))
            }
            false => run_api(&corpus, case).map_err(|e| (kind(&e).to_string(), e.to_string())),
            true => run_c(&corpus, case),
        });
        ENFORCE.store(false, Ordering::SeqCst);
        let line = match result {
            Ok(Ok(summary)) => format!("ok\t{summary}"),
            Ok(Err((kind, e))) => format!("err\t{kind}\t{e}"),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("panic\t{msg}")
            }
        };
        writeln!(out, "ferrite-case\tdone\t{i}\t{}", line.replace('\n', " ")).unwrap();
        out.flush().unwrap();
    }
}

fn load_cases(corpus: &Path) -> Vec<Case> {
    let all: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus.join("cases.json")).unwrap()).unwrap();
    all.as_array().expect("cases.json is a list").iter().map(Case::from_json).collect()
}

#[derive(Debug, Clone)]
enum Outcome {
    Ok(String),
    Err { kind: String, message: String },
    Crash(String),
}

/// Runs every case through the Rust API in worker children; a crash or overrun skips that case.
fn api_outcomes(corpus: &Path, n: usize, api: &str) -> Vec<(Outcome, Duration)> {
    let mut results: Vec<Option<(Outcome, Duration)>> = vec![None; n];
    let mut next = 0;
    while next < n {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["corpus_worker", "--exact", "--nocapture", "--test-threads", "1"])
            .env("FERRITE_CORPUS_WORKER", format!("{}:{next}:{api}", corpus.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut current: Option<(usize, Instant)> = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let parts: Vec<&str> = line.splitn(5, '\t').collect();
                    if parts.first() != Some(&"ferrite-case") {
                        continue;
                    }
                    let i: usize = parts[2].parse().unwrap();
                    if parts[1] == "start" {
                        current = Some((i, Instant::now()));
                        continue;
                    }
                    let took = current.map(|(_, t)| t.elapsed()).unwrap_or_default();
                    let rest = parts.get(3).copied().unwrap_or("");
                    let detail = parts.get(4).copied().unwrap_or("");
                    let outcome = match rest {
                        "ok" => Outcome::Ok(detail.to_string()),
                        "err" => {
                            let (kind, message) = detail.split_once('\t').unwrap_or((detail, ""));
                            Outcome::Err { kind: kind.into(), message: message.into() }
                        }
                        _ => Outcome::Crash(format!("panic: {detail}")),
                    };
                    results[i] = Some((outcome, took));
                    current = None;
                    next = i + 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some((i, t)) = current
                        && t.elapsed() > DEADLINE
                    {
                        let _ = child.kill();
                        let _ = child.wait();
                        results[i] = Some((Outcome::Crash(format!("hang: over {DEADLINE:?}")), t.elapsed()));
                        next = i + 1;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    let stderr = err_reader.join().unwrap_or_default();
                    if let Some((i, t)) = current {
                        let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                        results[i] =
                            Some((Outcome::Crash(format!("worker died ({status}): {tail}")), t.elapsed()));
                        next = i + 1;
                    } else if next < n && !status.success() {
                        // Died before its start line reached us: blame the case it was about to run.
                        let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                        results[next] =
                            Some((Outcome::Crash(format!("worker died ({status}): {tail}")), Duration::ZERO));
                        next += 1;
                    }
                    break;
                }
            }
        }
    }
    results.into_iter().map(|r| r.expect("every case has a result")).collect()
}

fn cli_args(corpus: &Path, case: &Case, scratch: &Path) -> Option<Vec<String>> {
    let path = corpus.join(&case.path).display().to_string();
    let mut args: Vec<String> = Vec::new();
    match case.kind.as_str() {
        "model" if case.inputs.is_empty() => args.extend(["inspect".into(), path, "--json".into()]),
        "gguf" => args.extend(["inspect".into(), path, "--json".into()]),
        "model" => {
            args.extend(["infer".into(), path]);
            for (n, f) in &case.inputs {
                args.extend(["--input".into(), format!("{n}={}", corpus.join(f).display())]);
            }
            args.extend(["--output".into(), scratch.join("out.npz").display().to_string()]);
        }
        _ => {
            if let Some(message) = &case.chat {
                // The CLI renders the conversation and generates one token from it.
                args.extend(["generate".into(), path, format!("--chat={message}"), "--max-tokens=1".into()]);
            } else if let Some(texts) = &case.embed {
                args.extend(["embed".into(), path, "--json".into()]);
                for t in texts {
                    args.push(format!("--text={t}"));
                }
            } else {
                let g = case.generate.as_ref().unwrap();
                args.extend(["generate".into(), path, "--json".into()]);
                match (&g.ids, &g.prompt) {
                    (Some(ids), _) => args.push(format!(
                        "--ids={}",
                        ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
                    )),
                    (None, Some(p)) => args.push(format!("--prompt={p}")),
                    _ => {}
                }
                args.push(format!("--max-tokens={}", g.max_tokens));
                for (flag, v) in [
                    ("temperature", &g.temperature),
                    ("top-p", &g.top_p),
                    ("repetition-penalty", &g.repetition_penalty),
                ] {
                    if let Some(v) = v {
                        args.push(format!("--{flag}={v}"));
                    }
                }
                if let Some(k) = g.top_k {
                    args.push(format!("--top-k={k}"));
                }
                if let Some(s) = g.seed {
                    args.push(format!("--seed={s}"));
                }
                for s in &g.stop {
                    args.push(format!("--stop={s}"));
                }
            }
            if case.no_verify {
                args.push("--no-verify".into());
            }
        }
    }
    // An argument with a NUL byte cannot be passed to a process at all.
    (!args.iter().any(|a| a.contains('\0'))).then_some(args)
}

struct CliRun {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn run_cli(args: &[String]) -> Result<CliRun, String> {
    use std::os::unix::process::ExitStatusExt;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {CLI_ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .map_err(|e| e.to_string())?;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hang: over {DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Ok(CliRun {
        code: status.code(),
        signal: status.signal(),
        stdout: read(&out_path),
        stderr: read(&err_path),
        took: started.elapsed(),
    })
}

/// Checks the CLI's behaviour for `case`; returns the failure, if any.
fn check_cli(case: &Case, api: &Outcome, run: &CliRun, scratch: &Path) -> Option<String> {
    if let Some(sig) = run.signal {
        return Some(format!("killed by signal {sig}: {}", run.stderr.trim()));
    }
    let ok = run.code == Some(0);
    let last = run.stderr.trim_end().lines().last().unwrap_or("");
    // A panic inside tract, tokenizers or npyz that the runtime caught and turned into a typed
    // error still has its message printed by the panic hook; the command then ends with its one
    // error line and exit code 1 (an uncaught panic exits with 101).
    let caught = run.stderr.contains("panicked") && last.starts_with("error: ") && run.code == Some(1);
    let clean_error = !ok
        && (caught
            || (run.stderr.trim_end().lines().count() == 1 && run.stderr.starts_with("error: "))
            // clap's usage errors (exit 2) add a hint line.
            || (run.code == Some(2) && run.stderr.starts_with("error: ")));
    if (run.stderr.contains("panicked") && !caught) || run.code == Some(101) {
        return Some(format!("panicked: {}", run.stderr.trim()));
    }
    if !ok && !clean_error {
        return Some(format!("exit {:?} without one `error:` line: {}", run.code, run.stderr.trim()));
    }
    match (case.expect.as_str(), ok) {
        ("error", true) => return Some("succeeded; an error was expected".into()),
        ("ok", false) => return Some(format!("failed; success was expected: {}", run.stderr.trim())),
        _ => {}
    }
    // Both succeeded: the CLI must have computed what the API computed.
    if let (true, Outcome::Ok(summary)) = (ok, api) {
        if case.generate.is_some() {
            let v: serde_json::Value = serde_json::from_str(run.stdout.trim())
                .map_err(|e| format!("generate --json printed no JSON ({e}): {}", run.stdout))
                .ok()?;
            let ids: Vec<u64> = v["ids"].as_array()?.iter().filter_map(|x| x.as_u64()).collect();
            if summary != &format!("ids {ids:?}") {
                return Some(format!("CLI ids {ids:?} differ from the API's {summary}"));
            }
        } else if case.kind == "gguf" {
            let v: serde_json::Value = serde_json::from_str(run.stdout.trim())
                .map_err(|e| format!("inspect --json printed no JSON ({e}): {}", run.stdout))
                .ok()?;
            let count = format!("tensors {} ", v["tensor_count"]);
            if !summary.starts_with(&count) {
                return Some(format!(
                    "CLI tensor_count {} differs from the API's {summary}",
                    v["tensor_count"]
                ));
            }
        } else if case.kind == "model" && !case.inputs.is_empty() {
            let out = ferrite_runtime::npy::read_npz(scratch.join("out.npz")).ok()?;
            let shapes = out.iter().map(|(n, t)| format!("{n}{:?}", t.shape())).collect::<Vec<_>>().join(" ");
            if &shapes != summary {
                return Some(format!("CLI outputs {shapes} differ from the API's {summary}"));
            }
        }
    }
    None
}

/// The C API adds no behaviour: it must succeed or fail exactly when the Rust API does, with the
/// same ids, and never crash. Cases it cannot express (NUL bytes, values past its integer types)
/// only have to end cleanly.
fn check_c(case: &Case, rust: &Outcome, c: &Outcome) -> Option<String> {
    match (rust, c) {
        (_, Outcome::Crash(why)) => Some(why.clone()),
        (_, Outcome::Err { kind, .. }) if kind == "NulByte" || kind == "NotExpressible" => None,
        (Outcome::Ok(a), Outcome::Ok(b)) if (case.generate.is_some() || case.chat.is_some()) && a != b => {
            Some(format!("C API {b} differs from the Rust API's {a}"))
        }
        (Outcome::Ok(_), Outcome::Ok(_)) | (Outcome::Err { .. }, Outcome::Err { .. }) => None,
        (Outcome::Ok(a), Outcome::Err { kind, message }) => {
            // The C API's max_tokens is a u32: a Rust run capped by a larger limit may differ.
            Some(format!("C API failed with {kind} ({message}); the Rust API succeeded ({a})"))
        }
        (Outcome::Err { kind, message }, Outcome::Ok(b)) if case.kind == "bundle" => {
            Some(format!("C API succeeded ({b}); the Rust API failed with {kind} ({message})"))
        }
        // Model cases: the C API opens and creates a session only; the Rust API also runs inputs.
        (Outcome::Err { .. }, Outcome::Ok(_)) => None,
        (Outcome::Crash(_), _) => None,
    }
}

fn check_api(case: &Case, api: &Outcome) -> Option<String> {
    match (case.expect.as_str(), api) {
        (_, Outcome::Crash(why)) => Some(why.clone()),
        ("error", Outcome::Ok(s)) => Some(format!("succeeded ({s}); an error was expected")),
        ("ok", Outcome::Err { kind, message }) => Some(format!("{kind}: {message}; success was expected")),
        (_, Outcome::Err { kind, message })
            if case.expect == "error" && !case.errors.is_empty() && !case.errors.contains(kind) =>
        {
            Some(format!("{kind} ({message}); expected one of {:?}", case.errors))
        }
        _ => None,
    }
}

fn corpus_dir(keep: &mut Option<tempfile::TempDir>) -> PathBuf {
    let dir = match std::env::var_os("FERRITE_BAD_INPUTS") {
        Some(d) => PathBuf::from(d),
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            *keep = Some(t);
            p
        }
    };
    if !dir.join("cases.json").is_file() {
        let python = common::root().join(".venv/bin/python");
        assert!(python.is_file(), "{} missing: run scripts/setup-test-env.sh", python.display());
        let out = Command::new(python)
            .arg(common::root().join("scripts/make_bad_inputs.py"))
            .args(["--ferrite", env!("CARGO_BIN_EXE_ferrite"), "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "make_bad_inputs.py failed: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    }
    dir
}

#[test]
fn every_corpus_case_ends_in_a_typed_error_or_a_correct_result() {
    let mut keep = None;
    let corpus = corpus_dir(&mut keep);
    let cases = load_cases(&corpus);
    assert!(cases.len() >= 500, "the corpus has only {} cases", cases.len());

    // The CLI runs on its own thread while the API workers run: two cores, two streams.
    let cli_cases = cases.clone();
    let cli_corpus = corpus.clone();
    let cli = std::thread::spawn(move || {
        cli_cases
            .iter()
            .map(|case| {
                let scratch = tempfile::tempdir().unwrap();
                match cli_args(&cli_corpus, case, scratch.path()) {
                    None => (None, Ok(None)),
                    Some(args) => (Some(scratch), run_cli(&args).map(Some)),
                }
            })
            .collect::<Vec<_>>()
    });
    let api = api_outcomes(&corpus, cases.len(), "rust");
    let c_api = api_outcomes(&corpus, cases.len(), "c");
    let cli = cli.join().unwrap();

    let mut failures = Vec::new();
    let mut per_category: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    let mut slowest = (Duration::ZERO, String::new());
    for (((case, (outcome, took)), (scratch, cli_run)), (c_outcome, _)) in
        cases.iter().zip(&api).zip(&cli).zip(&c_api)
    {
        if let Some(why) = check_c(case, outcome, c_outcome) {
            failures.push(format!("{} [C API]: {why}", case.id));
        }
        let counts = per_category.entry(case.category.as_str()).or_default();
        counts[0] += 1;
        match outcome {
            Outcome::Ok(_) => counts[1] += 1,
            Outcome::Err { .. } => counts[2] += 1,
            Outcome::Crash(_) => {}
        }
        if *took > slowest.0 {
            slowest = (*took, case.id.clone());
        }
        if let Some(why) = check_api(case, outcome) {
            failures.push(format!("{} [API]: {why}", case.id));
        }
        match cli_run {
            Err(why) => failures.push(format!("{} [CLI]: {why}", case.id)),
            Ok(None) => {}
            Ok(Some(run)) => {
                counts[3] += 1;
                if run.took > slowest.0 {
                    slowest = (run.took, format!("{} (CLI)", case.id));
                }
                let dir = scratch.as_ref().map(|s| s.path().to_path_buf()).unwrap_or_default();
                if let Some(why) = check_cli(case, outcome, run, &dir) {
                    failures.push(format!("{} [CLI]: {why}", case.id));
                }
            }
        }
    }
    eprintln!("category: cases (API ok / API typed error / run by the CLI)");
    for (cat, [n, ok, err, cli]) in &per_category {
        eprintln!("  {cat}: {n} ({ok} / {err} / {cli})");
    }
    eprintln!("total {} cases; slowest {:?} ({})", cases.len(), slowest.0, slowest.1);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
