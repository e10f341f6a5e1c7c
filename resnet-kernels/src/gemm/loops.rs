//! The five loops around the micro-kernel, generic over the kernel type (blocking, work split
//! and A packing shared with INT8 in [`crate::tiling`]).

use super::{ASource, Epilogue, MicroKernel, PackedB, TileEpilogue};
use crate::aligned::AlignedVec;
use crate::tiling::{SharedMut, WorkSplit};
use std::cell::RefCell;

thread_local! {
    /// Each worker's A-packing buffer, reused across calls (no allocation in steady state).
    static A_PACK: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
}

type SharedC = SharedMut<f32>;

pub(crate) fn gemm<K: MicroKernel>(
    a: &ASource<'_>,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue<'_>,
) {
    let (m, n) = (a.rows(), b.n);
    assert_eq!(b.kernel.info.nr, K::NR, "B was packed for another kernel");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
    a.check(b.k);
    if let Some(bias) = epi.bias {
        assert!(bias.len() >= n, "bias too short");
    }
    if let Some((r, ldr)) = epi.residual {
        assert!(
            ldr >= n && r.len() >= (m - 1) * ldr + n,
            "residual too small"
        );
    }

    // Loops 3 and 5 make the work items.
    let split = WorkSplit::new(m, n, K::MR, K::NR, b.blocking);
    let shared_c = SharedC::new(c.as_mut_ptr());
    split.for_each(|item| {
        let (m0, rows_in_block) = (item.m0, item.rows);
        let (j_begin, j_end) = (item.j_begin, item.j_end);
        A_PACK.with(|buf| {
            let mut a_pack = buf.borrow_mut();
            // Loop 4: K blocks. The first overwrites C, the others add to it, the last applies
            // the epilogue.
            for (bi, &(k0, kc, offset)) in b.blocks.iter().enumerate() {
                let accumulate = bi > 0;
                let last = bi + 1 == b.blocks.len();
                // A row-major A is read where it is (its rows at stride lda, e.g. Winograd's
                // transformed tiles); a convolution's im2col is packed (rows at stride kc).
                let (a_rows, lda) = match a {
                    ASource::Matrix { data, lda, .. } => (&data[m0 * lda + k0..], *lda),
                    ASource::Conv { .. } => {
                        a.pack(m0, rows_in_block, k0, kc, kc, K::MR, &mut a_pack);
                        (&a_pack[..], kc)
                    }
                };
                // Loop 2: NR-wide micro-panels of B.
                for j0 in (j_begin..j_end).step_by(K::NR) {
                    let cols = K::NR.min(n - j0);
                    let b_panel = &b.data[offset + (j0 / K::NR) * kc * K::NR..][..kc * K::NR];
                    // Loop 1: MR-row micro-panels of A.
                    for ir in 0..rows_in_block.div_ceil(K::MR) {
                        let i0 = m0 + ir * K::MR;
                        let rows = K::MR.min(m - i0);
                        let a_panel = &a_rows[ir * K::MR * lda..][..(rows - 1) * lda + kc];
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
                            // SAFETY: the kernel's ISA was checked when B was packed; A's `rows`
                            // rows of kc floats at stride lda and B's kc*NR floats are sliced
                            // above; C rows i0..i0+rows,
                            // columns j0..j0+NR lie inside c (checked on entry: j0+NR <= n) and
                            // belong to this work item only; bias and residual were checked to
                            // cover N columns and M rows.
                            unsafe {
                                K::run(
                                    rows,
                                    kc,
                                    (a_panel.as_ptr(), lda),
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
                                (a_panel, lda),
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
    (a_panel, lda): (&[f32], usize),
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
            tile[i * K::NR + j] = if t.accumulate {
                // SAFETY: (i0+i, j0+j) is inside C and inside this work item's tiles.
                unsafe { *c.add((t.i0 + i) * ldc + t.j0 + j) }
            } else {
                0.0
            };
        }
    }
    // SAFETY: the kernel's ISA was checked when B was packed; A holds t.rows rows of kc floats
    // at stride lda and B kc*NR floats; the scratch tile holds MR rows of NR floats.
    unsafe {
        K::run(
            t.rows,
            t.kc,
            (a_panel.as_ptr(), lda),
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
