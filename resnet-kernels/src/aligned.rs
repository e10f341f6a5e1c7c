//! [`AlignedVec`]: a growable buffer whose first element sits on a 64-byte boundary, for
//! everything the micro-kernels read in whole cache lines (packed weights, packed A blocks,
//! padded activations).
//!
//! Why: the allocator gives `Vec<u8>` or `Vec<f32>` 16-byte alignment, so a 64-byte row starts
//! 16 bytes into a cache line and every load of it touches two lines. For AMX that is the
//! difference between a tile load every 5 ns and one every 15 ns: on the Sapphire Rapids of
//! docs/bf16-amx.md the 2 x 2 tile micro-kernel ran 2.9x faster on the same L1-resident data
//! once its rows were aligned. The packings keep every row offset a multiple of 64 bytes, so
//! aligning the base is enough.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// The alignment, in bytes: one cache line, one AVX-512 register, one AMX tile row.
pub const ALIGN: usize = 64;

/// One cache line of storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; ALIGN]);

const ZERO_LINE: Line = Line([0; ALIGN]);

/// Element types an [`AlignedVec`] may hold.
///
/// # Safety
/// Every bit pattern, all-zero included, is a valid value; the size divides 64 and the
/// alignment is at most 64; no padding bytes (so the buffer's bytes may be reinterpreted).
pub unsafe trait Plain: Copy + 'static {}
// SAFETY: primitive integers and floats: any bits are a value, sizes 1-4, no padding.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for f32 {}
// SAFETY: `Bf16` is `repr(transparent)` over `u16`.
unsafe impl Plain for crate::bf16::Bf16 {}

/// A `Vec`-like buffer of `T` starting on a 64-byte boundary (storage in whole cache lines).
pub struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    const PER_LINE: usize = {
        assert!(std::mem::size_of::<T>() > 0 && ALIGN.is_multiple_of(std::mem::size_of::<T>()));
        assert!(std::mem::align_of::<T>() <= ALIGN);
        ALIGN / std::mem::size_of::<T>()
    };

    /// An empty buffer (no allocation).
    pub const fn new() -> AlignedVec<T> {
        AlignedVec {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }

    /// An empty buffer with room for `capacity` values.
    pub fn with_capacity(capacity: usize) -> AlignedVec<T> {
        AlignedVec {
            lines: Vec::with_capacity(capacity.div_ceil(Self::PER_LINE)),
            len: 0,
            _t: PhantomData,
        }
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[T]) -> AlignedVec<T> {
        let mut v = AlignedVec::with_capacity(values.len());
        v.extend_from_slice(values);
        v
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `len` values (whole lines, zero bytes past the old end).
    fn grow_to(&mut self, len: usize) {
        let lines = len.div_ceil(Self::PER_LINE);
        if lines > self.lines.len() {
            self.lines.resize(lines, ZERO_LINE);
        }
    }

    /// The values' bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Plain` types have no padding, so every byte of the values is initialised;
        // the length in bytes is the values' length times their size.
        unsafe {
            std::slice::from_raw_parts(
                self.lines.as_ptr().cast::<u8>(),
                self.len * std::mem::size_of::<T>(),
            )
        }
    }

    /// Sets the length to `len`, writing `value` into every new slot.
    pub fn resize(&mut self, len: usize, value: T) {
        let old = self.len;
        self.grow_to(len);
        self.len = len;
        if len > old {
            self[old..].fill(value);
        }
    }

    /// Sets the length to `len` without writing the new slots, for a buffer the caller
    /// overwrites whole (an activation a layer writes every element of). The storage is
    /// always initialised, so the new slots hold zero or values from an earlier use, never
    /// undefined bytes. A forward pass reuses its buffers at sizes that go up and down from
    /// layer to layer; filling each growth would write the stem's output once more (12.8 MB of
    /// bf16 at batch 8) on every pass.
    pub fn resize_for_overwrite(&mut self, len: usize) {
        self.grow_to(len);
        self.len = len;
    }

    /// Shortens to `len` values (keeps the storage); no effect when already shorter.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends one value.
    pub fn push(&mut self, value: T) {
        let at = self.len;
        self.grow_to(at + 1);
        self.len = at + 1;
        self[at] = value;
    }

    /// Appends `values`.
    pub fn extend_from_slice(&mut self, values: &[T]) {
        let at = self.len;
        self.grow_to(at + values.len());
        self.len = at + values.len();
        self[at..].copy_from_slice(values);
    }
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        AlignedVec::new()
    }
}

impl<T: Plain> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len` values' bytes (grow_to before every length
        // change), each initialised (zero lines, then writes of `T`), and `Plain` makes any
        // bytes a valid `T`; the base is 64-byte aligned, enough for `T`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<'a, T: Plain> IntoIterator for &'a AlignedVec<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Plain> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        AlignedVec {
            lines: self.lines.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Plain + PartialEq> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_aligned<T>(s: &[T]) -> bool {
        (s.as_ptr() as usize).is_multiple_of(ALIGN)
    }

    #[test]
    fn behaves_as_a_vec_and_stays_aligned() {
        let mut a = AlignedVec::<f32>::new();
        let mut v = Vec::<f32>::new();
        assert!(a.is_empty());
        for i in 0..100 {
            a.push(i as f32);
            v.push(i as f32);
            assert!(is_aligned(&a));
        }
        a.extend_from_slice(&[7.0; 37]);
        v.extend_from_slice(&[7.0; 37]);
        a.resize(300, -1.0);
        v.resize(300, -1.0);
        assert_eq!(&a[..], &v[..]);
        a.truncate(5);
        v.truncate(5);
        a.resize(20, 2.5);
        v.resize(20, 2.5);
        assert_eq!(
            &a[..],
            &v[..],
            "values past a truncation are rewritten on growth"
        );
        assert!(is_aligned(&a));
        let b = a.clone();
        assert!(is_aligned(&b));
        assert_eq!(a, b);
        assert_eq!(AlignedVec::from_slice(&v[..]), a);
    }

    #[test]
    fn resize_for_overwrite_keeps_what_the_storage_held() {
        let mut a = AlignedVec::<f32>::new();
        a.resize_for_overwrite(40);
        assert!(a.iter().all(|&x| x == 0.0), "fresh storage is zero");
        a.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        a.truncate(3);
        a.resize_for_overwrite(40);
        let expected: Vec<f32> = (0..40).map(|i| i as f32).collect();
        assert_eq!(&a[..], &expected[..], "no slot was written");
        a.resize_for_overwrite(1000);
        assert_eq!(a.len(), 1000);
        assert!(is_aligned(&a));
        assert!(a[40..].iter().all(|&x| x == 0.0), "grown storage is zero");
    }

    #[test]
    fn byte_elements_fill_whole_lines() {
        let mut a = AlignedVec::<u8>::new();
        a.resize(65, 3);
        assert_eq!(a.len(), 65);
        assert!(a.iter().all(|&x| x == 3));
        a.truncate(1);
        assert_eq!(&a[..], &[3]);
        assert!(is_aligned(&a));
    }

    #[test]
    fn packed_weights_of_every_family_start_on_a_line() {
        use crate::cpu::Isa;
        let (k, n) = (147, 64);
        for isa in Isa::supported() {
            let f = crate::gemm::PackedB::new(&vec![0.5; k * n], k, n, isa);
            assert!(is_aligned(&f.data), "f32 {isa}");
            let i = crate::int8::PackedB8::new(&vec![3; k * n], k, n, isa);
            assert!(is_aligned(&i.data), "int8 {isa}");
            let b = crate::bf16::PackedBBf16::new(&vec![crate::bf16::Bf16::ZERO; k * n], k, n, isa);
            assert!(is_aligned(&b.data), "bf16 {isa}");
        }
    }
}
