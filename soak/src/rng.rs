//! The soak's only source of randomness: SplitMix64 from the seed, so that
//! the same seed replays the same schedule of steps and faults.

pub use ferry_lab::rng::Rng;

/// A seed when none was given: from the kernel's random source.
pub fn fresh_seed() -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes) % 1_000_000_000,
        Err(_) => std::process::id() as u64,
    }
}
