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

/// The part of B that a work item reads in its next K block (its panels, contiguous in the
/// packing), fetched into L2 while the current block runs: an equal share of cache lines
/// (`prefetcht1`) before each micro-kernel call of the block.
///
/// Why, for the AMX lines (whose kernels set `FETCHES_NEXT_B_BLOCK`): a packed layer's K blocks
/// of B come from L3 one after the other (batch 8's layer4: 256 KB of bf16 per block of 256,
/// 18 blocks, 4.7 MB per convolution), the hardware prefetchers start on a block only once its
/// first tile loads miss, and nothing else runs beside the tile unit's loads while they wait.
/// With the next block already in L2, batch 8 on the Xeon model 167 (2 threads, 2026-12-07,
/// interleaved runs): bf16 layer4.1 5-8% faster, the network 2.1% (int8: layer4.0 5%, the
/// network 1.4%; `benches/results/2026-12-07-xeon-167/ab-next-b-block.txt`). A C model of the
/// loop (layer4's shapes, both cores) ran 101-106 -> 92-99 cycles per tile step. The f32
/// AVX-512 line showed no clear gain in the criterion shapes (the 196-row ones slower, a noisy
/// host), so it does not fetch.
pub(crate) struct NextBlockFetch {
    at: *const u8,
    end: *const u8,
    /// Bytes per call (whole cache lines).
    per_call: usize,
}

impl NextBlockFetch {
    /// Nothing to fetch (the last K block, or a kernel that does not fetch).
    pub(crate) const NONE: NextBlockFetch = NextBlockFetch {
        at: std::ptr::null(),
        end: std::ptr::null(),
        per_call: 0,
    };

    /// `next` (the item's panels of the next K block) in equal shares over `calls` calls.
    pub(crate) fn new<T>(next: &[T], calls: usize) -> NextBlockFetch {
        const LINE: usize = 64;
        let bytes = std::mem::size_of_val(next);
        let lines = bytes.div_ceil(LINE).div_ceil(calls.max(1));
        let at = next.as_ptr().cast::<u8>();
        NextBlockFetch {
            at,
            end: at.wrapping_add(bytes),
            per_call: lines * LINE,
        }
    }

    /// For the `calls` micro-kernel calls of a work item's K block: the item's panels
    /// (columns `j_begin..j_end`, `nr` wide) of the next block, which starts at `next.0` in
    /// `data` with `next.1` values per panel; `None` (the last block, or a kernel that does
    /// not fetch): nothing.
    pub(crate) fn for_item<T>(
        data: &[T],
        next: Option<(usize, usize)>,
        nr: usize,
        (j_begin, j_end): (usize, usize),
        calls: usize,
    ) -> NextBlockFetch {
        match next {
            Some((offset, panel)) => {
                let panels = (j_end - j_begin).div_ceil(nr);
                let at = offset + (j_begin / nr) * panel;
                NextBlockFetch::new(&data[at..][..panels * panel], calls)
            }
            None => NextBlockFetch::NONE,
        }
    }

    /// The byte range call `call` fetches (empty past the end).
    fn share(&self, call: usize) -> (*const u8, *const u8) {
        let start = (self.at as usize).saturating_add(call.saturating_mul(self.per_call));
        let end = start.saturating_add(self.per_call).min(self.end as usize);
        let start = start.min(end);
        (
            self.at.wrapping_add(start - self.at as usize),
            self.at.wrapping_add(end - self.at as usize),
        )
    }

    /// Fetches call `call`'s share into L2.
    #[inline]
    pub(crate) fn fetch(&self, call: usize) {
        let (mut p, end) = self.share(call);
        while p < end {
            prefetch_l2(p);
            p = p.wrapping_add(64);
        }
    }
}

/// Asks for the cache line at `p` in L2 (a hint: nothing where the CPU has no such hint).
#[inline]
fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no architectural state, wherever it points;
    // the callers point inside B's packed panels anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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

    /// The shares of [`NextBlockFetch`] cover the next block's bytes exactly once, whole lines
    /// each, for even and uneven splits; `NONE` fetches nothing.
    #[test]
    fn next_block_shares_cover_the_block_once() {
        let data = vec![0u16; 40_000];
        for (len, calls) in [(16_384, 112), (8_192, 13), (100, 7), (1, 1), (20_000, 3)] {
            let next = &data[1000..1000 + len];
            let f = NextBlockFetch::new(next, calls);
            let mut covered = 0;
            let mut expected_at = next.as_ptr() as usize;
            for call in 0..calls + 2 {
                let (a, b) = f.share(call);
                let (a, b) = (a as usize, b as usize);
                if a == b {
                    continue;
                }
                assert_eq!(a, expected_at, "shares follow each other");
                assert!(
                    (a - next.as_ptr() as usize).is_multiple_of(64),
                    "a share starts on a whole line from the block"
                );
                covered += b - a;
                expected_at = b;
            }
            assert_eq!(
                covered,
                std::mem::size_of_val(next),
                "{len} values, {calls} calls"
            );
        }
        let (a, b) = NextBlockFetch::NONE.share(3);
        assert!(a == b, "NONE fetches nothing");
    }

    /// [`NextBlockFetch::for_item`] fetches the item's panels of the next block: the ones of its
    /// columns, no more.
    #[test]
    fn next_block_fetch_takes_the_items_panels() {
        let data = vec![0u16; 1000];
        // Next block at 400, 50 values per 32-column panel; the item's columns 64..160 are its
        // panels 2, 3 and 4 (the last one partly padding): values 500..650.
        let f = NextBlockFetch::for_item(&data, Some((400, 50)), 32, (64, 160), 4);
        let first = f.share(0).0 as usize;
        let last = f.share(3).1 as usize;
        let base = data.as_ptr() as usize;
        assert_eq!((first - base, last - base), (500 * 2, 650 * 2));
        let none = NextBlockFetch::for_item(&data, None, 32, (64, 160), 4);
        let (a, b) = none.share(0);
        assert!(a == b, "no next block: nothing fetched");
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
