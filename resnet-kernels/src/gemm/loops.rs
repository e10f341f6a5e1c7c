//! The five loops around the micro-kernel, generic over the kernel type.

use super::{blocking, ConvGeometry, Epilogue, MicroKernel, PackedB, TileEpilogue};
use rayon::prelude::*;
use std::cell::RefCell;

/// Where the rows of A come from.
#[derive(Clone, Copy, Debug)]
pub enum ASource<'a> {
    /// A row-major matrix with `rows` rows of at least K floats, row stride `lda`.
    Matrix {
        /// The values.
        data: &'a [f32],
        /// Number of rows (M).
        rows: usize,
        /// Row stride.
        lda: usize,
    },
    /// The implicit im2col of an NHWC input: packed straight from the input, never materialised.
    Conv {
        /// The NHWC input.
        input: &'a [f32],
        /// Its geometry.
        geometry: ConvGeometry,
    },
}

impl ASource<'_> {
    fn rows(&self) -> usize {
        match self {
            ASource::Matrix { rows, .. } => *rows,
            ASource::Conv { geometry, .. } => geometry.m(),
        }
    }

    /// Copies rows `m0..m0+rows` x columns `k0..k0+kc` into `out`, row-major with row stride
    /// `kc` (the micro-kernels broadcast A values straight from these rows). For a convolution
    /// this is the im2col of the block, built from contiguous channel runs; rows up to the next
    /// multiple of MR are zero.
    fn pack(&self, m0: usize, rows: usize, k0: usize, kc: usize, mr: usize, out: &mut Vec<f32>) {
        // Every row below is written in full, so only the rows past `rows` are zeroed (a memset
        // of the whole block first would double the stores of packing).
        out.resize(rows.div_ceil(mr) * mr * kc, 0.0);
        out[rows * kc..].fill(0.0);
        for (r, dst) in out.chunks_exact_mut(kc).take(rows).enumerate() {
            match self {
                ASource::Matrix { data, lda, .. } => {
                    dst.copy_from_slice(&data[(m0 + r) * lda + k0..][..kc])
                }
                ASource::Conv { input, geometry } => {
                    geometry.im2col_row_segment(input, m0 + r, k0, dst)
                }
            }
        }
    }
}

thread_local! {
    /// Each worker's A-packing buffer, reused across calls (no allocation in steady state).
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A raw pointer to C that work items share; each item writes only its own tiles.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: work items write disjoint tiles of C (disjoint row blocks x column chunks).
unsafe impl Send for SharedC {}
// SAFETY: as above; no item reads another item's tiles.
unsafe impl Sync for SharedC {}
impl SharedC {
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub(crate) fn gemm<K: MicroKernel>(
    a: &ASource<'_>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) {
    let (m, n) = (a.rows(), b.n);
    assert_eq!(b.nr, K::NR, "B was packed for another kernel");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
    match a {
        ASource::Matrix { data, lda, .. } => {
            assert!(
                *lda >= b.k && data.len() >= (m - 1) * lda + b.k,
                "A too small"
            )
        }
        ASource::Conv { input, geometry } => {
            assert_eq!(geometry.k(), b.k, "conv K differs from the packed weights");
            assert_eq!(input.len(), geometry.input_len(), "input size");
        }
    }
    if let Some(bias) = epi.bias {
        assert!(bias.len() >= n, "bias too short");
    }
    if let Some((r, ldr)) = epi.residual {
        assert!(
            ldr >= n && r.len() >= (m - 1) * ldr + n,
            "residual too small"
        );
    }

    // Loop 3 and 5 make the work items: row blocks of about MC rows (rounded to MR, split evenly)
    // x column chunks of NC.
    let m_blocks = m.div_ceil(blocking::MC);
    let mc = m.div_ceil(m_blocks).div_ceil(K::MR) * K::MR;
    let m_blocks = m.div_ceil(mc);
    let nc = blocking::NC.div_ceil(K::NR) * K::NR;
    let n_chunks = n.div_ceil(nc);
    let shared_c = SharedC(c.as_mut_ptr());
    (0..m_blocks * n_chunks).into_par_iter().for_each(|item| {
        let (mb, nb) = (item / n_chunks, item % n_chunks);
        let m0 = mb * mc;
        let rows_in_block = mc.min(m - m0);
        let (j_begin, j_end) = (nb * nc, (nb * nc + nc).min(n));
        A_PACK.with(|buf| {
            let mut a_pack = buf.borrow_mut();
            // Loop 4: K blocks. The first overwrites C, the others add to it, the last applies
            // the epilogue.
            for (bi, &(k0, kc, offset)) in b.blocks.iter().enumerate() {
                let accumulate = bi > 0;
                let last = bi + 1 == b.blocks.len();
                a.pack(m0, rows_in_block, k0, kc, K::MR, &mut a_pack);
                // Loop 2: NR-wide micro-panels of B.
                for j0 in (j_begin..j_end).step_by(K::NR) {
                    let cols = K::NR.min(n - j0);
                    let b_panel = &b.data[offset + (j0 / K::NR) * kc * K::NR..][..kc * K::NR];
                    // Loop 1: MR-row micro-panels of A.
                    for ir in 0..rows_in_block.div_ceil(K::MR) {
                        let i0 = m0 + ir * K::MR;
                        let rows = K::MR.min(m - i0);
                        let a_panel = &a_pack[ir * kc * K::MR..][..kc * K::MR];
                        if cols == K::NR {
                            let tile_epi = last.then(|| TileEpilogue {
                                bias: epi
                                    .bias
                                    .map_or(std::ptr::null(), |bias| bias[j0..].as_ptr()),
                                residual: epi.residual.map_or(std::ptr::null(), |(r, ldr)| {
                                    r[i0 * ldr + j0..].as_ptr()
                                }),
                                ldr: epi.residual.map_or(0, |(_, ldr)| ldr),
                                relu: epi.relu,
                            });
                            // SAFETY: the kernel's ISA was checked when B was packed; the panels
                            // hold kc*MR and kc*NR floats (sliced above); C rows i0..i0+rows,
                            // columns j0..j0+NR lie inside c (checked on entry: j0+NR <= n) and
                            // belong to this work item only; bias and residual were checked to
                            // cover N columns and M rows.
                            unsafe {
                                K::run(
                                    rows,
                                    kc,
                                    a_panel.as_ptr(),
                                    b_panel.as_ptr(),
                                    shared_c.get().add(i0 * ldc + j0),
                                    ldc,
                                    accumulate,
                                    tile_epi.as_ref(),
                                )
                            }
                        } else {
                            edge_tile::<K>(
                                EdgeTile {
                                    i0,
                                    j0,
                                    rows,
                                    cols,
                                    kc,
                                    accumulate,
                                    last,
                                },
                                a_panel,
                                b_panel,
                                shared_c,
                                ldc,
                                epi,
                            );
                        }
                    }
                }
            }
        });
    });
}

struct EdgeTile {
    i0: usize,
    j0: usize,
    rows: usize,
    cols: usize,
    kc: usize,
    accumulate: bool,
    last: bool,
}

/// A tile narrower than NR (only where N is not a multiple of NR, e.g. the 1000 classes of the
/// classifier): computed into a full-width scratch tile, then copied with a scalar epilogue.
fn edge_tile<K: MicroKernel>(
    t: EdgeTile,
    a_panel: &[f32],
    b_panel: &[f32],
    c: SharedC,
    ldc: usize,
    epi: &Epilogue<'_>,
) {
    let mut tile = [0.0f32; 16 * 64];
    assert!(K::MR * K::NR <= tile.len());
    let c = c.get();
    for i in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: (i0+i, j0+j) is inside C and inside this work item's tiles.
            tile[i * K::NR + j] = if t.accumulate {
                unsafe { *c.add((t.i0 + i) * ldc + t.j0 + j) }
            } else {
                0.0
            };
        }
    }
    // SAFETY: the kernel's ISA was checked when B was packed; the panels hold kc*MR and kc*NR
    // floats; the scratch tile holds MR rows of NR floats with stride NR.
    unsafe {
        K::run(
            t.rows,
            t.kc,
            a_panel.as_ptr(),
            b_panel.as_ptr(),
            tile.as_mut_ptr(),
            K::NR,
            t.accumulate,
            None,
        )
    };
    for i in 0..t.rows {
        for j in 0..t.cols {
            let (row, col) = (t.i0 + i, t.j0 + j);
            let mut v = tile[i * K::NR + j];
            if t.last {
                if let Some(bias) = epi.bias {
                    v += bias[col];
                }
                if let Some((r, ldr)) = epi.residual {
                    v += r[row * ldr + col];
                }
                if epi.relu {
                    v = v.max(0.0);
                }
            }
            // SAFETY: (row, col) is inside C and inside this work item's tiles.
            unsafe { *c.add(row * ldc + col) = v };
        }
    }
}
