//! AVX-512F micro-kernel: 12 rows x 32 columns (two 16-lane registers) = 24 accumulators of the
//! 32 zmm registers, plus two for the B row and one for the broadcast A value.

use super::{MicroKernel, TileEpilogue};
use std::arch::x86_64::*;

/// `avx512_f32_12x32`.
pub(crate) struct Avx512Kernel;

const MR: usize = 12;
const NR: usize = 32;

impl MicroKernel for Avx512Kernel {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "avx512_f32_12x32";

    unsafe fn run(
        rows: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        epi: Option<&TileEpilogue>,
    ) {
        // SAFETY: forwarded from the caller's contract (ISA support, buffer sizes).
        unsafe {
            match rows {
                1 => kernel::<1>(kc, a, b, c, ldc, accumulate, epi),
                2 => kernel::<2>(kc, a, b, c, ldc, accumulate, epi),
                3 => kernel::<3>(kc, a, b, c, ldc, accumulate, epi),
                4 => kernel::<4>(kc, a, b, c, ldc, accumulate, epi),
                5 => kernel::<5>(kc, a, b, c, ldc, accumulate, epi),
                6 => kernel::<6>(kc, a, b, c, ldc, accumulate, epi),
                7 => kernel::<7>(kc, a, b, c, ldc, accumulate, epi),
                8 => kernel::<8>(kc, a, b, c, ldc, accumulate, epi),
                9 => kernel::<9>(kc, a, b, c, ldc, accumulate, epi),
                10 => kernel::<10>(kc, a, b, c, ldc, accumulate, epi),
                11 => kernel::<11>(kc, a, b, c, ldc, accumulate, epi),
                12 => kernel::<12>(kc, a, b, c, ldc, accumulate, epi),
                _ => unreachable!("rows must be 1..=12"),
            }
        }
    }
}

/// R rows of the tile (R = MR except on the last rows of C, so tails waste no FMAs).
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const R: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    epi: Option<&TileEpilogue>,
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    for k in 0..kc {
        // SAFETY: k < kc and i < R <= MR: a + i*kc + k and b + k*NR .. b + k*NR + NR stay inside the panels.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(k * NR));
            let b1 = _mm512_loadu_ps(b.add(k * NR + 16));
            for i in 0..R {
                let a_ik = _mm512_set1_ps(*a.add(i * kc + k));
                acc0[i] = _mm512_fmadd_ps(a_ik, b0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(a_ik, b1, acc1[i]);
            }
        }
    }
    for i in 0..R {
        // SAFETY: row i < R <= rows of the tile: c, bias and residual cover it (caller contract).
        unsafe {
            let out = c.add(i * ldc);
            let (mut v0, mut v1) = (acc0[i], acc1[i]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_loadu_ps(out));
                v1 = _mm512_add_ps(v1, _mm512_loadu_ps(out.add(16)));
            }
            if let Some(e) = epi {
                if !e.bias.is_null() {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(e.bias));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(e.bias.add(16)));
                }
                if !e.residual.is_null() {
                    let r = e.residual.add(i * e.ldr);
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(r));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(r.add(16)));
                }
                if e.relu {
                    v0 = _mm512_max_ps(v0, _mm512_setzero_ps());
                    v1 = _mm512_max_ps(v1, _mm512_setzero_ps());
                }
            }
            _mm512_storeu_ps(out, v0);
            _mm512_storeu_ps(out.add(16), v1);
        }
    }
}
