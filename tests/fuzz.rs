//! Fuzzing the feature readers: random `.npy` headers and payloads, `.npz` archives with their
//! local headers, central directory and zip64 fields mutated, and byte soup, through
//! `ingest::npy::read` and `ingest::npz::read_from` with a 1 MiB byte budget. No case may panic,
//! and no single allocation of the whole run may exceed the budget (a counting global
//! allocator watches). `cargo test --test fuzz` runs 5,000 cases; the full run is
//! `cargo test --release --test fuzz -- --ignored` (200,000 cases).

use momentminer::ingest::{npy, npz, Limits};
use momentminer::rng::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Write};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Remembers the largest single allocation asked for while `WATCHING` is set.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static WATCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHING.load(Relaxed) {
            LARGEST.fetch_max(layout.size(), Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHING.load(Relaxed) {
            LARGEST.fetch_max(new_size, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

const BUDGET: u64 = 1 << 20;

fn limits() -> Limits {
    Limits {
        max_frames: 200_000,
        max_dim: 16_384,
        max_bytes: BUDGET,
    }
}

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// A dimension as hostile files claim them: small, at an edge, or huge.
fn dimension(rng: &mut Rng) -> u64 {
    match below(rng, 6) {
        0 => 0,
        1 => 1 + below(rng, 64),
        2 => 1 + below(rng, 4096),
        3 => 200_000,
        4 => u32::MAX as u64,
        _ => rng.next_u64() >> below(rng, 64),
    }
}

/// An `.npy` file: a header of random dtype, order and shape (rank 0 to 3), then a payload of
/// random length, sometimes what the header promises.
fn npy_file(rng: &mut Rng) -> Vec<u8> {
    let descr = [
        "<f4", ">f4", "<f2", "<f8", ">f8", "<i4", "|u1", "<c8", "f4", "",
    ];
    let rank = below(rng, 4);
    let dims: Vec<u64> = (0..rank).map(|_| dimension(rng)).collect();
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let fortran = if below(rng, 2) == 0 { "True" } else { "False" };
    let pick = descr[below(rng, descr.len() as u64) as usize];
    let mut dict = format!("{{'descr': '{pick}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while (dict.len() + 11) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    let version = [1u8, 2, 3, 9][below(rng, 4) as usize];
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    let promised = dims.iter().fold(4u64, |n, d| n.saturating_mul(*d));
    match below(rng, 3) {
        // What the header promises (up to twice the budget), as zeros: cheap to make.
        0 => out.resize(out.len() + promised.min(2 * BUDGET) as usize, 0),
        1 => out.extend((0..below(rng, 4096)).map(|_| rng.next_u64() as u8)),
        _ => out.extend((0..below(rng, 64)).map(|_| rng.next_u64() as u8)),
    }
    out
}

/// An `.npz` of one or two members, stored or deflated.
fn npz_file(rng: &mut Rng) -> Vec<u8> {
    let mut archive = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for name in ["clip.npy", "i3d.npy"]
        .iter()
        .take(1 + below(rng, 2) as usize)
    {
        let method = if below(rng, 2) == 0 {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(below(rng, 4) == 0);
        archive.start_file(*name, options).unwrap();
        archive.write_all(&npy_file(rng)).unwrap();
    }
    archive.finish().unwrap().into_inner()
}

/// Flips, overwrites and truncates: sizes, offsets, counts and zip64 extras all end up wrong.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..below(rng, 8) {
        if bytes.is_empty() {
            break;
        }
        let at = below(rng, bytes.len() as u64) as usize;
        match below(rng, 4) {
            0 => bytes[at] ^= 1 << below(rng, 8),
            1 => bytes[at] = 0xff,
            2 => {
                let word = [0xffu8; 8];
                let end = (at + 8).min(bytes.len());
                bytes[at..end].copy_from_slice(&word[..end - at]);
            }
            _ => bytes.truncate(at),
        }
    }
}

/// One case: returns a short name of what it was, for the report of a failure.
fn run_case(seed: u64) -> &'static str {
    let mut rng = Rng::new(seed);
    let kind = below(&mut rng, 3);
    let mut bytes = match kind {
        0 => npy_file(&mut rng),
        1 => npz_file(&mut rng),
        _ => (0..below(&mut rng, 512))
            .map(|_| rng.next_u64() as u8)
            .collect(),
    };
    if below(&mut rng, 4) != 0 {
        mutate(&mut rng, &mut bytes);
    }
    // What a zip directory or a sparse file might claim, true or not.
    let claimed = match below(&mut rng, 3) {
        0 => bytes.len() as u64,
        1 => u64::MAX,
        _ => rng.next_u64() >> below(&mut rng, 64),
    };
    WATCHING.store(true, Relaxed);
    let _ = npy::read(bytes.as_slice(), claimed, &limits());
    let _ = npz::read_from(Cursor::new(&bytes), &limits());
    WATCHING.store(false, Relaxed);
    ["npy", "npz", "soup"][kind as usize]
}

fn fuzz(cases: u64) {
    let started = std::time::Instant::now();
    LARGEST.store(0, Relaxed);
    for seed in 0..cases {
        let outcome = std::panic::catch_unwind(|| run_case(seed));
        if outcome.is_err() {
            panic!("case {seed} panicked (rerun it with run_case({seed}))");
        }
    }
    let largest = LARGEST.load(Relaxed) as u64;
    eprintln!(
        "{cases} cases in {:.1} s; largest single allocation {largest} bytes (budget {BUDGET})",
        started.elapsed().as_secs_f64()
    );
    // The payload, and the f32s it decodes to, are each within the budget.
    assert!(
        largest <= BUDGET,
        "an allocation of {largest} bytes, over the {BUDGET}-byte budget"
    );
}

#[test]
fn fuzz_readers_briefly() {
    fuzz(5_000);
}

#[test]
#[ignore = "the long run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_readers_long() {
    fuzz(200_000);
}
