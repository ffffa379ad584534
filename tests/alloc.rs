//! The sampler and the streaming text path allocate nothing per token: a counting global
//! allocator (this test binary only) sees zero allocations across many sampled tokens.
//!
//! Allocations are counted per thread: libtest's own threads (output capture, the slow-test
//! timer) may allocate at any moment and must not count against the code under test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ferrite_runtime::sample::{Sampler, SamplingParams};
use ferrite_runtime::stream::{TextStream, stop_strings};

struct Counting;

thread_local! {
    // `const` initialisation: no lazy registration, so touching it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|c| c.set(c.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards to the system allocator with the caller's own arguments; the
// counter is a const-initialised thread-local Cell and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's: layout is valid and non-zero-sized.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System (through this allocator) with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: ptr was allocated by System with layout; new_size is the caller's valid size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn sampling_and_streaming_allocate_nothing_per_token() {
    let vocab = 1000;
    let base: Vec<f32> = (0..vocab).map(|i| ((i * 7919) % 1000) as f32 / 100.0).collect();
    let mut logits = base.clone();
    let history: Vec<u32> = (0..64).collect();
    let tokens: Vec<&[u8]> = vec![b"ab", "€".as_bytes(), &"é".as_bytes()[..1], &"é".as_bytes()[1..], b"cd"];
    let settings = [
        SamplingParams::greedy(),
        SamplingParams { temperature: 0.7, top_k: 40, seed: 1, ..Default::default() },
        SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: 2,
            repetition_penalty: 1.2,
            ..Default::default()
        },
        SamplingParams { temperature: 1.3, seed: 3, ..Default::default() },
    ];
    for params in settings {
        let mut sampler = Sampler::new(params, vocab).unwrap();
        let mut stream = TextStream::new(stop_strings(&["STOP", "zz"]).unwrap());
        let mut emitted = 0usize;
        let before = allocations();
        for step in 0..200 {
            logits.copy_from_slice(&base);
            let id = sampler.sample(&mut logits, &history);
            assert!((id as usize) < vocab);
            stream.push(tokens[step % tokens.len()], &mut |s: &str| emitted += s.len());
        }
        let after = allocations();
        assert_eq!(after - before, 0, "{params:?}: {} allocations in 200 tokens", after - before);
        assert!(emitted > 0);
    }
}
