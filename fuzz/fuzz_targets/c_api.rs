//! The C API (`libferrite`, the `ferrite_*` functions) driven by call sequences: the input is a
//! program of up to 48 calls over a small slot table of handles (bundles, models, generators,
//! embedders, sessions), so handles are reused, destroyed, destroyed twice and used after
//! destruction (the destroy functions take `T**` and NULL the slot, so a later call gets NULL —
//! never a dangling pointer, which the API's contract forbids). Arguments are fuzzer-chosen: text
//! with invalid UTF-8 (NUL-free C strings), token ids in and out of the vocabulary, buffer
//! capacities, versioned-struct sizes, sampling/generation settings, raw-model input shapes and
//! dtypes, and NULL wherever the API documents NULL as checked.
//!
//! Every call must return a documented status other than `FERRITE_ERR_INTERNAL` (a caught panic)
//! with a message on failure, and results must be consistent (ids inside the vocabulary, pieces
//! and callback text valid UTF-8 and NUL-terminated, `*len` reported on `BUFFER_TOO_SMALL`,
//! embeddings of unit length, a repeated generation identical). Any panic or abort is a bug.
//!
//! Bundles and models are opened once per process (`cache()`); inputs still open fresh ones
//! (missing, not-a-bundle and invalid-UTF-8 paths always; a real one at most once per input) with
//! fuzzed open params, and destroy those for real.
#![no_main]

use std::ffi::{CStr, CString, c_char, c_void};
use std::mem::size_of;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use ferrite::*;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use ferrite::ferrite_status::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Bundle paths: three real bundles (LSTM int8, GPT-2 q4, a tiny BERT int8), then paths that
/// must fail: missing, a model directory that is not a bundle, a file, empty, invalid UTF-8.
const BUNDLES: [&[u8]; 8] = [
    b"models/shakespeare-lstm/int8",
    b"models/shakespeare-gpt/q4",
    b"fuzz/fixtures/bert-int8",
    b"models/no-such-bundle",
    b"tests/models/lstm",
    b"models/shakespeare-lstm/int8/ferrite.json",
    b"",
    b"models/\xff\xfe-not-utf8",
];
const REAL_BUNDLES: usize = 3;

/// Raw ONNX models: four that run on tract, one with an unknown op, then paths that must fail.
const MODELS: [&[u8]; 8] = [
    b"tests/models/lstm/model.onnx",
    b"tests/models/dynamic_batch/model.onnx",
    b"tests/models/matmul_integer/model.onnx",
    b"tests/models/external_data/model.onnx",
    b"tests/models/unknown_op/model.onnx",
    b"tests/models/no-such-model.onnx",
    b"models/shakespeare-lstm/int8/ferrite.json",
    b"tests/models/lstm",
];
const REAL_MODELS: usize = 5;

const SLOTS: usize = 4;
const MAX_CALLS: usize = 48;
/// Real bundles or models an input may open afresh (the rest come from the cache): an open
/// costs tens of milliseconds (hashing, tract's optimiser), a cached call well under one.
const MAX_FRESH_OPENS: usize = 1;
/// Largest caller buffer (bytes) a call gets: bounds each input's work.
const MAX_BUF: usize = 1 << 16;

fn path(rel: &[u8]) -> CString {
    let mut p = Vec::from(ROOT.as_bytes());
    if !rel.is_empty() {
        p.push(b'/');
        p.extend_from_slice(rel);
    }
    CString::new(p).unwrap()
}

// --- what every call must satisfy ------------------------------------------------------------

fn cstr<'a>(p: *const c_char, what: &str) -> &'a str {
    assert!(!p.is_null(), "{what}: NULL string");
    // SAFETY: the library returns NUL-terminated strings that live at least until the next call.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"))
}

/// A call's status: documented, not a caught panic, and a failure writes a new message.
fn check(call: &str, status: ferrite_status) -> ferrite_status {
    let name = cstr(ferrite_status_name(status as i32), "ferrite_status_name");
    if trace() {
        thread_local!(static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) });
        let now = std::time::Instant::now();
        let ms = LAST.replace(Some(now)).map_or(0.0, |t| (now - t).as_secs_f64() * 1e3);
        eprintln!("{call} -> {name} ({ms:.1} ms since the previous call)");
    }
    assert_ne!(name, "FERRITE_STATUS_UNKNOWN", "{call}: undocumented status {}", status as i32);
    let message = cstr(ferrite_last_error(), "ferrite_last_error");
    assert_ne!(status, FERRITE_ERR_INTERNAL, "{call}: caught panic (a bug): {message}");
    if status != FERRITE_OK {
        assert!(!message.is_empty(), "{call}: {name} without a message");
        assert_ne!(message, marker(), "{call}: {name} without a message of its own");
        set_marker();
    }
    status
}

/// `FERRITE_FUZZ_TRACE=1` prints every checked call and its status (to see what a seed does).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FERRITE_FUZZ_TRACE").is_some())
}

/// A path no call of the target makes: invalid UTF-8 at byte 0 (every other path starts with
/// the repository's directory).
const MARKER_PATH: &CStr = c"\xff";

/// Makes the thread's last error a known message, so that a failure that wrote none is seen.
fn set_marker() {
    let mut out = null_mut();
    // SAFETY: a C string, NULL params, a writable out.
    let s = unsafe { ferrite_bundle_open(MARKER_PATH.as_ptr(), null(), &mut out) };
    assert_eq!(s, FERRITE_ERR_INVALID_UTF8);
}

fn marker() -> &'static str {
    static MARKER: OnceLock<String> = OnceLock::new();
    MARKER.get_or_init(|| {
        set_marker();
        cstr(ferrite_last_error(), "ferrite_last_error").to_owned()
    })
}

// --- the per-process cache of opened bundles and models --------------------------------------

struct Cached {
    /// `*mut ferrite_bundle` / `*mut ferrite_model` (as usize: the cache is static), or 0 when
    /// opening failed; never destroyed.
    bundles: Vec<usize>,
    bundle_info: Vec<Option<ferrite_bundle_info>>,
    models: Vec<usize>,
    model_io: Vec<Vec<Io>>,
}

#[derive(Clone)]
struct Io {
    name: CString,
    dtype: i32,
    /// Declared dims, -1 for symbolic.
    shape: Vec<i64>,
    is_output: bool,
}

fn cache() -> &'static Cached {
    static CACHE: OnceLock<Cached> = OnceLock::new();
    CACHE.get_or_init(|| {
        // libfuzzer-sys aborts on every panic, even one ferrite catches on purpose (it wraps tract
        // and tokenizers that way). Restore the default hook: a panic that escapes still fails
        // the run, and one the C API caught shows up as FERRITE_ERR_INTERNAL (checked).
        let _ = std::panic::take_hook();
        let mut c =
            Cached { bundles: Vec::new(), bundle_info: Vec::new(), models: Vec::new(), model_io: Vec::new() };
        for (i, rel) in BUNDLES.iter().enumerate() {
            let mut b = null_mut();
            // SAFETY: valid C string, NULL params, writable out.
            let s = unsafe { ferrite_bundle_open(path(rel).as_ptr(), null(), &mut b) };
            assert_eq!(s == FERRITE_OK, i < REAL_BUNDLES, "opening {}: {s:?}", String::from_utf8_lossy(rel));
            let mut info = ferrite_bundle_info {
                struct_size: size_of::<ferrite_bundle_info>(),
                architecture: -1,
                has_tokenizer: 0,
                vocab_size: 0,
                context_length: 0,
                eos_id: 0,
            };
            // SAFETY: a live bundle or NULL; a writable info with struct_size set.
            let ok = !b.is_null() && unsafe { ferrite_bundle_get_info(b, &mut info) } == FERRITE_OK;
            c.bundles.push(b as usize);
            c.bundle_info.push(ok.then_some(info));
        }
        for (i, rel) in MODELS.iter().enumerate() {
            let mut m = null_mut();
            // SAFETY: valid C string, NULL params, writable out.
            let s = unsafe { ferrite_model_open(path(rel).as_ptr(), null(), &mut m) };
            assert_eq!(
                s == FERRITE_OK,
                i < REAL_MODELS - 1,
                "opening {}: {s:?}",
                String::from_utf8_lossy(rel)
            );
            c.model_io.push(if m.is_null() { Vec::new() } else { model_io(m) });
            c.models.push(m as usize);
        }
        c
    })
}

fn model_io(m: *const ferrite_model) -> Vec<Io> {
    let (mut ni, mut no) = (0usize, 0usize);
    // SAFETY: a live model, writable counts.
    assert_eq!(unsafe { ferrite_model_io_count(m, &mut ni, &mut no) }, FERRITE_OK);
    let mut list = Vec::new();
    for (is_output, n) in [(false, ni), (true, no)] {
        for index in 0..n {
            let mut info = io_info();
            // SAFETY: a live model, a writable info with struct_size set.
            assert_eq!(unsafe { ferrite_model_io(m, i32::from(is_output), index, &mut info) }, FERRITE_OK);
            let rank = usize::try_from(info.rank).unwrap_or(0);
            list.push(Io {
                name: CString::from(cstr_owned(info.name)),
                dtype: info.dtype,
                shape: info.shape[..rank].to_vec(),
                is_output,
            });
        }
    }
    list
}

fn cstr_owned(p: *const c_char) -> &'static CStr {
    // SAFETY: names are owned by cached model handles, which live for the whole process.
    unsafe { CStr::from_ptr(p) }
}

fn io_info() -> ferrite_io_info {
    ferrite_io_info {
        struct_size: size_of::<ferrite_io_info>(),
        name: null(),
        dtype: -1,
        rank: -1,
        shape: [0; 8],
    }
}

// --- the slot table --------------------------------------------------------------------------

/// A shared handle in a slot: `owned` ones were opened by this input and are destroyed by it;
/// the others come from the cache and are only forgotten.
struct Shared<T> {
    ptr: *mut T,
    owned: bool,
    /// Index into BUNDLES / MODELS.
    kind: usize,
}

struct Gen {
    ptr: *mut ferrite_generator,
    vocab: usize,
    /// The piece length a `BUFFER_TOO_SMALL` from `next` reported: the next successful `next`
    /// (nothing else in between) must hand out that same piece.
    pending_piece: Option<usize>,
}

struct Emb {
    ptr: *mut ferrite_embedder,
}

struct Sess {
    ptr: *mut ferrite_session,
    kind: usize,
}

#[derive(Default)]
struct State {
    bundles: [Option<Shared<ferrite_bundle>>; SLOTS],
    models: [Option<Shared<ferrite_model>>; SLOTS],
    generators: [Option<Gen>; SLOTS],
    embedders: [Option<Emb>; SLOTS],
    sessions: [Option<Sess>; SLOTS],
    fresh_opens: usize,
}

impl Drop for State {
    fn drop(&mut self) {
        // SAFETY (every call): the slot holds NULL or a live handle this input made.
        unsafe {
            for g in self.generators.iter_mut().flatten() {
                ferrite_generator_destroy(&mut g.ptr);
            }
            for e in self.embedders.iter_mut().flatten() {
                ferrite_embedder_destroy(&mut e.ptr);
            }
            for s in self.sessions.iter_mut().flatten() {
                ferrite_session_destroy(&mut s.ptr);
            }
            for b in self.bundles.iter_mut().flatten().filter(|b| b.owned) {
                ferrite_bundle_destroy(&mut b.ptr);
            }
            for m in self.models.iter_mut().flatten().filter(|m| m.owned) {
                ferrite_model_destroy(&mut m.ptr);
            }
        }
    }
}

fn slot(u: &mut Unstructured) -> Result<usize> {
    u.int_in_range(0..=SLOTS as u8 - 1).map(usize::from)
}

fn bundle_ptr(st: &State, i: usize) -> *mut ferrite_bundle {
    st.bundles[i].as_ref().map_or(null_mut(), |b| b.ptr)
}

fn model_ptr(st: &State, i: usize) -> *mut ferrite_model {
    st.models[i].as_ref().map_or(null_mut(), |m| m.ptr)
}

// --- argument makers -------------------------------------------------------------------------

/// NUL-free bytes as a C string (any UTF-8 validity), at most `max` bytes.
fn text(u: &mut Unstructured, max: usize) -> Result<CString> {
    let n = u.int_in_range(0..=max)?;
    let bytes: Vec<u8> = u.bytes(n.min(u.len()))?.iter().map(|&b| if b == 0 { b'?' } else { b }).collect();
    Ok(CString::new(bytes).unwrap())
}

/// A buffer large enough for a versioned struct of `struct_size` up to 128 bytes.
#[repr(C, align(8))]
struct StructBuf([u8; 128]);

impl StructBuf {
    /// `value`'s bytes with its `struct_size` field replaced by a fuzzer-chosen size (mostly the
    /// right one; sometimes too small, or bigger than the struct: a newer caller).
    fn new<T: Copy>(u: &mut Unstructured, value: T) -> Result<Box<StructBuf>> {
        assert!(size_of::<T>() <= 128 && align_of::<T>() <= 8);
        let mut buf = Box::new(StructBuf([0; 128]));
        // SAFETY: `T` fits in the buffer (asserted); plain bytes are copied.
        unsafe {
            std::ptr::copy_nonoverlapping((&raw const value).cast::<u8>(), buf.0.as_mut_ptr(), size_of::<T>())
        };
        let size = match u.int_in_range(0..=9u8)? {
            0 => 0,
            1 => size_of::<usize>(),
            2 => size_of::<T>() - 1,
            3 => size_of::<T>() + 8,
            4 => 128,
            _ => size_of::<T>(),
        };
        buf.0[..size_of::<usize>()].copy_from_slice(&size.to_ne_bytes());
        Ok(buf)
    }

    fn ptr<T>(&mut self) -> *mut T {
        self.0.as_mut_ptr().cast()
    }

    fn size(&self) -> usize {
        usize::from_ne_bytes(self.0[..size_of::<usize>()].try_into().unwrap())
    }

    fn read<T: Copy>(&self) -> T {
        // SAFETY: the buffer holds at least size_of::<T>() initialised bytes; T is plain data.
        unsafe { std::ptr::read_unaligned(self.0.as_ptr().cast::<T>()) }
    }
}

/// A struct pointer argument: NULL (the documented default), or a fuzzed versioned struct.
fn maybe_null<T>(u: &mut Unstructured, buf: &mut StructBuf) -> Result<*mut T> {
    Ok(if u.ratio(1, 8)? { null_mut() } else { buf.ptr() })
}

fn open_params(u: &mut Unstructured, ort_library: &CString) -> Result<Box<StructBuf>> {
    let mut p = ferrite_open_default_params();
    if u.ratio(1, 2)? {
        p.backend = match u.int_in_range(0..=5u8)? {
            0 => 1,
            1 => -1,
            2 => i32::MAX,
            _ => 0,
        };
        // Thread pools are started for real: keep the counts that succeed small.
        p.threads = match u.int_in_range(0..=7u8)? {
            0 => 0,
            1 => 2,
            2 => 3,
            3 => 257,
            4 => u32::MAX,
            _ => 1,
        };
        p.verify_hashes = u.arbitrary()?;
        p.ort_prepacking = u.arbitrary()?;
        if u.ratio(1, 4)? {
            p.ort_library = ort_library.as_ptr();
        }
    }
    StructBuf::new(u, p)
}

fn sampling(u: &mut Unstructured) -> Result<ferrite_sampling_params> {
    let mut p = ferrite_sampling_default_params();
    if u.ratio(1, 2)? {
        let float = |u: &mut Unstructured, usual: &[f32]| -> Result<f32> {
            Ok(match u.int_in_range(0..=7u8)? {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => -1.0,
                3 => f32::from_bits(u.arbitrary()?),
                n => usual[usize::from(n) % usual.len()],
            })
        };
        p.temperature = float(u, &[0.0, 0.7, 1.0, 5.0])?;
        p.top_k = match u.int_in_range(0..=4u8)? {
            0 => 257,
            1 => u32::MAX,
            _ => u.int_in_range(0..=40)?,
        };
        p.top_p = float(u, &[1.0, 0.9, 0.5, 1e-6])?;
        p.repetition_penalty = float(u, &[1.0, 1.3, 0.5, 100.0])?;
        p.seed = u.arbitrary()?;
    }
    Ok(p)
}

/// Token ids: mostly inside a vocabulary of `vocab`, some at or past its end.
fn ids(u: &mut Unstructured, vocab: usize, max: usize) -> Result<Vec<u32>> {
    let n = u.int_in_range(0..=max)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(match u.int_in_range(0..=15u8)? {
            0 => vocab as u32,
            1 => u32::MAX,
            2 => u.arbitrary()?,
            _ => u.int_in_range(0..=vocab.max(1) as u32 - 1)?,
        });
    }
    Ok(v)
}

fn capacity(u: &mut Unstructured, needed_hint: usize, max: usize) -> Result<usize> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => 0,
        1 => needed_hint.saturating_sub(1).min(max),
        2 => u.int_in_range(0..=max)?,
        _ => max,
    })
}

// --- the calls -------------------------------------------------------------------------------

/// A stop-after counter and what the callback saw.
struct CallbackState {
    calls: usize,
    stop_after: usize,
    text: Vec<u8>,
    bad: Option<String>,
}

unsafe extern "C" fn on_text(text: *const c_char, len: usize, user_data: *mut c_void) -> i32 {
    // SAFETY: `user_data` is the CallbackState passed with this callback.
    let st = unsafe { &mut *user_data.cast::<CallbackState>() };
    st.calls += 1;
    if text.is_null() {
        st.bad = Some("callback text is NULL".into());
        return 1;
    }
    // SAFETY: the API passes `len` bytes followed by a NUL.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len + 1) };
    if bytes[len] != 0 || bytes[..len].contains(&0) {
        st.bad = Some(format!("callback text not NUL-terminated at {len}: {bytes:?}"));
    } else if std::str::from_utf8(&bytes[..len]).is_err() {
        st.bad = Some(format!("callback text is not UTF-8: {bytes:?}"));
    }
    st.text.extend_from_slice(&bytes[..len]);
    i32::from(st.calls >= st.stop_after)
}

fn open_bundle(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let kind = u.int_in_range(0..=BUNDLES.len() as u8 - 1).map(usize::from)?;
    let fresh = kind >= REAL_BUNDLES || (st.fresh_opens < MAX_FRESH_OPENS && u.ratio(1, 32)?);
    let old = st.bundles[i].take();
    if let Some(mut b) = old.filter(|b| b.owned) {
        // SAFETY: an owned live handle or NULL.
        unsafe { ferrite_bundle_destroy(&mut b.ptr) };
    }
    if !fresh {
        let c = cache();
        st.bundles[i] = Some(Shared { ptr: c.bundles[kind] as *mut _, owned: false, kind });
        return Ok(());
    }
    st.fresh_opens += usize::from(kind < REAL_BUNDLES);
    let lib = text(u, 16)?;
    let mut params = open_params(u, &lib)?;
    let p = maybe_null::<ferrite_open_params>(u, &mut params)?;
    let c_path = path(BUNDLES[kind]);
    let null_path = u.ratio(1, 16)?;
    let null_out = u.ratio(1, 16)?;
    let mut out: *mut ferrite_bundle = 0x1 as *mut _; // must be overwritten (NULL on failure)
    // SAFETY: C string or NULL; params NULL or a struct of struct_size readable bytes (its
    // ort_library a C string); out NULL or writable.
    let s = check("ferrite_bundle_open", unsafe {
        ferrite_bundle_open(
            if null_path { null() } else { c_path.as_ptr() },
            p,
            if null_out { null_mut() } else { &mut out },
        )
    });
    if null_out {
        assert_eq!(s, FERRITE_ERR_INVALID_ARGUMENT);
        return Ok(());
    }
    assert_eq!(s == FERRITE_OK, !out.is_null(), "bundle_open: status {s:?} with out {out:?}");
    if null_path || kind >= REAL_BUNDLES {
        assert_ne!(s, FERRITE_OK, "bundle_open of {:?} succeeded", String::from_utf8_lossy(BUNDLES[kind]));
    }
    if s == FERRITE_OK {
        st.bundles[i] = Some(Shared { ptr: out, owned: true, kind });
    }
    Ok(())
}

fn destroy_slot<T>(
    u: &mut Unstructured,
    ptr: &mut *mut T,
    owned: bool,
    destroy: unsafe extern "C" fn(*mut *mut T),
) -> Result<()> {
    if owned {
        // SAFETY: NULL or a live handle this input made.
        unsafe { destroy(ptr) };
    } else {
        // A cached handle is only forgotten.
        *ptr = null_mut();
    }
    assert!(ptr.is_null(), "destroy left the pointer set");
    // Destroying again (the pointer is NULL now) and destroying through NULL do nothing.
    if u.ratio(1, 2)? {
        // SAFETY: a pointer to NULL, and NULL itself: both documented no-ops.
        unsafe {
            destroy(ptr);
            destroy(null_mut());
        }
    }
    Ok(())
}

fn bundle_info(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let b = bundle_ptr(st, i);
    let mut buf = StructBuf::new(
        u,
        ferrite_bundle_info {
            struct_size: 0,
            architecture: -7,
            has_tokenizer: -7,
            vocab_size: 7,
            context_length: 7,
            eos_id: -7,
        },
    )?;
    let size = buf.size();
    let p = maybe_null::<ferrite_bundle_info>(u, &mut buf)?;
    // SAFETY: NULL or a live bundle; NULL or a buffer of >= struct_size (<= 128) writable bytes.
    let s = check("ferrite_bundle_get_info", unsafe { ferrite_bundle_get_info(b, p) });
    assert_eq!(buf.size(), size, "get_info changed struct_size");
    if s == FERRITE_OK {
        assert!(size >= size_of::<ferrite_bundle_info>());
        let info: ferrite_bundle_info = buf.read();
        assert!((0..=2).contains(&info.architecture), "architecture {}", info.architecture);
        assert!(info.has_tokenizer == 0 || info.has_tokenizer == 1);
        assert!(info.eos_id >= -1 && info.eos_id < info.vocab_size as i64, "eos {}", info.eos_id);
        let kind = st.bundles[i].as_ref().unwrap().kind;
        let cached = cache().bundle_info[kind].expect("a bundle that opened has info");
        assert_eq!(
            (info.architecture, info.vocab_size, info.context_length, info.eos_id),
            (cached.architecture, cached.vocab_size, cached.context_length, cached.eos_id)
        );
    } else {
        assert!(b.is_null() || p.is_null() || size < size_of::<ferrite_bundle_info>(), "get_info: {s:?}");
    }
    Ok(())
}

fn vocab_of(st: &State, i: usize) -> usize {
    st.bundles[i].as_ref().and_then(|b| cache().bundle_info[b.kind]).map_or(64, |info| info.vocab_size)
}

fn tokenize(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let b = bundle_ptr(st, i);
    let t = text(u, 96)?;
    let cap = capacity(u, t.as_bytes().len(), 128)?;
    let mut ids = vec![u32::MAX; 128];
    let null_ids = cap == 0 && u.ratio(1, 2)?;
    let null_text = u.ratio(1, 32)?;
    let null_len = u.ratio(1, 32)?;
    let mut len = usize::MAX;
    // SAFETY: NULL or live bundle; NULL or a C string; NULL (capacity 0) or `cap` <= 128 ids;
    // NULL or a writable len.
    let s = check("ferrite_bundle_tokenize", unsafe {
        ferrite_bundle_tokenize(
            b,
            if null_text { null() } else { t.as_ptr() },
            if null_ids { null_mut() } else { ids.as_mut_ptr() },
            cap,
            if null_len { null_mut() } else { &mut len },
        )
    });
    match s {
        FERRITE_OK => {
            assert!(len <= cap, "tokenize: len {len} > capacity {cap}");
            let vocab = vocab_of(st, i);
            assert!(
                ids[..len].iter().all(|&id| (id as usize) < vocab),
                "tokenize: id outside the vocabulary"
            );
            assert!(ids[len..].iter().all(|&id| id == u32::MAX), "tokenize wrote past len");
        }
        FERRITE_ERR_BUFFER_TOO_SMALL => {
            assert!(len > cap && len != usize::MAX, "tokenize: too small with len {len}, capacity {cap}");
            assert!(ids.iter().all(|&id| id == u32::MAX), "tokenize copied into a too-small buffer");
        }
        _ => {}
    }
    Ok(())
}

fn generator_create(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let bi = slot(u)?;
    let gi = slot(u)?;
    if let Some(mut g) = st.generators[gi].take() {
        // SAFETY: NULL or a live generator this input made.
        unsafe { ferrite_generator_destroy(&mut g.ptr) };
    }
    let b = bundle_ptr(st, bi);
    let params = sampling(u)?;
    let mut buf = StructBuf::new(u, params)?;
    let p = maybe_null::<ferrite_sampling_params>(u, &mut buf)?;
    let null_out = u.ratio(1, 32)?;
    let mut out = null_mut();
    // SAFETY: NULL or a live bundle; NULL or a struct of struct_size readable bytes; NULL or
    // writable out.
    let s = check("ferrite_generator_create", unsafe {
        ferrite_generator_create(b, p, if null_out { null_mut() } else { &mut out })
    });
    assert_eq!(s == FERRITE_OK, !out.is_null());
    if s == FERRITE_OK {
        st.generators[gi] = Some(Gen { ptr: out, vocab: vocab_of(st, bi), pending_piece: None });
    }
    Ok(())
}

fn gen_ptr(st: &State, i: usize) -> *mut ferrite_generator {
    st.generators[i].as_ref().map_or(null_mut(), |g| g.ptr)
}

/// Checks the handle's own message after a call on it.
fn check_gen_error(g: *mut ferrite_generator, s: ferrite_status) {
    // SAFETY: NULL or a live generator.
    let m = cstr(unsafe { ferrite_generator_last_error(g) }, "ferrite_generator_last_error");
    if g.is_null() {
        assert!(!m.is_empty());
    } else if s != FERRITE_OK {
        assert!(!m.is_empty(), "generator failed ({s:?}) without its own message");
    }
}

fn feed(u: &mut Unstructured, st: &mut State, as_text: bool) -> Result<()> {
    let i = slot(u)?;
    let g = gen_ptr(st, i);
    let vocab = st.generators[i].as_ref().map_or(64, |g| g.vocab);
    let s = if as_text {
        let t = text(u, 64)?;
        let null_text = u.ratio(1, 32)?;
        // SAFETY: NULL or a live generator; NULL or a C string.
        check("ferrite_generator_feed_text", unsafe {
            ferrite_generator_feed_text(g, if null_text { null() } else { t.as_ptr() })
        })
    } else {
        let v = ids(u, vocab, 48)?;
        // SAFETY: NULL or a live generator; `v.len()` ids (NULL only when empty).
        check("ferrite_generator_feed_ids", unsafe {
            ferrite_generator_feed_ids(g, if v.is_empty() { null() } else { v.as_ptr() }, v.len())
        })
    };
    check_gen_error(g, s);
    if let Some(g) = st.generators[i].as_mut() {
        g.pending_piece = None;
    }
    Ok(())
}

fn next(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let g = gen_ptr(st, i);
    let cap = capacity(u, 4, 64)?;
    let mut piece = vec![0xAAu8; 65];
    let null_piece = u.ratio(1, 8)?;
    let null_token = u.ratio(1, 32)?;
    let null_len = u.ratio(1, 8)?;
    let mut token = u32::MAX;
    let mut len = usize::MAX;
    // SAFETY: NULL or a live generator; token/len NULL or writable; piece NULL or `cap` (<= 64)
    // writable bytes.
    let s = check("ferrite_generator_next", unsafe {
        ferrite_generator_next(
            g,
            if null_token { null_mut() } else { &mut token },
            if null_piece { null_mut() } else { piece.as_mut_ptr().cast() },
            cap,
            if null_len { null_mut() } else { &mut len },
        )
    });
    check_gen_error(g, s);
    let Some(gen_slot) = st.generators[i].as_mut() else { return Ok(()) };
    match s {
        FERRITE_OK => {
            assert!((token as usize) < gen_slot.vocab, "next: token {token} outside the vocabulary");
            if !null_len {
                if let Some(expected) = gen_slot.pending_piece {
                    assert_eq!(len, expected, "next after BUFFER_TOO_SMALL gave a different piece");
                }
                if !null_piece {
                    assert!(len < cap, "next: piece of {len} bytes in a buffer of {cap}");
                    assert_eq!(piece[len], 0, "next: piece not NUL-terminated");
                    let p = &piece[..len];
                    assert!(!p.contains(&0) && std::str::from_utf8(p).is_ok(), "next: piece {p:?} not UTF-8");
                }
            }
            gen_slot.pending_piece = None;
        }
        FERRITE_ERR_BUFFER_TOO_SMALL => {
            assert!(!null_piece);
            assert_eq!(token, u32::MAX, "next wrote the token on BUFFER_TOO_SMALL");
            assert!(piece[..65].iter().all(|&b| b == 0xAA), "next copied into a too-small buffer");
            if !null_len {
                assert!(len >= cap, "next: too small with len {len}, capacity {cap}");
                if let Some(expected) = gen_slot.pending_piece {
                    assert_eq!(len, expected);
                }
                gen_slot.pending_piece = Some(len);
            }
        }
        _ => gen_slot.pending_piece = None,
    }
    Ok(())
}

struct GenerateCall {
    prompt_text: CString,
    prompt_ids: Vec<u32>,
    use_text: bool,
    params: Box<StructBuf>,
    params_null: bool,
    result_size: usize,
    result_null: bool,
    callback: bool,
    stop_after: usize,
    _stops: Vec<CString>,
    _stop_ptrs: Vec<*const c_char>,
}

struct GenerateOutcome {
    status: ferrite_status,
    result: Option<ferrite_generation>,
    text: Vec<u8>,
    ids: Vec<u32>,
}

fn run_generate(g: *mut ferrite_generator, c: &mut GenerateCall) -> GenerateOutcome {
    let mut cb = CallbackState { calls: 0, stop_after: c.stop_after, text: Vec::new(), bad: None };
    let mut result = StructBuf([0xAB; 128]);
    result.0[..size_of::<usize>()].copy_from_slice(&c.result_size.to_ne_bytes());
    let params: *const ferrite_generate_params = if c.params_null { null() } else { c.params.ptr() };
    let callback: ferrite_text_callback = if c.callback { Some(on_text) } else { None };
    let user_data = (&raw mut cb).cast::<c_void>();
    let result_ptr: *mut ferrite_generation = if c.result_null { null_mut() } else { result.ptr() };
    // SAFETY: NULL or a live generator; NULL or a C string / `n` ids; params NULL or a struct of
    // struct_size readable bytes whose stop strings are C strings; a valid callback with its
    // state; result NULL or >= struct_size (<= 128) writable bytes.
    let status = check("ferrite_generator_generate", unsafe {
        if c.use_text {
            ferrite_generator_generate(g, c.prompt_text.as_ptr(), params, callback, user_data, result_ptr)
        } else {
            let ids = if c.prompt_ids.is_empty() { null() } else { c.prompt_ids.as_ptr() };
            ferrite_generator_generate_ids(
                g,
                ids,
                c.prompt_ids.len(),
                params,
                callback,
                user_data,
                result_ptr,
            )
        }
    });
    check_gen_error(g, status);
    if let Some(bad) = cb.bad {
        panic!("generate: {bad}");
    }
    assert_eq!(result.size(), c.result_size, "generate changed result->struct_size");
    let mut out = GenerateOutcome { status, result: None, text: cb.text, ids: Vec::new() };
    if status == FERRITE_OK {
        if !c.result_null {
            out.result = Some(result.read());
        }
        let mut ids = vec![0u32; 64];
        let mut len = 0usize;
        // SAFETY: a live generator, 64 writable ids, a writable len.
        let s = check("ferrite_generator_generated_ids", unsafe {
            ferrite_generator_generated_ids(g, ids.as_mut_ptr(), ids.len(), &mut len)
        });
        assert_eq!(s, FERRITE_OK, "generated_ids after a generation of at most 16 tokens");
        ids.truncate(len);
        out.ids = ids;
    } else if !c.result_null {
        assert!(
            result.0[size_of::<usize>()..].iter().all(|&b| b == 0xAB),
            "generate wrote a result on failure"
        );
    }
    out
}

fn generate(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let g = gen_ptr(st, i);
    let vocab = st.generators[i].as_ref().map_or(64, |g| g.vocab);
    let use_text = u.arbitrary()?;
    let prompt_text = text(u, 48)?;
    let prompt_ids = ids(u, vocab, 24)?;
    let n_stops = match u.int_in_range(0..=7u8)? {
        0 => 9,
        1 | 2 => u.int_in_range(1..=3)?,
        _ => 0,
    };
    let mut stops = Vec::new();
    for _ in 0..n_stops {
        stops.push(if u.ratio(1, 16)? { CString::new(vec![b'x'; 65]).unwrap() } else { text(u, 6)? });
    }
    let stop_ptrs: Vec<*const c_char> = stops.iter().map(|s| s.as_ptr()).collect();
    let mut p = ferrite_generate_default_params();
    p.max_tokens = match u.int_in_range(0..=9u8)? {
        0 => 0,
        n => u32::from(n).min(8),
    };
    p.stop_at_eos = u.arbitrary()?;
    p.n_stop_strings = stop_ptrs.len();
    p.stop_strings = if stop_ptrs.is_empty() { null() } else { stop_ptrs.as_ptr() };
    let params = StructBuf::new(u, p)?;
    let params_null = u.ratio(1, 16)?;
    let result_size = match u.int_in_range(0..=7u8)? {
        0 => 4,
        1 => 128,
        _ => size_of::<ferrite_generation>(),
    };
    let mut call = GenerateCall {
        prompt_text,
        prompt_ids,
        use_text,
        params,
        params_null,
        result_size,
        result_null: u.ratio(1, 8)?,
        callback: u.ratio(3, 4)?,
        stop_after: u.int_in_range(1..=10)?,
        _stops: stops,
        _stop_ptrs: stop_ptrs,
    };
    let max_tokens = if params_null { 64 } else { p.max_tokens as usize };
    if params_null && vocab > 0 && u.ratio(1, 2)? {
        // The default params generate 64 tokens: skip most of those to keep inputs fast.
        return Ok(());
    }
    let first = run_generate(g, &mut call);
    if let Some(gs) = st.generators[i].as_mut() {
        gs.pending_piece = None;
    }
    if first.status != FERRITE_OK {
        return Ok(());
    }
    let gen_vocab = st.generators[i].as_ref().map_or(usize::MAX, |g| g.vocab);
    assert!(!first.ids.is_empty() && first.ids.len() <= max_tokens, "generated {} ids", first.ids.len());
    assert!(first.ids.iter().all(|&id| (id as usize) < gen_vocab), "generated id outside the vocabulary");
    if let Some(r) = first.result {
        assert_eq!(r.generated_tokens, first.ids.len());
        assert!((0..=4).contains(&r.stop_reason), "stop reason {}", r.stop_reason);
        if r.stop_reason == 4 {
            assert!(call.callback, "stopped by a callback that was not given");
        }
    }
    if u.ratio(1, 4)? {
        // Generation starts from a fresh sequence and the sampler is seeded: a repeat is identical.
        let again = run_generate(g, &mut call);
        assert_eq!(again.status, FERRITE_OK, "a repeated generation failed");
        assert_eq!(again.ids, first.ids, "a repeated generation differs");
        assert_eq!(again.text, first.text, "a repeated generation's text differs");
        assert_eq!(
            again.result.map(|r| (r.prompt_tokens, r.stop_reason)),
            first.result.map(|r| (r.prompt_tokens, r.stop_reason))
        );
    }
    Ok(())
}

fn generated_ids(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let g = gen_ptr(st, i);
    let cap = capacity(u, 4, 32)?;
    let mut ids = vec![u32::MAX; 32];
    let null_ids = cap == 0 && u.ratio(1, 2)?;
    let null_len = u.ratio(1, 16)?;
    let mut len = usize::MAX;
    // SAFETY: NULL or a live generator; NULL (capacity 0) or `cap` ids; NULL or writable len.
    let s = check("ferrite_generator_generated_ids", unsafe {
        ferrite_generator_generated_ids(
            g,
            if null_ids { null_mut() } else { ids.as_mut_ptr() },
            cap,
            if null_len { null_mut() } else { &mut len },
        )
    });
    check_gen_error(g, s);
    match s {
        FERRITE_OK => assert!(len <= cap),
        FERRITE_ERR_BUFFER_TOO_SMALL => {
            assert!(len > cap);
            assert!(ids.iter().all(|&id| id == u32::MAX));
        }
        _ => {}
    }
    Ok(())
}

fn reset(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let g = gen_ptr(st, i);
    // SAFETY: NULL or a live generator.
    let s = check("ferrite_generator_reset", unsafe { ferrite_generator_reset(g) });
    check_gen_error(g, s);
    assert_eq!(s == FERRITE_OK, !g.is_null(), "reset: {s:?}");
    // A destroyed slot keeps its (nulled) pointer to exercise NULL handles: skip those here.
    if let Some(gs) = st.generators[i].as_mut().filter(|gs| !gs.ptr.is_null()) {
        gs.pending_piece = None;
        // After a reset nothing is fed: `next` must refuse.
        let mut token = 0;
        // SAFETY: a live generator, a writable token.
        let s = check("ferrite_generator_next", unsafe {
            ferrite_generator_next(g, &mut token, null_mut(), 0, null_mut())
        });
        // SAFETY: a live generator.
        let m = cstr(unsafe { ferrite_generator_last_error(g) }, "ferrite_generator_last_error");
        assert_eq!(s, FERRITE_ERR_INVALID_GENERATION, "next right after reset: {m}");
    }
    Ok(())
}

fn embedder_create(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let bi = slot(u)?;
    let ei = slot(u)?;
    if let Some(mut e) = st.embedders[ei].take() {
        // SAFETY: NULL or a live embedder this input made.
        unsafe { ferrite_embedder_destroy(&mut e.ptr) };
    }
    let b = bundle_ptr(st, bi);
    let null_out = u.ratio(1, 32)?;
    let mut out = null_mut();
    // SAFETY: NULL or a live bundle; NULL or writable out.
    let s = check("ferrite_embedder_create", unsafe {
        ferrite_embedder_create(b, if null_out { null_mut() } else { &mut out })
    });
    assert_eq!(s == FERRITE_OK, !out.is_null());
    if s == FERRITE_OK {
        let arch = st.bundles[bi].as_ref().and_then(|b| cache().bundle_info[b.kind]).map(|i| i.architecture);
        assert_eq!(arch, Some(2), "an embedder on a bundle that is not BERT");
        st.embedders[ei] = Some(Emb { ptr: out });
    }
    Ok(())
}

fn embed(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let e = st.embedders[i].as_ref().map_or(null_mut(), |e| e.ptr);
    let mut dim = usize::MAX;
    let null_dim = u.ratio(1, 16)?;
    // SAFETY: NULL or a live embedder; NULL or writable dim.
    let s = check("ferrite_embedder_dimension", unsafe {
        ferrite_embedder_dimension(e, if null_dim { null_mut() } else { &mut dim })
    });
    assert_eq!(s == FERRITE_OK, !e.is_null() && !null_dim);
    let n = match u.int_in_range(0..=15u8)? {
        0 => 0,
        1 => 65,
        n => usize::from(n % 4) + 1,
    };
    let texts: Vec<CString> = (0..n).map(|_| text(u, 40)).collect::<Result<_>>()?;
    let ptrs: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
    let needed = if dim == usize::MAX { 32 * n } else { dim * n };
    let cap = capacity(u, needed, MAX_BUF / 4)?;
    let null_out = u.ratio(1, 16)?;
    let null_len = u.ratio(1, 32)?;
    let mut out = vec![f32::NAN; cap];
    let mut len = usize::MAX;
    // SAFETY: NULL or a live embedder; `n` C strings (NULL only when 0); out NULL or `cap`
    // writable floats; NULL or writable len.
    let s = check("ferrite_embedder_embed", unsafe {
        ferrite_embedder_embed(
            e,
            if ptrs.is_empty() { null() } else { ptrs.as_ptr() },
            n,
            if null_out { null_mut() } else { out.as_mut_ptr() },
            cap,
            if null_len { null_mut() } else { &mut len },
        )
    });
    // SAFETY: NULL or a live embedder.
    let m = cstr(unsafe { ferrite_embedder_last_error(e) }, "ferrite_embedder_last_error");
    assert!(s == FERRITE_OK || e.is_null() || !m.is_empty(), "embedder failed without its own message");
    match s {
        FERRITE_OK => {
            assert!(len <= cap);
            if dim != usize::MAX && dim > 0 {
                assert_eq!(len, n * dim, "embed: {len} floats for {n} texts of {dim}");
                for row in out[..len].chunks(dim) {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-3, "embedding norm {norm}");
                }
            }
        }
        FERRITE_ERR_BUFFER_TOO_SMALL => {
            assert!(len > cap && len != usize::MAX);
            assert!(out.iter().all(|x| x.is_nan()), "embed wrote into a too-small buffer");
        }
        _ => {}
    }
    Ok(())
}

fn open_model(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let kind = u.int_in_range(0..=MODELS.len() as u8 - 1).map(usize::from)?;
    let fresh = kind >= REAL_MODELS - 1 || (st.fresh_opens < MAX_FRESH_OPENS && u.ratio(1, 16)?);
    if let Some(mut m) = st.models[i].take().filter(|m| m.owned) {
        // SAFETY: an owned live handle or NULL.
        unsafe { ferrite_model_destroy(&mut m.ptr) };
    }
    if !fresh {
        st.models[i] = Some(Shared { ptr: cache().models[kind] as *mut _, owned: false, kind });
        return Ok(());
    }
    st.fresh_opens += usize::from(kind < REAL_MODELS - 1);
    let lib = text(u, 16)?;
    let mut params = open_params(u, &lib)?;
    let p = maybe_null::<ferrite_open_params>(u, &mut params)?;
    let c_path = path(MODELS[kind]);
    let mut out = null_mut();
    // SAFETY: a C string; params NULL or a struct of struct_size readable bytes; writable out.
    let s = check("ferrite_model_open", unsafe { ferrite_model_open(c_path.as_ptr(), p, &mut out) });
    assert_eq!(s == FERRITE_OK, !out.is_null());
    if kind >= REAL_MODELS - 1 {
        assert_ne!(s, FERRITE_OK);
    }
    if s == FERRITE_OK {
        st.models[i] = Some(Shared { ptr: out, owned: true, kind });
    }
    Ok(())
}

fn model_io_calls(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let m = model_ptr(st, i);
    let (mut ni, mut no) = (usize::MAX, usize::MAX);
    let (null_i, null_o) = (u.ratio(1, 4)?, u.ratio(1, 4)?);
    // SAFETY: NULL or a live model; NULL or writable counts.
    let s = check("ferrite_model_io_count", unsafe {
        ferrite_model_io_count(
            m,
            if null_i { null_mut() } else { &mut ni },
            if null_o { null_mut() } else { &mut no },
        )
    });
    assert_eq!(s == FERRITE_OK, !m.is_null());
    let is_output: i32 = u.arbitrary()?;
    let index = match u.int_in_range(0..=7u8)? {
        0 => usize::MAX,
        n => usize::from(n - 1),
    };
    let mut buf = StructBuf::new(u, io_info())?;
    let p = maybe_null::<ferrite_io_info>(u, &mut buf)?;
    // SAFETY: NULL or a live model; NULL or >= struct_size (<= 128) writable bytes.
    let s = check("ferrite_model_io", unsafe { ferrite_model_io(m, is_output, index, p) });
    if s == FERRITE_OK {
        let kind = st.models[i].as_ref().unwrap().kind;
        let info: ferrite_io_info = buf.read();
        let list: Vec<&Io> =
            cache().model_io[kind].iter().filter(|io| io.is_output == (is_output != 0)).collect();
        let io = list.get(index).expect("model_io succeeded with an index out of range");
        assert_eq!(cstr_owned(info.name), io.name.as_c_str());
        assert_eq!(info.dtype, io.dtype);
        let rank = usize::try_from(info.rank).unwrap_or(0);
        assert_eq!(&info.shape[..rank], &io.shape[..]);
    }
    Ok(())
}

fn session_create(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let mi = slot(u)?;
    let si = slot(u)?;
    if let Some(mut s) = st.sessions[si].take() {
        // SAFETY: NULL or a live session this input made.
        unsafe { ferrite_session_destroy(&mut s.ptr) };
    }
    let m = model_ptr(st, mi);
    let null_out = u.ratio(1, 32)?;
    let mut out = null_mut();
    // SAFETY: NULL or a live model; NULL or writable out.
    let s = check("ferrite_session_create", unsafe {
        ferrite_session_create(m, if null_out { null_mut() } else { &mut out })
    });
    assert_eq!(s == FERRITE_OK, !out.is_null());
    if s == FERRITE_OK {
        st.sessions[si] = Some(Sess { ptr: out, kind: st.models[mi].as_ref().unwrap().kind });
    }
    Ok(())
}

const DTYPE_SIZES: [usize; 6] = [4, 2, 8, 4, 1, 1];

fn dim(u: &mut Unstructured, declared: Option<i64>) -> Result<usize> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => 0,
        1 => usize::MAX,
        2 => 1 << 31,
        3 => u.int_in_range(0..=300)?,
        4..=7 => u.int_in_range(1..=6)?,
        _ => match declared {
            Some(d) if d >= 0 => d as usize,
            _ => u.int_in_range(1..=4)?,
        },
    })
}

/// Caller memory for a tensor: 8-byte aligned, `len` bytes from `offset` (0, or 1 to misalign).
struct Mem {
    buf: Vec<u64>,
    offset: usize,
}

impl Mem {
    fn new(u: &mut Unstructured, len: usize, fill: bool) -> Result<Mem> {
        let mut buf = vec![0u64; (len + 1).div_ceil(8)];
        if fill {
            // SAFETY: u64 memory viewed as bytes.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8) };
            let n = u.int_in_range(0..=64usize)?;
            let src = u.bytes(n.min(u.len()))?;
            if !src.is_empty() {
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = src[i % src.len()];
                }
            }
        }
        let offset = usize::from(u.ratio(1, 16)?);
        Ok(Mem { buf, offset })
    }

    fn ptr(&mut self) -> *mut c_void {
        // SAFETY: offset 0 or 1 inside a buffer of at least len + 1 bytes.
        unsafe { self.buf.as_mut_ptr().cast::<u8>().add(self.offset).cast() }
    }
}

fn session_run(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let i = slot(u)?;
    let s_ptr = st.sessions[i].as_ref().map_or(null_mut(), |s| s.ptr);
    let kind = st.sessions[i].as_ref().map_or(0, |s| s.kind);
    let io = &cache().model_io[kind];
    let (ins, outs): (Vec<&Io>, Vec<&Io>) = io.iter().partition(|io| !io.is_output);
    let garbage = text(u, 12)?;
    let name_of = |u: &mut Unstructured, list: &[&Io], k: usize| -> Result<*const c_char> {
        Ok(match u.int_in_range(0..=11u8)? {
            0 => garbage.as_ptr(),
            1 if !io.is_empty() => io[usize::from(u.arbitrary::<u8>()?) % io.len()].name.as_ptr(),
            _ if !list.is_empty() => list[k % list.len()].name.as_ptr(),
            _ => garbage.as_ptr(),
        })
    };

    // Inputs: mostly the model's, with fuzzed dtypes, ranks, dims, sizes and alignment.
    let n_in = match u.int_in_range(0..=7u8)? {
        0 => 0,
        1 => ins.len() + 1,
        2 => ins.len().saturating_sub(1),
        _ => ins.len(),
    };
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    let mut mems: Vec<Option<Mem>> = Vec::new();
    let mut inputs = Vec::new();
    for k in 0..n_in {
        let declared = ins.get(k % ins.len().max(1));
        let name = name_of(u, &ins, k)?;
        let dtype = match u.int_in_range(0..=9u8)? {
            0 => -1,
            1 => 6,
            2 => u.int_in_range(0..=5)?,
            _ => declared.map_or(0, |d| d.dtype),
        };
        let rank = match u.int_in_range(0..=7u8)? {
            0 => u.int_in_range(0..=12)?,
            _ => declared.map_or(1, |d| d.shape.len()),
        };
        let shape: Vec<usize> = (0..rank)
            .map(|r| dim(u, declared.and_then(|d| d.shape.get(r).copied())))
            .collect::<Result<_>>()?;
        let elem = usize::try_from(dtype).ok().and_then(|d| DTYPE_SIZES.get(d).copied()).unwrap_or(4);
        let exact = shape.iter().try_fold(elem, |a, &d| a.checked_mul(d));
        // The data buffer always holds `byte_size` bytes: the API may trust it.
        let byte_size = match exact {
            Some(b) if b <= MAX_BUF && u.ratio(7, 8)? => b,
            Some(b) if b <= MAX_BUF => b.saturating_sub(1).max(usize::from(b == 0)),
            _ => u.int_in_range(0..=64)?,
        };
        let null_data = byte_size == 0 && exact == Some(0) && u.ratio(1, 2)?;
        let mut mem = if null_data { None } else { Some(Mem::new(u, byte_size, true)?) };
        let data = mem.as_mut().map_or(null(), |m| m.ptr().cast_const());
        shapes.push(shape);
        mems.push(mem);
        inputs.push(ferrite_input { name, dtype, shape: null(), rank, data, byte_size });
    }
    for (input, shape) in inputs.iter_mut().zip(&shapes) {
        input.shape = if shape.is_empty() { null() } else { shape.as_ptr() };
    }

    // Outputs: any subset of the model's, fuzzed capacities.
    let n_out = match u.int_in_range(0..=7u8)? {
        0 => 0,
        1 => 3,
        _ => outs.len(),
    };
    let mut out_mems = Vec::new();
    let mut outputs = Vec::new();
    for k in 0..n_out {
        let name = name_of(u, &outs, k)?;
        let dtype = match u.int_in_range(0..=9u8)? {
            0 => -1,
            1 => u.int_in_range(0..=5)?,
            _ => outs.get(k % outs.len().max(1)).map_or(0, |d| d.dtype),
        };
        let cap = capacity(u, 4096, MAX_BUF)?;
        let null_data = cap == 0 && u.ratio(1, 2)?;
        let mut mem = if null_data { None } else { Some(Mem::new(u, cap, false)?) };
        let data = mem.as_mut().map_or(null_mut(), Mem::ptr);
        out_mems.push(mem);
        outputs.push(ferrite_output {
            name,
            dtype,
            data,
            byte_capacity: cap,
            rank: usize::MAX,
            shape: [7; 8],
            byte_size: usize::MAX,
        });
    }
    let null_inputs = inputs.is_empty() && u.ratio(1, 2)?;
    let null_outputs = outputs.is_empty() && u.ratio(1, 2)?;
    // SAFETY: NULL or a live session; input/output arrays of the given counts (NULL only when
    // empty) whose names are C strings, shapes `rank` dims, data `byte_size` readable bytes and
    // output buffers `byte_capacity` writable bytes.
    let s = check("ferrite_session_run", unsafe {
        ferrite_session_run(
            s_ptr,
            if null_inputs { null() } else { inputs.as_ptr() },
            inputs.len(),
            if null_outputs { null_mut() } else { outputs.as_mut_ptr() },
            outputs.len(),
        )
    });
    // SAFETY: NULL or a live session.
    let m = cstr(unsafe { ferrite_session_last_error(s_ptr) }, "ferrite_session_last_error");
    assert!(s == FERRITE_OK || s_ptr.is_null() || !m.is_empty(), "session failed without its own message");
    if s == FERRITE_OK || s == FERRITE_ERR_BUFFER_TOO_SMALL {
        for o in &outputs {
            assert!(o.rank <= 8, "output rank {}", o.rank);
            let elem = DTYPE_SIZES[usize::try_from(o.dtype).unwrap()];
            let bytes = o.shape[..o.rank].iter().try_fold(elem, |a, &d| a.checked_mul(d));
            assert_eq!(
                bytes,
                Some(o.byte_size),
                "output shape {:?} vs byte_size {}",
                &o.shape[..o.rank],
                o.byte_size
            );
            if s == FERRITE_OK {
                assert!(o.byte_size <= o.byte_capacity);
            }
        }
        if s == FERRITE_ERR_BUFFER_TOO_SMALL {
            assert!(outputs.iter().any(|o| o.byte_size > o.byte_capacity));
        }
    }
    drop(mems);
    drop(out_mems);
    Ok(())
}

fn misc(u: &mut Unstructured, st: &mut State) -> Result<()> {
    let code: i32 = u.arbitrary()?;
    let name = cstr(ferrite_status_name(code), "ferrite_status_name");
    assert_eq!(name == "FERRITE_STATUS_UNKNOWN", !(0..=19).contains(&code), "status {code} is {name}");
    assert_eq!(cstr(ferrite_version(), "ferrite_version"), "0.1.0");
    assert_eq!(ferrite_abi_version(), FERRITE_ABI_VERSION);
    let k = slot(u)?;
    // SAFETY (all three): NULL or live handles.
    unsafe {
        let _ = cstr(ferrite_generator_last_error(gen_ptr(st, k)), "generator last error");
        let e = st.embedders[k].as_ref().map_or(null_mut(), |e| e.ptr);
        let _ = cstr(ferrite_embedder_last_error(e), "embedder last error");
        let s = st.sessions[k].as_ref().map_or(null_mut(), |s| s.ptr);
        let _ = cstr(ferrite_session_last_error(s), "session last error");
    }
    Ok(())
}

fn step(u: &mut Unstructured, st: &mut State) -> Result<()> {
    match u.int_in_range(0..=23u8)? {
        0 => open_bundle(u, st),
        1 => {
            let i = slot(u)?;
            if let Some(b) = st.bundles[i].as_mut() {
                let owned = b.owned;
                destroy_slot(u, &mut b.ptr, owned, ferrite_bundle_destroy)?;
            }
            Ok(())
        }
        2 => bundle_info(u, st),
        3 => tokenize(u, st),
        4 => generator_create(u, st),
        5 => {
            let i = slot(u)?;
            if let Some(g) = st.generators[i].as_mut() {
                destroy_slot(u, &mut g.ptr, true, ferrite_generator_destroy)?;
            }
            Ok(())
        }
        6 => feed(u, st, true),
        7 => feed(u, st, false),
        8 | 9 => next(u, st),
        10 | 11 => generate(u, st),
        12 => generated_ids(u, st),
        13 => reset(u, st),
        14 => embedder_create(u, st),
        15 => {
            let i = slot(u)?;
            if let Some(e) = st.embedders[i].as_mut() {
                destroy_slot(u, &mut e.ptr, true, ferrite_embedder_destroy)?;
            }
            Ok(())
        }
        16 => embed(u, st),
        17 => open_model(u, st),
        18 => {
            let i = slot(u)?;
            if let Some(m) = st.models[i].as_mut() {
                let owned = m.owned;
                destroy_slot(u, &mut m.ptr, owned, ferrite_model_destroy)?;
            }
            Ok(())
        }
        19 => model_io_calls(u, st),
        20 => session_create(u, st),
        21 => {
            let i = slot(u)?;
            if let Some(s) = st.sessions[i].as_mut() {
                destroy_slot(u, &mut s.ptr, true, ferrite_session_destroy)?;
            }
            Ok(())
        }
        22 => session_run(u, st),
        _ => misc(u, st),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = cache();
    let _ = marker();
    set_marker();
    let started = std::time::Instant::now();
    let mut u = Unstructured::new(data);
    let mut st = State::default();
    for _ in 0..MAX_CALLS {
        if u.is_empty() || step(&mut u, &mut st).is_err() {
            break;
        }
    }
    let calls = started.elapsed();
    drop(st);
    if trace() {
        eprintln!(
            "input: calls {:.1} ms, cleanup {:.1} ms",
            calls.as_secs_f64() * 1e3,
            (started.elapsed() - calls).as_secs_f64() * 1e3
        );
    }
});
