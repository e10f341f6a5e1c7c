//! What the f32 and INT8 loop nests share: where A comes from ([`ASource`], packed per block),
//! the cache blocking ([`Blocking`]), the cutting of K into blocks ([`k_blocks`]), the work
//! items that threads take ([`WorkSplit`]) and the shared pointer to C they write through.
//!
//! The two block loops themselves stay in `gemm/loops.rs` and `int8/loops.rs`: they differ in
//! what a tile's epilogue is (f32 bias/residual/ReLU in place vs. `i32` partial sums in a scratch
//! buffer and a `u8` requantising store), which reads better as two loops than as one generic one.

use crate::aligned::{AlignedVec, Plain};
use crate::gemm::pack::Im2colCursor;
use crate::gemm::ConvGeometry;

/// Where the rows of A (`M x K`) come from, for elements of type `T` (`f32`, `u8`, ...).
#[derive(Clone, Copy, Debug)]
pub enum ASource<'a, T> {
    /// A row-major matrix with `rows` rows of at least K values, row stride `lda`.
    Matrix {
        /// The values.
        data: &'a [T],
        /// Number of rows (M).
        rows: usize,
        /// Row stride.
        lda: usize,
    },
    /// The implicit im2col of an NHWC input: packed straight from the input, never materialised.
    Conv {
        /// The NHWC input.
        input: &'a [T],
        /// Its geometry.
        geometry: ConvGeometry,
        /// The value outside the image: 0.0 for f32, the input's zero point (the code of 0.0)
        /// for `u8`.
        pad: T,
    },
}

impl<T: Plain + Default> ASource<'_, T> {
    /// Rows of A (the GEMM's M).
    pub fn rows(&self) -> usize {
        match self {
            ASource::Matrix { rows, .. } => *rows,
            ASource::Conv { geometry, .. } => geometry.m(),
        }
    }

    /// Panics unless A has at least K columns in every row (a bug in the caller).
    pub(crate) fn check(&self, k: usize) {
        let m = self.rows();
        match self {
            ASource::Matrix { data, lda, .. } => {
                assert!(*lda >= k && data.len() >= (m - 1) * lda + k, "A too small")
            }
            ASource::Conv {
                input, geometry, ..
            } => {
                assert_eq!(geometry.k(), k, "conv K differs from the packed weights");
                assert_eq!(input.len(), geometry.input_len(), "input size");
            }
        }
    }

    /// Copies rows `m0..m0+rows` x columns `k0..k0+kc` into `out`, row-major with row stride
    /// `stride >= kc` (the micro-kernels broadcast A values straight from these rows). For a
    /// convolution this is the im2col of the block, built from contiguous channel runs. The
    /// columns past `kc` and the rows up to the next multiple of `mr` are zero.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pack(
        &self,
        m0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
        stride: usize,
        mr: usize,
        out: &mut AlignedVec<T>,
    ) {
        // Every element of the first `rows` rows is written below, so only the rows past them
        // are zeroed (a memset of the whole block first would double the stores of packing).
        out.resize(rows.div_ceil(mr) * mr * stride, T::default());
        out[rows * stride..].fill(T::default());
        let mut cursor = match self {
            ASource::Conv { geometry, .. } => Some(Im2colCursor::new(geometry, m0, k0)),
            ASource::Matrix { .. } => None,
        };
        for (r, row) in out.chunks_exact_mut(stride).take(rows).enumerate() {
            match self {
                ASource::Matrix { data, lda, .. } => {
                    row[..kc].copy_from_slice(&data[(m0 + r) * lda + k0..][..kc])
                }
                // The whole row as destination: short runs may spill into the padding as whole
                // chunks, which is zeroed next.
                ASource::Conv {
                    input,
                    geometry,
                    pad,
                } => {
                    let at = cursor.as_mut().expect("a convolution has a cursor");
                    geometry.im2col_segment_at(input, at, kc, row, *pad);
                    at.next_row();
                }
            }
            row[kc..].fill(T::default());
        }
    }
}

/// The cache-blocking sizes of one packed GEMM operand, each named by the loop it cuts
/// (see the loop diagram in [`crate::gemm`]). Chosen when B is packed (`kc` shapes the packing)
/// and kept with it, so that a per-layer plan can pick them per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Blocking {
    /// Loop 4: K is cut into blocks of at most this many.
    pub kc: usize,
    /// Loop 3: rows of A packed at once (rounded to the kernel's MR).
    pub mc: usize,
    /// Loop 5: columns of C per work item (rounded to the kernel's NR).
    pub nc: usize,
}

/// Splits `k` into blocks of at most `kc_max` (a multiple of `align`), as even as possible, every
/// block but the last a multiple of `align`: `(k0, kc)` pairs.
pub(crate) fn k_blocks(k: usize, kc_max: usize, align: usize) -> Vec<(usize, usize)> {
    debug_assert!(kc_max.is_multiple_of(align) && kc_max >= align);
    let groups = k.div_ceil(align);
    let count = groups.div_ceil(kc_max / align).max(1);
    let (base, extra) = (groups / count, groups % count);
    let mut k0 = 0;
    (0..count)
        .map(|i| {
            let g = base + usize::from(i < extra);
            let kc = (align * g).min(k - k0);
            let block = (k0, kc);
            k0 += kc;
            block
        })
        .collect()
}

/// One work item: the rows `m0..m0 + rows` x the columns `j_begin..j_end` of C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WorkItem {
    pub m0: usize,
    pub rows: usize,
    pub j_begin: usize,
    pub j_end: usize,
}

/// Loops 3 and 5 as work items: row blocks of about MC rows (rounded to MR, split evenly) x
/// column chunks of NC (rounded to NR).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkSplit {
    m: usize,
    n: usize,
    mc: usize,
    nc: usize,
    m_blocks: usize,
    n_chunks: usize,
}

impl WorkSplit {
    pub fn new(m: usize, n: usize, mr: usize, nr: usize, blocking: Blocking) -> WorkSplit {
        let m_blocks = m.div_ceil(blocking.mc.max(1));
        let mc = m.div_ceil(m_blocks.max(1)).div_ceil(mr) * mr;
        let m_blocks = m.div_ceil(mc.max(1));
        let nc = blocking.nc.max(1).div_ceil(nr) * nr;
        let n_chunks = n.div_ceil(nc);
        WorkSplit {
            m,
            n,
            mc,
            nc,
            m_blocks,
            n_chunks,
        }
    }

    pub fn items(&self) -> usize {
        self.m_blocks * self.n_chunks
    }

    pub fn item(&self, index: usize) -> WorkItem {
        let (mb, nb) = (index / self.n_chunks, index % self.n_chunks);
        let m0 = mb * self.mc;
        WorkItem {
            m0,
            rows: self.mc.min(self.m - m0),
            j_begin: nb * self.nc,
            j_end: (nb * self.nc + self.nc).min(self.n),
        }
    }

    /// Runs `f` on every work item, in parallel on the [`crate::team`] (with the current rayon
    /// pool's thread count).
    pub fn for_each(&self, f: impl Fn(WorkItem) + Sync + Send) {
        crate::team::for_each(self.items(), |i| f(self.item(i)));
    }
}

/// A raw pointer to C that work items share; each item writes only its own tiles.
#[derive(Debug)]
pub(crate) struct SharedMut<T>(*mut T);
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: work items write disjoint tiles of C (disjoint row blocks x column chunks).
unsafe impl<T> Send for SharedMut<T> {}
// SAFETY: as above; no item reads another item's tiles.
unsafe impl<T> Sync for SharedMut<T> {}
impl<T> SharedMut<T> {
    pub fn new(p: *mut T) -> Self {
        SharedMut(p)
    }
    pub fn get(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_blocks_cover_k_aligned() {
        for align in [1, 4] {
            for k in 1..2000 {
                let blocks = k_blocks(k, 256, align);
                let mut next = 0;
                for (i, &(k0, kc)) in blocks.iter().enumerate() {
                    assert_eq!(k0, next);
                    assert!(kc <= 256 && kc > 0);
                    if i + 1 < blocks.len() {
                        assert!(kc.is_multiple_of(align));
                    }
                    next += kc;
                }
                assert_eq!(next, k, "k {k} align {align}");
            }
        }
    }

    #[test]
    fn work_items_tile_c_exactly_once() {
        let blocking = Blocking {
            kc: 256,
            mc: 144,
            nc: 256,
        };
        for (m, n, mr, nr) in [
            (49, 512, 12, 32),
            (3136, 64, 6, 16),
            (1, 1000, 4, 16),
            (200, 70, 12, 32),
        ] {
            let split = WorkSplit::new(m, n, mr, nr, blocking);
            let mut seen = vec![0u8; m * n];
            for i in 0..split.items() {
                let w = split.item(i);
                for r in w.m0..w.m0 + w.rows {
                    for c in w.j_begin..w.j_end {
                        seen[r * n + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{m}x{n}");
        }
    }
}
