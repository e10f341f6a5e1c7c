//! The portable bf16 micro-kernel: plain Rust, the twin every bf16 kernel is tested against,
//! and the one scalar epilogue ([`epilogue_core`]) that defines its order.

use super::{Bf16, MicroKernelBf16, TileOut};

/// Portable 4x16 kernel.
pub(crate) struct ScalarKernelBf16;

const MR: usize = 4;
const NR: usize = 16;

/// The epilogue of one element, in the order of the module note: bias, residual (widened), ReLU
/// (`v > 0 ? v : +0`, as `maxps(v, 0)`: NaN and -0 give +0).
#[inline(always)]
pub(crate) fn epilogue_core(
    sum: f32,
    bias: Option<f32>,
    residual: Option<Bf16>,
    relu: bool,
) -> f32 {
    let mut v = sum;
    if let Some(b) = bias {
        v += b;
    }
    if let Some(r) = residual {
        v += r.to_f32();
    }
    if relu {
        // Written as maxps(v, 0) behaves: only a v above zero survives (NaN and -0 give +0).
        v = if v > 0.0 { v } else { 0.0 };
    }
    v
}

/// [`epilogue_core`] for element `(i, j)` of a tile, stored to the tile's output.
///
/// # Safety
/// `(i, j)` is inside the tile: `t.bias`, when not null, holds more than `j` values,
/// `t.residual`, when not null, addresses row `i` (stride `t.ldr`) up to column `j`, and the
/// output that is not null row `i` (stride `t.ldc`) up to column `j`.
#[inline(always)]
pub(crate) unsafe fn store_tile_element(sum: f32, t: &TileOut, i: usize, j: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let bias = (!t.bias.is_null()).then(|| *t.bias.add(j));
        let residual = (!t.residual.is_null()).then(|| *t.residual.add(i * t.ldr + j));
        let v = epilogue_core(sum, bias, residual, t.relu);
        if t.c_bf16.is_null() {
            *t.c_f32.add(i * t.ldc + j) = v;
        } else {
            *t.c_bf16.add(i * t.ldc + j) = Bf16::from_f32(v);
        }
    }
}

/// One k-pair of the dot product as the SDM writes `vdpbf16ps`/`tdpbf16ps`: the odd product
/// first, then the even one, each added in f32 (the products are exact); denormal inputs read
/// as zero.
#[inline(always)]
pub(crate) fn dot_pair(acc: f32, a: [Bf16; 2], b: [Bf16; 2]) -> f32 {
    let acc = acc + a[1].to_f32_daz() * b[1].to_f32_daz();
    acc + a[0].to_f32_daz() * b[0].to_f32_daz()
}

/// The portable line's throughput probe: 12 chains of [`dot_pair`]. Returns the multiply-adds
/// done.
///
/// # Safety
/// None needed (plain Rust); `unsafe` only for the probe signature of the SIMD lines.
pub(crate) unsafe fn peak_portable(iters: usize) -> f64 {
    let one = std::hint::black_box([Bf16::from_f32(1.0); 2]);
    let step = std::hint::black_box([Bf16::from_f32(1e-7); 2]);
    let mut acc = [0.0f32; 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = dot_pair(*a, one, step);
        }
    }
    std::hint::black_box(acc);
    (iters * 12 * 2) as f64
}

impl MicroKernelBf16 for ScalarKernelBf16 {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "portable_bf16_4x16";

    unsafe fn run(
        rows: usize,
        kc2: usize,
        a: *const Bf16,
        b: *const Bf16,
        acc: *mut f32,
        ld_acc: usize,
        accumulate: bool,
        out: Option<&TileOut>,
    ) {
        // SAFETY: the caller guarantees a holds kc2*MR and b kc2*NR values.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, kc2 * MR),
                std::slice::from_raw_parts(b, kc2 * NR),
            )
        };
        let mut sums = [[0f32; NR]; MR];
        for g in 0..kc2 / 2 {
            let b_pair = &b[g * NR * 2..][..NR * 2];
            for (i, row) in sums.iter_mut().enumerate() {
                let a2 = [a[i * kc2 + 2 * g], a[i * kc2 + 2 * g + 1]];
                for (s, b2) in row.iter_mut().zip(b_pair.chunks_exact(2)) {
                    *s = dot_pair(*s, a2, [b2[0], b2[1]]);
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
                        v += *acc.add(i * ld_acc + j);
                    }
                    match out {
                        None => *acc.add(i * ld_acc + j) = v,
                        Some(t) => store_tile_element(v, t, i, j),
                    }
                }
            }
        }
    }
}
