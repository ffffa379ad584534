//! Gives the heap memory freed while a model was prepared back to the operating system.
//!
//! Preparing a model allocates far more than it keeps: tract copies every initializer out of
//! the file, types and optimises the graph (folding constants into new tensors), and drops the
//! intermediate copies; ONNX Runtime reads and prepacks its weights. glibc's allocator keeps
//! freed chunks for reuse, and once a large block has been freed it raises its `mmap`
//! threshold, so later large blocks come from the main heap too and stay mapped after they are
//! freed. Measured on SmolLM2-135M q4 (tract, the plan alone): 213 MiB resident after
//! preparing, 171 MiB after the trim (docs/loading.md, "Memory after loading", which also says
//! what the CLI does about the blocks freed while generating). `malloc_trim(0)` returns the
//! free pages at the top and inside the heap; it runs once per prepared model, in a few
//! milliseconds after a load that takes hundreds.
//!
//! Elsewhere (musl, macOS, Windows) the allocator's own policy applies and this does nothing.

/// Returns freed heap pages to the OS (glibc only).
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` walks glibc's own free lists under its own locks; it has no
        // preconditions and only releases memory no allocation owns.
        let released = unsafe { libc::malloc_trim(0) };
        log::debug!("heap: malloc_trim released memory: {}", released == 1);
    }
}
