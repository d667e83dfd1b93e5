//! Random identifiers: branches, tags, Call-IDs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use super::transaction::MAGIC_COOKIE;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 unpredictable bits: a randomly keyed SipHash of a process counter.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A token of 16 lower-case hex digits.
pub fn token() -> String {
    format!("{:016x}", random_u64())
}

/// A new RFC 3261 branch (`z9hG4bK` + 16 hex digits).
pub fn branch() -> String {
    format!("{MAGIC_COOKIE}{}", token())
}

/// A new Call-ID, unique per host.
pub fn call_id(host: &str) -> String {
    format!("{}{}@{host}", token(), token())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_well_formed() {
        let a = branch();
        let b = branch();
        assert_ne!(a, b);
        assert!(a.starts_with("z9hG4bK") && a.len() == 23);
        assert!(call_id("h").ends_with("@h"));
    }
}
