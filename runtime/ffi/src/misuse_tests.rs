//! The C API's misuse paths without any file: NULL handles and pointers, destroy twice, bad
//! struct sizes, undersized and misaligned buffers, invalid UTF-8, status names and the error
//! messages. Nothing here opens a bundle or a model, so Miri runs all of it (it checks every
//! pointer the unsafe helpers in `util.rs` create):
//!
//! ```sh
//! cargo +nightly miri test -p ferrite-ffi --lib
//! ```

use std::ffi::{CStr, c_char};
use std::mem::size_of;
use std::ptr::{null, null_mut};

use crate::status::ferrite_status::*;
use crate::status::{Fail, ferrite_status};
use crate::util::{
    Versioned, clear_out, copy_out, destroy, give, read_params, slice_arg, str_arg, write_result,
};
use crate::*;

fn text(p: *const c_char) -> String {
    assert!(!p.is_null());
    // SAFETY: every string the API returns is NUL-terminated and lives until the next call.
    unsafe { CStr::from_ptr(p) }.to_str().expect("UTF-8").to_owned()
}

fn last_error() -> String {
    text(ferrite_last_error())
}

#[test]
fn status_names_cover_every_status_and_nothing_else() {
    for code in 0..=20 {
        let name = text(ferrite_status_name(code));
        assert!(name.starts_with("FERRITE_"), "{code}: {name}");
        assert_ne!(name, "FERRITE_STATUS_UNKNOWN");
    }
    assert_eq!(text(ferrite_status_name(0)), "FERRITE_OK");
    assert_eq!(text(ferrite_status_name(19)), "FERRITE_ERR_INTERNAL");
    assert_eq!(text(ferrite_status_name(20)), "FERRITE_ERR_CHAT_TEMPLATE");
    for code in [-1, 21, i32::MAX, i32::MIN] {
        assert_eq!(text(ferrite_status_name(code)), "FERRITE_STATUS_UNKNOWN");
    }
    assert_eq!(text(ferrite_version()), env!("CARGO_PKG_VERSION"));
    assert_eq!(ferrite_abi_version(), FERRITE_ABI_VERSION);
}

#[test]
fn null_handles_are_invalid_arguments_with_a_message() {
    let mut len = 7usize;
    let mut ids = [0u32; 4];
    // SAFETY (all calls): NULL handles and valid or NULL other pointers, as documented.
    unsafe {
        assert_eq!(ferrite_bundle_get_info(null(), null_mut()), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(last_error(), "`bundle` is NULL");
        assert_eq!(
            ferrite_bundle_tokenize(null(), c"x".as_ptr(), ids.as_mut_ptr(), 4, &mut len),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        assert_eq!(len, 7, "a failed call wrote len");
        let message = ferrite_chat_message { role: c"user".as_ptr(), content: c"hi".as_ptr() };
        let mut buf = [0 as c_char; 8];
        assert_eq!(
            ferrite_chat_render(null(), &message, 1, 1, buf.as_mut_ptr(), buf.len(), &mut len),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_error(), "`bundle` is NULL");
        assert_eq!(
            ferrite_chat_render(null(), &message, 1, 1, buf.as_mut_ptr(), buf.len(), null_mut()),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        assert_eq!(last_error(), "`written` is NULL");
        assert_eq!(len, 7, "a failed call wrote len");
        assert_eq!(
            ferrite_chat_stop_ids(null(), ids.as_mut_ptr(), 4, &mut len),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        let mut g = null_mut();
        assert_eq!(ferrite_generator_create(null(), null(), &mut g), FERRITE_ERR_INVALID_ARGUMENT);
        assert!(g.is_null());
        assert_eq!(ferrite_generator_feed_text(null_mut(), c"x".as_ptr()), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(ferrite_generator_feed_ids(null_mut(), ids.as_ptr(), 4), FERRITE_ERR_INVALID_ARGUMENT);
        let mut token = 0;
        assert_eq!(
            ferrite_generator_next(null_mut(), &mut token, null_mut(), 0, null_mut()),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        assert_eq!(ferrite_generator_reset(null_mut()), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(
            ferrite_generator_generate(null_mut(), c"x".as_ptr(), null(), None, null_mut(), null_mut()),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            ferrite_generator_generated_ids(null_mut(), ids.as_mut_ptr(), 4, &mut len),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        let mut e = null_mut();
        assert_eq!(ferrite_embedder_create(null(), &mut e), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(ferrite_embedder_dimension(null(), &mut len), FERRITE_ERR_INVALID_ARGUMENT);
        let mut out = [0f32; 4];
        let texts = [c"a".as_ptr()];
        assert_eq!(
            ferrite_embedder_embed(null_mut(), texts.as_ptr(), 1, out.as_mut_ptr(), 4, &mut len),
            FERRITE_ERR_INVALID_ARGUMENT
        );
        let (mut ni, mut no) = (0, 0);
        assert_eq!(ferrite_model_io_count(null(), &mut ni, &mut no), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(ferrite_model_io(null(), 0, 0, null_mut()), FERRITE_ERR_INVALID_ARGUMENT);
        let mut s = null_mut();
        assert_eq!(ferrite_session_create(null(), &mut s), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(ferrite_session_run(null_mut(), null(), 0, null_mut(), 0), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(last_error(), "`session` is NULL");
        // Per-handle messages of NULL handles are static text, never NULL.
        assert_eq!(text(ferrite_generator_last_error(null())), "generator is NULL");
        assert_eq!(text(ferrite_embedder_last_error(null())), "embedder is NULL");
        assert_eq!(text(ferrite_session_last_error(null())), "session is NULL");
        // Destroying through NULL or a NULL handle does nothing.
        ferrite_bundle_destroy(null_mut());
        ferrite_model_destroy(null_mut());
        ferrite_generator_destroy(null_mut());
        ferrite_embedder_destroy(null_mut());
        ferrite_session_destroy(null_mut());
        let mut b: *mut ferrite_bundle = null_mut();
        ferrite_bundle_destroy(&mut b);
        ferrite_session_destroy(&mut s);
        assert!(b.is_null() && s.is_null());
    }
}

#[test]
fn open_arguments_are_checked_before_any_file_is_touched() {
    let mut out: *mut ferrite_bundle = std::ptr::dangling_mut();
    // SAFETY (all calls): valid or NULL pointers; `params` structs are whole.
    unsafe {
        assert_eq!(ferrite_bundle_open(c"x".as_ptr(), null(), null_mut()), FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(ferrite_bundle_open(null(), null(), &mut out), FERRITE_ERR_INVALID_ARGUMENT);
        assert!(out.is_null(), "a failed open must leave NULL in out");
        assert_eq!(ferrite_bundle_open(c"\xffbundle".as_ptr(), null(), &mut out), FERRITE_ERR_INVALID_UTF8);
        assert!(last_error().starts_with("`path` is not valid UTF-8"), "{}", last_error());

        let mut p = ferrite_open_default_params();
        p.struct_size = 8;
        assert_eq!(ferrite_bundle_open(c"b".as_ptr(), &p, &mut out), FERRITE_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("struct_size` is 8"), "{}", last_error());
        p = ferrite_open_default_params();
        p.backend = 7;
        assert_eq!(ferrite_bundle_open(c"b".as_ptr(), &p, &mut out), FERRITE_ERR_INVALID_ARGUMENT);
        p = ferrite_open_default_params();
        p.ort_library = c"\xfe".as_ptr();
        let mut m: *mut ferrite_model = null_mut();
        assert_eq!(ferrite_model_open(c"m".as_ptr(), &p, &mut m), FERRITE_ERR_INVALID_UTF8);
        // Bug 19: a thread count beyond the limit is refused before a pool is started.
        for threads in [FERRITE_MAX_THREADS + 1, u32::MAX] {
            p = ferrite_open_default_params();
            p.threads = threads;
            assert_eq!(ferrite_bundle_open(c"b".as_ptr(), &p, &mut out), FERRITE_ERR_INVALID_ARGUMENT);
            assert!(last_error().contains("params->threads"), "{}", last_error());
            assert_eq!(ferrite_model_open(c"m".as_ptr(), &p, &mut m), FERRITE_ERR_INVALID_ARGUMENT);
        }
    }
}

#[test]
fn successful_calls_keep_the_last_error() {
    // SAFETY: NULL handle; the API checks it.
    assert_eq!(unsafe { ferrite_model_io(null(), 0, 0, null_mut()) }, FERRITE_ERR_INVALID_ARGUMENT);
    let before = last_error();
    assert_eq!(before, "`model` is NULL");
    let _ = ferrite_status_name(3);
    let _ = ferrite_open_default_params();
    // SAFETY: destroying NULL does nothing.
    unsafe { ferrite_generator_destroy(null_mut()) };
    assert_eq!(last_error(), before);
    // Each thread has its own message.
    std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
}

#[test]
fn panics_become_internal_errors() {
    let status = crate::status::guard(|| panic!("boom"));
    assert_eq!(status, FERRITE_ERR_INTERNAL);
    assert_eq!(last_error(), "internal error (a bug in ferrite): boom");
    let status = crate::status::guard(|| Err(Fail::new(FERRITE_ERR_IO, "a\0b")));
    assert_eq!(status, FERRITE_ERR_IO);
    assert_eq!(last_error(), "a\u{FFFD}b", "an interior NUL must not cut the message");
}

#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
struct Params {
    struct_size: usize,
    a: u32,
    b: u32,
}

impl Versioned for Params {
    const V1_SIZE: usize = size_of::<Params>();
}

#[test]
fn versioned_structs_read_and_write_only_the_callers_size() {
    let default = Params { struct_size: size_of::<Params>(), a: 1, b: 2 };
    // SAFETY (all calls): pointers to whole structs or to a bigger buffer (a newer caller).
    unsafe {
        assert_eq!(read_params(null::<Params>(), default, "p").unwrap(), default);
        let small = Params { struct_size: 12, a: 9, b: 9 };
        assert_eq!(read_params(&small, default, "p").unwrap_err().status, FERRITE_ERR_INVALID_ARGUMENT);
        let exact = Params { struct_size: size_of::<Params>(), a: 5, b: 6 };
        assert_eq!(read_params(&exact, default, "p").unwrap(), exact);
        // A newer caller's bigger struct: the fields this version knows are read, no more.
        let mut newer = [0u64; 4];
        newer[0] = 32;
        newer[1] = 7 | (8 << 32);
        newer[2] = u64::MAX;
        let got = read_params(newer.as_ptr().cast::<Params>(), default, "p").unwrap();
        assert_eq!((got.struct_size, got.a, got.b), (32, 7, 8));
        // An unaligned struct is read byte by byte.
        let mut bytes = [0u8; 1 + size_of::<Params>()];
        bytes[1..9].copy_from_slice(&size_of::<Params>().to_ne_bytes());
        bytes[9..13].copy_from_slice(&3u32.to_ne_bytes());
        let got = read_params(bytes.as_ptr().add(1).cast::<Params>(), default, "p").unwrap();
        assert_eq!(got.a, 3);

        let value = Params { struct_size: 999, a: 10, b: 20 };
        assert_eq!(
            write_result(null_mut::<Params>(), &value, "r").unwrap_err().status,
            FERRITE_ERR_INVALID_ARGUMENT
        );
        let mut short = Params { struct_size: 4, a: 0, b: 0 };
        assert!(write_result(&mut short, &value, "r").is_err());
        assert_eq!(short, Params { struct_size: 4, a: 0, b: 0 }, "a refused result was written");
        let mut out = Params { struct_size: size_of::<Params>(), a: 0, b: 0 };
        write_result(&mut out, &value, "r").unwrap();
        assert_eq!(
            out,
            Params { struct_size: size_of::<Params>(), a: 10, b: 20 },
            "struct_size must be kept"
        );
        let mut bigger = [u64::MAX; 4];
        bigger[0] = 32;
        write_result(bigger.as_mut_ptr().cast::<Params>(), &value, "r").unwrap();
        assert_eq!(bigger, [32, 10 | (20 << 32), u64::MAX, u64::MAX], "wrote past this version's fields");
    }
}

#[test]
fn buffers_strings_and_arrays_are_checked() {
    let src = [1u32, 2, 3];
    let mut dst = [0u32; 4];
    let mut len = 0usize;
    // SAFETY (all calls): buffers of the capacities given, or NULL.
    unsafe {
        let e = copy_out(&src, dst.as_mut_ptr(), 2, &mut len, "ids").unwrap_err();
        assert_eq!((e.status, len), (FERRITE_ERR_BUFFER_TOO_SMALL, 3));
        assert_eq!(dst, [0; 4], "copied into a buffer that is too small");
        assert_eq!(
            copy_out(&src, dst.as_mut_ptr(), 4, null_mut(), "ids").unwrap_err().status,
            FERRITE_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            copy_out(&src, null_mut(), 4, &mut len, "ids").unwrap_err().status,
            FERRITE_ERR_INVALID_ARGUMENT
        );
        copy_out(&src, dst.as_mut_ptr(), 4, &mut len, "ids").unwrap();
        assert_eq!((dst, len), ([1, 2, 3, 0], 3));
        copy_out::<u32>(&[], null_mut(), 0, &mut len, "ids").unwrap();
        assert_eq!(len, 0);
        // Misaligned caller memory is refused, not dereferenced.
        let mut raw = [0u32; 5];
        let odd = raw.as_mut_ptr().cast::<u8>().add(1).cast::<u32>();
        assert_eq!(copy_out(&src, odd, 4, &mut len, "ids").unwrap_err().status, FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(raw, [0; 5]);
        assert!(slice_arg(odd.cast_const(), 2, "a").is_err());

        assert_eq!(slice_arg::<u32>(null(), 0, "a").unwrap(), &[] as &[u32]);
        assert!(slice_arg::<u32>(null(), 1, "a").is_err());
        assert_eq!(slice_arg(src.as_ptr(), 2, "a").unwrap(), &[1, 2]);
        let e = slice_arg(src.as_ptr(), usize::MAX / 2, "a").unwrap_err();
        assert!(e.message.contains("more than memory holds"), "{}", e.message);

        assert_eq!(str_arg(c"h\u{e9}".as_ptr(), "t").unwrap(), "h\u{e9}");
        assert_eq!(str_arg(c"\xc3(".as_ptr(), "t").unwrap_err().status, FERRITE_ERR_INVALID_UTF8);
        assert_eq!(str_arg(null(), "t").unwrap_err().status, FERRITE_ERR_INVALID_ARGUMENT);
        assert_eq!(str_arg(c"".as_ptr(), "t").unwrap(), "");
    }
}

#[test]
fn handles_are_freed_once_and_nulled() {
    struct Counted {
        _alive: std::rc::Rc<()>,
    }
    let alive = std::rc::Rc::new(());
    let mut out: *mut Counted = std::ptr::dangling_mut();
    // SAFETY (all calls): `out` is a writable pointer; the handle is made by `give` and given
    // back to `destroy` once, then only its NULLed pointer.
    unsafe {
        clear_out(&mut out, "out").unwrap();
        assert!(out.is_null());
        assert_eq!(clear_out::<Counted>(null_mut(), "out").unwrap_err().status, FERRITE_ERR_INVALID_ARGUMENT);
        give(&mut out, Counted { _alive: alive.clone() });
        assert!(!out.is_null());
        assert_eq!(std::rc::Rc::strong_count(&alive), 2);
        destroy(&mut out);
        assert!(out.is_null());
        assert_eq!(std::rc::Rc::strong_count(&alive), 1, "the handle was not dropped");
        destroy(&mut out); // double destroy: a no-op on the NULLed pointer
        destroy::<Counted>(null_mut());
    }
    assert_eq!(std::rc::Rc::strong_count(&alive), 1);
}

#[test]
fn statuses_are_distinct_documented_values() {
    let all: Vec<ferrite_status> = (0..=20)
        .map(|c| {
            // SAFETY: 0..=20 are the discriminants of `ferrite_status` (repr(C), checked below
            // against the names).
            unsafe { std::mem::transmute::<i32, ferrite_status>(c) }
        })
        .collect();
    for (code, s) in all.iter().enumerate() {
        assert_eq!(*s as i32, code as i32);
        assert_eq!(text(ferrite_status_name(*s as i32)), format!("{s:?}"));
    }
}
