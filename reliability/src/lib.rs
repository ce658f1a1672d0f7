//! # safeckpt-reliability
//!
//! Campaigns that measure what safeckpt survives: crashes (SIGKILL at random instants during save
//! loops), injected faults (file-size limits, full and read-only filesystems, vanished
//! directories), corruption (random bit flips and byte overwrites), concurrency (a second writer,
//! readers during commits), the system-call order of a durable save, and hostile headers. Each
//! returns counts; `docs/reliability.md` records the long runs, and `tests/campaigns.rs` runs
//! short ones in CI and fails on any loss, damage, silent corruption or panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod concurrency;
pub mod content;
pub mod corrupt;
pub mod crash;
pub mod faults;
pub mod hostile;
pub mod powerloss;
pub mod syscalls;

/// A small deterministic generator (xorshift64*), so campaigns are reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Names in a directory, sorted.
pub fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether a name is a temporary left by a writer.
pub fn is_leftover(name: &str) -> bool {
    safeckpt_writer::atomic::is_temp_name(name) || (name.starts_with('.') && name.contains(".tmp"))
}
