//! The five loops around the INT8 micro-kernel, generic over the kernel type. Blocking, work
//! split and A packing are shared with f32 ([`crate::tiling`]); what differs from
//! `gemm/loops.rs` is the epilogue: with several K blocks the `i32` partial sums of a work item
//! live in a per-thread scratch buffer, and the last block requantises them to `u8`.

use super::{ASource8, MicroKernel8, Output8, PackedB8, Requant, TileRequant};
use crate::aligned::AlignedVec;
use crate::tiling::{NextBlockFetch, SharedMut, WorkSplit};
use std::cell::RefCell;

thread_local! {
    /// Each worker's A-packing buffer, reused across calls.
    static A_PACK8: RefCell<AlignedVec<u8>> = const { RefCell::new(AlignedVec::new()) };
    /// Each worker's `i32` partial sums when K takes several blocks and C is `u8`.
    static ACC8: RefCell<AlignedVec<i32>> = const { RefCell::new(AlignedVec::new()) };
}

type Shared<T> = SharedMut<T>;

#[derive(Clone, Copy)]
enum Dst<'r> {
    I32(Shared<i32>, usize),
    U8(Shared<u8>, usize, &'r Requant<'r>),
}

/// The tile epilogue at `(i0, j0)` of C, its output row `i0` stored at row `c_row` of `c` (the
/// same, or where a frame puts it).
pub(crate) fn tile_requant(
    req: &Requant<'_>,
    (c, ldc, c_row): (Shared<u8>, usize, usize),
    i0: usize,
    j0: usize,
) -> TileRequant {
    let zp = req.zero_point as i32;
    TileRequant {
        bias: req.bias[j0..].as_ptr(),
        scale: req.scale[j0..].as_ptr(),
        residual: req.residual.map_or(std::ptr::null(), |r| {
            let row = r.frame.map_or(i0, |f| f.row(i0));
            r.data[row * r.ld + j0..].as_ptr()
        }),
        ldr: req.residual.map_or(0, |r| r.ld),
        res_zero_point: req.residual.map_or(0, |r| r.zero_point),
        res_scale: req.residual.map_or(0.0, |r| r.scale),
        zero_point: zp,
        lo: if req.relu { 0.0 } else { -(zp as f32) },
        hi: (255 - zp) as f32,
        // SAFETY (of the later writes through this pointer): (i0, j0) is inside C, checked on entry.
        c: c.get().wrapping_add(c_row * ldc + j0),
        ldc,
    }
}

pub(crate) fn gemm<K: MicroKernel8>(a: &ASource8<'_>, b: &PackedB8, out: Output8<'_>) {
    let (m, n) = (a.rows(), b.n);
    assert_eq!(b.kernel.info.nr, K::NR, "B was packed for another kernel");
    if m == 0 || n == 0 {
        return;
    }
    a.check(b.k);
    match out {
        Output8::I32 { c, ldc } => {
            assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
            gemm_dst::<K>(a, b, m, n, Dst::I32(Shared::new(c.as_mut_ptr()), ldc))
        }
        Output8::U8 { c, ldc, requant } => {
            requant.check_output(c, ldc, m, n);
            gemm_dst::<K>(
                a,
                b,
                m,
                n,
                Dst::U8(Shared::new(c.as_mut_ptr()), ldc, &requant),
            )
        }
    }
}

fn gemm_dst<K: MicroKernel8>(a: &ASource8<'_>, b: &PackedB8, m: usize, n: usize, dst: Dst<'_>) {
    // Loops 3 and 5 make the work items.
    let split = WorkSplit::new(m, n, K::MR, K::NR, b.blocking);
    let multi = b.blocks.len() > 1;
    split.for_each(|item| {
        let (m0, rows_in_block) = (item.m0, item.rows);
        let (j_begin, j_end) = (item.j_begin, item.j_end);
        // Partial sums of this item for a u8 C: rows_in_block x (columns rounded up to NR).
        let ld_scratch = (j_end - j_begin).div_ceil(K::NR) * K::NR;
        A_PACK8.with(|abuf| {
            ACC8.with(|sbuf| {
                let mut a_pack = abuf.borrow_mut();
                let mut scratch = sbuf.borrow_mut();
                if multi && matches!(dst, Dst::U8(..)) {
                    // The first K block overwrites every sum it later reads: grow, never clear.
                    let len = rows_in_block.div_ceil(K::MR) * K::MR * ld_scratch;
                    if scratch.len() < len {
                        scratch.resize(len, 0);
                    }
                }
                // Loop 4: K blocks. The first overwrites the sums, the others add to them, the
                // last applies the epilogue.
                for (bi, &(k0, kc, offset)) in b.blocks.iter().enumerate() {
                    let kc4 = kc.div_ceil(K::K_ALIGN) * K::K_ALIGN;
                    let accumulate = bi > 0;
                    let last = bi + 1 == b.blocks.len();
                    a.pack(m0, rows_in_block, k0, kc, kc4, K::MR, &mut a_pack);
                    let blocks_i = rows_in_block.div_ceil(K::MR);
                    let next = (b.blocks.get(bi + 1))
                        .filter(|_| K::FETCHES_NEXT_B_BLOCK)
                        .map(|&(_, kc_next, offset_next)| {
                            let kc4_next = kc_next.div_ceil(K::K_ALIGN) * K::K_ALIGN;
                            (offset_next, kc4_next * K::NR * K::B_PARTS)
                        });
                    let calls = (j_end - j_begin).div_ceil(K::NR) * blocks_i;
                    let fetch =
                        NextBlockFetch::for_item(&b.data, next, K::NR, (j_begin, j_end), calls);
                    // Loop 2: NR-wide micro-panels of B.
                    for (jb, j0) in (j_begin..j_end).step_by(K::NR).enumerate() {
                        let cols = K::NR.min(n - j0);
                        let panel = kc4 * K::NR * K::B_PARTS;
                        let b_panel = &b.data[offset + (j0 / K::NR) * panel..][..panel];
                        // Loop 1: MR-row micro-panels of A.
                        for ir in 0..blocks_i {
                            fetch.fetch(jb * blocks_i + ir);
                            let i0 = m0 + ir * K::MR;
                            let rows = K::MR.min(m - i0);
                            let a_panel = &a_pack[ir * kc4 * K::MR..][..kc4 * K::MR];
                            let scratch_at = (i0 - m0) * ld_scratch + (j0 - j_begin);
                            let tile = Tile {
                                rows,
                                cols,
                                kc4,
                                accumulate,
                                last,
                                a: a_panel,
                                b: b_panel,
                            };
                            match dst {
                                Dst::I32(c, ldc) => {
                                    if cols == K::NR {
                                        // SAFETY: the kernel's ISA was checked when B was packed;
                                        // the panels hold kc4*MR and kc4*NR bytes (sliced above);
                                        // C rows i0..i0+rows, columns j0..j0+NR lie inside c
                                        // (checked on entry) and belong to this work item only.
                                        unsafe {
                                            K::run(
                                                rows,
                                                kc4,
                                                a_panel.as_ptr(),
                                                b_panel.as_ptr(),
                                                c.get().add(i0 * ldc + j0),
                                                ldc,
                                                accumulate,
                                                None,
                                            )
                                        }
                                    } else {
                                        edge_tile_i32::<K>(&tile, c, ldc, i0, j0);
                                    }
                                }
                                Dst::U8(c, ldc, req) => {
                                    let acc = if multi {
                                        scratch[scratch_at..].as_mut_ptr()
                                    } else {
                                        std::ptr::null_mut()
                                    };
                                    if cols == K::NR {
                                        let t =
                                            last.then(|| tile_requant(req, (c, ldc, i0), i0, j0));
                                        // SAFETY: as above for the ISA, the panels and C; the
                                        // scratch (when used) holds MR-rounded rows of
                                        // ld_scratch >= j0 - j_begin + NR sums from scratch_at;
                                        // bias, scale and residual cover N columns and M rows
                                        // (checked on entry).
                                        unsafe {
                                            K::run(
                                                rows,
                                                kc4,
                                                a_panel.as_ptr(),
                                                b_panel.as_ptr(),
                                                acc,
                                                ld_scratch,
                                                accumulate,
                                                t.as_ref(),
                                            )
                                        }
                                    } else {
                                        edge_tile_u8::<K>(
                                            &tile,
                                            acc,
                                            ld_scratch,
                                            (c, ldc, req),
                                            i0,
                                            j0,
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            })
        });
    });
}

struct Tile<'p> {
    rows: usize,
    cols: usize,
    kc4: usize,
    accumulate: bool,
    last: bool,
    a: &'p [u8],
    b: &'p [i8],
}

/// An `i32` tile narrower than NR: computed into a full-width scratch tile, then copied.
fn edge_tile_i32<K: MicroKernel8>(t: &Tile<'_>, c: Shared<i32>, ldc: usize, i0: usize, j0: usize) {
    let mut tile = [0i32; 16 * 64];
    assert!(K::MR * K::NR <= tile.len());
    let c = c.get();
    for i in 0..t.rows {
        for j in 0..t.cols {
            if t.accumulate {
                // SAFETY: (i0+i, j0+j) is inside C and inside this work item's tiles.
                tile[i * K::NR + j] = unsafe { *c.add((i0 + i) * ldc + j0 + j) };
            }
        }
    }
    // SAFETY: the kernel's ISA was checked when B was packed; the panels hold kc4*MR and kc4*NR
    // bytes; the scratch tile holds MR rows of NR sums with stride NR.
    unsafe {
        K::run(
            t.rows,
            t.kc4,
            t.a.as_ptr(),
            t.b.as_ptr(),
            tile.as_mut_ptr(),
            K::NR,
            t.accumulate,
            None,
        )
    };
    for i in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: (i0+i, j0+j) is inside C and inside this work item's tiles.
            unsafe { *c.add((i0 + i) * ldc + j0 + j) = tile[i * K::NR + j] };
        }
    }
}

/// A `u8` tile narrower than NR: sums into the work item's scratch (or a local tile when K is
/// one block), then the scalar twin's epilogue on the `cols` real columns of the last block.
fn edge_tile_u8<K: MicroKernel8>(
    t: &Tile<'_>,
    scratch: *mut i32,
    ld_scratch: usize,
    (c, ldc, req): (Shared<u8>, usize, &Requant<'_>),
    i0: usize,
    j0: usize,
) {
    let mut local = [0i32; 16 * 64];
    assert!(K::MR * K::NR <= local.len());
    let (acc, ld) = if scratch.is_null() {
        (local.as_mut_ptr(), K::NR)
    } else {
        (scratch, ld_scratch)
    };
    // SAFETY: the kernel's ISA was checked when B was packed; the panels hold kc4*MR and kc4*NR
    // bytes; `acc` holds MR rows of NR sums with stride `ld` (the local tile, or the scratch,
    // whose width is rounded up to NR).
    unsafe {
        K::run(
            t.rows,
            t.kc4,
            t.a.as_ptr(),
            t.b.as_ptr(),
            acc,
            ld,
            t.accumulate,
            None,
        )
    };
    if !t.last {
        return;
    }
    let tr = tile_requant(req, (c, ldc, i0), i0, j0);
    for i in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: (i, j) is inside the MR x NR sums at `acc`; (i0+i, j0+j) is inside C, the
            // residual, bias and scale (checked on entry) and inside this work item's tiles.
            unsafe {
                let v = *acc.add(i * ld + j);
                *tr.c.add(i * ldc + j) = super::scalar::requant_tile_element(v, &tr, i, j);
            }
        }
    }
}
