//! Counts the reader claims are not reserved ahead: in a large file, a bogus count makes the
//! reader reserve a few KiB, not a share of the file's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrite_gguf::GgufFile;

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator with the caller's arguments; the bookkeeping is one
// atomic and never allocates.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's valid, non-zero-sized layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: allocated by System with `layout`; `new_size` is the caller's valid size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

/// The largest single allocation made while parsing `bytes` (the input itself excluded).
fn largest_while_parsing(bytes: Vec<u8>) -> (usize, &'static str) {
    LARGEST.store(0, Ordering::SeqCst);
    let kind = GgufFile::from_bytes(bytes).map(|_| "Ok").unwrap_or_else(|e| e.kind());
    (LARGEST.load(Ordering::SeqCst), kind)
}

#[test]
fn bogus_counts_in_a_large_file_reserve_little() {
    let payload = vec![0u8; 64 << 20];
    for (at, what) in [(8, "tensor count"), (16, "metadata count")] {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&payload);
        // The zeros read as empty-named entries: the second one is a duplicate.
        let (largest, kind) = largest_while_parsing(bytes);
        assert!(kind.starts_with("Duplicate"), "{what}: {kind}");
        assert!(largest < 1 << 20, "{what}: a {largest}-byte allocation for a 64 MiB file");
    }
}
