//! The portable INT8 micro-kernel: plain Rust, the twin every SIMD kernel is tested against,
//! and the one scalar epilogue ([`requant_core`]) that defines the rounding.

use super::{MicroKernel8, TileRequant};

/// Portable 4x16 kernel.
pub(crate) struct ScalarKernel8;

const MR: usize = 4;
const NR: usize = 16;

/// The epilogue of one element, in the order of the design note: bias (wrapping `i32` add),
/// `f32` scale, optional residual `(r, z_r, res_scale)` as a separate multiply and add, clamp to
/// `[lo, hi]`, round half to even, add the zero point.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn requant_core(
    acc: i32,
    bias: i32,
    scale: f32,
    residual: Option<(u8, i32, f32)>,
    zero_point: i32,
    lo: f32,
    hi: f32,
) -> u8 {
    let mut f = acc.wrapping_add(bias) as f32 * scale;
    if let Some((r, rz, rs)) = residual {
        f += (r as i32 - rz) as f32 * rs;
    }
    let f = f.max(lo).min(hi);
    (f.round_ties_even() as i32 + zero_point) as u8
}

/// [`requant_core`] for element `(i, j)` of a tile.
///
/// # Safety
/// `(i, j)` is inside the tile: `t.bias`, `t.scale` hold more than `j` values and `t.residual`,
/// when not null, addresses row `i` (stride `t.ldr`) up to column `j`.
#[inline(always)]
pub(crate) unsafe fn requant_tile_element(acc: i32, t: &TileRequant, i: usize, j: usize) -> u8 {
    // SAFETY: the caller's contract.
    unsafe {
        let residual = (!t.residual.is_null()).then(|| {
            (
                *t.residual.add(i * t.ldr + j),
                t.res_zero_point,
                t.res_scale,
            )
        });
        requant_core(
            acc,
            *t.bias.add(j),
            *t.scale.add(j),
            residual,
            t.zero_point,
            t.lo,
            t.hi,
        )
    }
}

impl MicroKernel8 for ScalarKernel8 {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "portable_i32_4x16";
    const B_PARTS: usize = 1;

    unsafe fn run(
        rows: usize,
        kc4: usize,
        a: *const u8,
        b: *const i8,
        acc: *mut i32,
        ld_acc: usize,
        accumulate: bool,
        out: Option<&TileRequant>,
    ) {
        // SAFETY: the caller guarantees a holds kc4*MR and b kc4*NR bytes.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc4 * MR),
                std::slice::from_raw_parts(b, kc4 * NR),
            )
        };
        let mut sums = [[0i32; NR]; MR];
        for g in 0..kc4 / 4 {
            let b_group = &b[g * NR * 4..][..NR * 4];
            for (i, row) in sums.iter_mut().enumerate() {
                let a4 = &a[i * kc4 + 4 * g..][..4];
                for (s, b4) in row.iter_mut().zip(b_group.chunks_exact(4)) {
                    let dot: i32 = a4.iter().zip(b4).map(|(&x, &w)| x as i32 * w as i32).sum();
                    *s = s.wrapping_add(dot);
                }
            }
        }
        for (i, row) in sums.iter().enumerate().take(rows) {
            for (j, &sum) in row.iter().enumerate() {
                // SAFETY: the caller guarantees rows x NR sums at acc (stride ld_acc) when they
                // are read or written, and rows x NR outputs behind `out`.
                unsafe {
                    let mut v = sum;
                    if accumulate {
                        v = v.wrapping_add(*acc.add(i * ld_acc + j));
                    }
                    match out {
                        None => *acc.add(i * ld_acc + j) = v,
                        Some(t) => *t.c.add(i * t.ldc + j) = requant_tile_element(v, t, i, j),
                    }
                }
            }
        }
    }
}

/// The portable line's throughput probe: 12 scalar `i32` multiply-add chains. Returns the
/// multiply-accumulates done.
///
/// # Safety
/// None needed (plain Rust); `unsafe` only to share the probe signature of the SIMD lines.
pub(crate) unsafe fn peak_portable(iters: usize) -> f64 {
    let mut acc = [1i32; 12];
    for i in 0..iters {
        for a in acc.iter_mut() {
            *a = a.wrapping_mul(3).wrapping_add(i as i32);
        }
    }
    std::hint::black_box(acc);
    (iters * 12) as f64
}
