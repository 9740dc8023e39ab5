//! The daemon-wide bound on memory for decoding (`daemon.max_in_flight_bytes`): every job
//! reserves what its input may take to decode before it reads it, and waits while the
//! reservations of the others leave no room, so `workers x ingest.max_bytes` can never add up
//! past the machine's memory.

use crate::ingest::FileKind;
use std::path::Path;
use std::sync::{Condvar, Mutex};

/// Bytes reserved by jobs being decoded, out of a fixed total.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    in_use: Mutex<u64>,
    freed: Condvar,
}

/// Room held for one input; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl MemoryBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> MemoryBudget {
        MemoryBudget {
            total,
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// `daemon.max_in_flight_bytes`, or when it is 0, `workers x max_bytes` capped at half of
    /// `memory` (the machine's, when known), never below one input's `max_bytes`.
    pub fn total(configured: u64, workers: usize, max_bytes: u64, memory: Option<u64>) -> u64 {
        if configured > 0 {
            return configured;
        }
        let wanted = max_bytes.saturating_mul(workers.max(1) as u64);
        memory
            .map_or(wanted, |memory| wanted.min(memory / 2))
            .max(max_bytes)
    }

    /// Bytes this budget holds.
    pub fn capacity(&self) -> u64 {
        self.total
    }

    /// Waits until `bytes` (at most the whole budget) are free, and holds them.
    pub fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let bytes = bytes.min(self.total);
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        while *in_use + bytes > self.total {
            in_use = self.freed.wait(in_use).unwrap_or_else(|e| e.into_inner());
        }
        *in_use += bytes;
        Reservation {
            budget: self,
            bytes,
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut in_use = self.budget.in_use.lock().unwrap_or_else(|e| e.into_inner());
        *in_use -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// What decoding `path` (of `len` bytes on disk) may take at most: a plain `.npy` decodes to
/// at most twice its size (float16 widened to float32); a compressed member or a many-video
/// file may take the whole per-input budget.
pub fn decode_bound(path: &Path, len: u64, max_bytes: u64) -> u64 {
    match FileKind::of(path) {
        Some(FileKind::Npy) => len.saturating_mul(2).min(max_bytes),
        _ => max_bytes,
    }
}

/// The machine's memory (`MemTotal`), when `/proc/meminfo` tells it.
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_automatic_total_fits_the_machine() {
        const GIB: u64 = 1 << 30;
        assert_eq!(MemoryBudget::total(5 * GIB, 8, GIB, Some(2 * GIB)), 5 * GIB);
        assert_eq!(MemoryBudget::total(0, 4, GIB, Some(64 * GIB)), 4 * GIB);
        assert_eq!(MemoryBudget::total(0, 32, GIB, Some(24 * GIB)), 12 * GIB);
        assert_eq!(MemoryBudget::total(0, 8, GIB, Some(GIB)), GIB);
        assert_eq!(MemoryBudget::total(0, 3, GIB, None), 3 * GIB);
    }

    #[test]
    fn reservations_never_exceed_the_budget() {
        let budget = MemoryBudget::new(100);
        let peak = AtomicU64::new(0);
        let held = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for i in 0..8u64 {
                let (budget, peak, held) = (&budget, &peak, &held);
                scope.spawn(move || {
                    for _ in 0..50 {
                        let bytes = 30 + i * 5;
                        let _room = budget.reserve(bytes);
                        let now = held.fetch_add(bytes, Ordering::SeqCst) + bytes;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        held.fetch_sub(bytes, Ordering::SeqCst);
                    }
                });
            }
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 100, "{peak} bytes held at once");
        assert!(peak >= 60, "two inputs fit together: {peak}");
        drop(budget.reserve(1_000));
    }

    #[test]
    fn a_plain_npy_reserves_what_its_size_allows() {
        assert_eq!(decode_bound(Path::new("a.npy"), 10, 1_000), 20);
        assert_eq!(decode_bound(Path::new("a.npy"), 900, 1_000), 1_000);
        assert_eq!(decode_bound(Path::new("a.npz"), 10, 1_000), 1_000);
        assert_eq!(decode_bound(Path::new("a.h5"), 10, 1_000), 1_000);
    }
}
