//! Random identifiers (branches, tags, Call-IDs) from an injected source of
//! randomness: machines take an [`Entropy`], the daemon gives them
//! [`OsEntropy`], tests give them [`SeededEntropy`].

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use super::transaction::MAGIC_COOKIE;

/// A source of random 64-bit words.
pub trait Entropy: Send + fmt::Debug {
    /// The next word.
    fn next_u64(&mut self) -> u64;
}

/// Unpredictable words: SipHash-1-3, keyed from the OS at creation, of a
/// counter (a keyed PRF, so outputs reveal neither key nor later outputs).
pub struct OsEntropy {
    key: RandomState,
    counter: u64,
}

impl OsEntropy {
    /// A new source keyed by the operating system.
    pub fn new() -> Self {
        Self {
            key: RandomState::new(),
            counter: 0,
        }
    }
}

impl Default for OsEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for OsEntropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OsEntropy")
    }
}

impl Entropy for OsEntropy {
    fn next_u64(&mut self) -> u64 {
        self.counter = self.counter.wrapping_add(1);
        let mut h = self.key.build_hasher();
        h.write_u64(self.counter);
        h.finish()
    }
}

/// Reproducible words (SplitMix64) for tests and simulations.
#[derive(Debug, Clone)]
pub struct SeededEntropy(u64);

impl SeededEntropy {
    /// A source starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Entropy for SeededEntropy {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 unpredictable bits from the OS, for the edges of the program (the
/// CLI's one-shot commands); machines use their injected [`Entropy`].
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A token of 16 lower-case hex digits.
pub fn token_from(rng: &mut dyn Entropy) -> String {
    format!("{:016x}", rng.next_u64())
}

/// A new RFC 3261 branch (`z9hG4bK` + 16 hex digits).
pub fn branch_from(rng: &mut dyn Entropy) -> String {
    format!("{MAGIC_COOKIE}{:016x}", rng.next_u64())
}

/// A new Call-ID, unique per host.
pub fn call_id_from(rng: &mut dyn Entropy, host: &str) -> String {
    format!("{:016x}{:016x}@{host}", rng.next_u64(), rng.next_u64())
}

/// A token from OS randomness (edges only).
pub fn token() -> String {
    format!("{:016x}", random_u64())
}

/// A Call-ID from OS randomness (edges only).
pub fn call_id(host: &str) -> String {
    format!("{}{}@{host}", token(), token())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_well_formed() {
        let mut rng = OsEntropy::new();
        let a = branch_from(&mut rng);
        let b = branch_from(&mut rng);
        assert_ne!(a, b);
        assert!(a.starts_with("z9hG4bK") && a.len() == 23);
        assert!(call_id_from(&mut rng, "h").ends_with("@h"));
    }

    #[test]
    fn seeded_entropy_is_reproducible() {
        let mut a = SeededEntropy::new(7);
        let mut b = SeededEntropy::new(7);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }
}
