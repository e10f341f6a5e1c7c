//! The seeded generator of the kernel batteries (xorshift64), so a failure reproduces from its
//! seed. One stream type for every family's tests.

/// A seeded xorshift64 stream.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Bytes over the whole `u8` range.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }

    /// Weights over the whole `i8` range (every INT8 kernel is exact for all of them).
    pub(crate) fn weights(&mut self, len: usize) -> Vec<i8> {
        (0..len).map(|_| (self.next() >> 32) as u8 as i8).collect()
    }

    /// A value in [0, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `len` values in [-1, 1).
    pub(crate) fn signed_units(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    }
}
