//! The portable micro-kernel: plain Rust, the twin every SIMD kernel is tested against.

use super::{MicroKernel, TileEpilogue};

/// Portable 4x16 kernel (the compiler may auto-vectorise it with the baseline SSE2).
pub(crate) struct ScalarKernel;

const MR: usize = 4;
const NR: usize = 16;

impl MicroKernel for ScalarKernel {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "portable_f32_4x16";

    unsafe fn run(
        rows: usize,
        kc: usize,
        (a, lda): (*const f32, usize),
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        epi: Option<&TileEpilogue>,
    ) {
        // SAFETY: the caller guarantees `rows` rows of kc floats at a (stride lda) and kc*NR
        // floats at b.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, (rows - 1) * lda + kc),
                std::slice::from_raw_parts(b, kc * NR),
            )
        };
        let mut acc = [[0.0f32; NR]; MR];
        for k in 0..kc {
            let b_row = &b[k * NR..][..NR];
            for (i, acc_row) in acc.iter_mut().enumerate().take(rows) {
                let a_ik = a[i * lda + k];
                for (acc_ij, &b_kj) in acc_row.iter_mut().zip(b_row) {
                    *acc_ij += a_ik * b_kj;
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate().take(rows) {
            for (j, &value) in acc_row.iter().enumerate() {
                // SAFETY: the caller guarantees rows x NR floats at c (stride ldc), NR biases
                // and rows x NR residuals (stride ldr).
                unsafe {
                    let out = c.add(i * ldc + j);
                    let mut v = value;
                    if accumulate {
                        v += *out;
                    }
                    if let Some(e) = epi {
                        if !e.bias.is_null() {
                            v += *e.bias.add(j);
                        }
                        if !e.residual.is_null() {
                            v += *e.residual.add(i * e.ldr + j);
                        }
                        if e.relu {
                            v = v.max(0.0);
                        }
                    }
                    *out = v;
                }
            }
        }
    }
}
