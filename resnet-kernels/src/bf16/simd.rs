//! The AVX512-BF16 micro-kernel (`vdpbf16ps`) and conversion (`vcvtneps2bf16`). Each tile is MR
//! rows x two vectors of 16 f32 columns; the 2 bf16 of a row's k-pair are broadcast as one
//! 32-bit value and meet both B vectors (`2·MR` accumulators).

use super::{Bf16, MicroKernelBf16, TileOut};
use std::arch::x86_64::*;

/// `avx512bf16_f32_12x32`: 12 x 32 tile, 24 zmm accumulators of the 32 registers, plus two
/// for the B pair-row and one for the broadcast A pair.
pub(crate) struct Avx512Bf16Kernel;

const MR: usize = 12;
const LANES: usize = 16;
const NR: usize = 2 * LANES;

/// 16 bf16 at `p`, widened (exactly) to f32.
///
/// # Safety
/// AVX-512 F is enabled in the caller; 16 values are readable at `p`.
#[inline(always)]
unsafe fn load_bf16_as_f32(p: *const Bf16) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes at p.
    unsafe {
        let h = _mm256_loadu_si256(p.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// 16 f32 rounded to bf16 (`vcvtneps2bf16`) and stored at `p`.
///
/// # Safety
/// AVX512-BF16 is enabled in the caller; 16 values are writable at `p`.
#[inline(always)]
unsafe fn store_f32_as_bf16(p: *mut Bf16, v: __m512) {
    // SAFETY: __m256bh and __m256i are both 32 plain bytes; the caller guarantees 32 writable
    // bytes at p.
    unsafe {
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
        _mm256_storeu_si256(p.cast(), h);
    }
}

/// R rows of the tile (R = MR except on the last rows of C).
///
/// # Safety
/// The contract of [`MicroKernelBf16::run`] with `rows = R`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    kc2: usize,
    a: *const Bf16,
    b: *const Bf16,
    acc_mem: *mut f32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileOut>,
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    for g in 0..kc2 / 2 {
        // SAFETY: g < kc2/2 and i < R <= MR: the pair at a + i*kc2 + 2g and the 2 x 32 values
        // at b + 2g*NR stay inside the panels (caller contract). __m512i and __m512bh are both
        // 64 plain bytes.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(2 * g * NR).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(2 * g * NR + NR).cast()));
            for i in 0..R {
                let pair = a.add(i * kc2 + 2 * g).cast::<i32>().read_unaligned();
                let a2: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc0[i] = _mm512_dpbf16_ps(acc0[i], a2, b0);
                acc1[i] = _mm512_dpbf16_ps(acc1[i], a2, b1);
            }
        }
    }
    for i in 0..R {
        // SAFETY: row i < R = rows of the tile: the partial sums, the NR biases, the residual
        // row and the output row are inside their buffers (caller contract).
        unsafe { epilogue_row(acc0[i], acc1[i], i, acc_mem, ld_acc, accumulate, out) };
    }
}

/// The epilogue of row `i` of a tile, whose 32 sums are `v0` (columns 0..16) and `v1`
/// (16..32): add the earlier K blocks' partial sums, then either store them to `acc_mem` (`out`
/// is `None`) or apply bias, residual and ReLU and store f32 or bf16. Shared with the AMX-BF16
/// kernel, which runs it on its stored C block.
///
/// # Safety
/// AVX512-BF16 (and F/BW) are enabled in the caller; row `i` is inside the tile: the partial
/// sums at `acc_mem` (stride `ld_acc`, when read or written), the NR biases, the residual row
/// and the output row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn epilogue_row(
    mut v0: __m512,
    mut v1: __m512,
    i: usize,
    acc_mem: *mut f32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileOut>,
) {
    // SAFETY: the caller's contract.
    unsafe {
        if accumulate {
            let m = acc_mem.add(i * ld_acc);
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(m));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(m.add(LANES)));
        }
        let Some(t) = out else {
            let m = acc_mem.add(i * ld_acc);
            _mm512_storeu_ps(m, v0);
            _mm512_storeu_ps(m.add(LANES), v1);
            return;
        };
        if !t.bias.is_null() {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(t.bias));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(t.bias.add(LANES)));
        }
        if !t.residual.is_null() {
            let r = t.residual.add(i * t.ldr);
            v0 = _mm512_add_ps(v0, load_bf16_as_f32(r));
            v1 = _mm512_add_ps(v1, load_bf16_as_f32(r.add(LANES)));
        }
        if t.relu {
            // maxps returns its second operand for NaN and for two zeros: +0.
            v0 = _mm512_max_ps(v0, _mm512_setzero_ps());
            v1 = _mm512_max_ps(v1, _mm512_setzero_ps());
        }
        if t.c_bf16.is_null() {
            let c = t.c_f32.add(i * t.ldc);
            _mm512_storeu_ps(c, v0);
            _mm512_storeu_ps(c.add(LANES), v1);
        } else {
            let c = t.c_bf16.add(i * t.ldc);
            store_f32_as_bf16(c, v0);
            store_f32_as_bf16(c.add(LANES), v1);
        }
    }
}

impl MicroKernelBf16 for Avx512Bf16Kernel {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = "avx512bf16_f32_12x32";

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
        macro_rules! rows {
            ($($r:literal),+) => {
                match rows {
                    // SAFETY: forwarded from the caller's contract (ISA support, buffer sizes).
                    $($r => unsafe { tile::<$r>(kc2, a, b, acc, ld_acc, accumulate, out) },)+
                    _ => unreachable!("rows must be 1..=MR"),
                }
            };
        }
        rows!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    }
}

/// [`super::f32_to_bf16`] with `vcvtneps2bf16`, 16 values at a time, the tail by the scalar twin.
///
/// # Safety
/// The CPU supports AVX512-BF16; `src.len() == dst.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn f32_to_bf16_avx512bf16(src: &[f32], dst: &mut [Bf16]) {
    let full = src.len() / LANES * LANES;
    for (s, d) in src[..full]
        .chunks_exact(LANES)
        .zip(dst[..full].chunks_exact_mut(LANES))
    {
        // SAFETY: each chunk holds 16 readable f32 and 16 writable bf16.
        unsafe { store_f32_as_bf16(d.as_mut_ptr(), _mm512_loadu_ps(s.as_ptr())) };
    }
    for (d, &s) in dst[full..].iter_mut().zip(&src[full..]) {
        *d = Bf16::from_f32(s);
    }
}

/// The permutes of [`interleave3_f32_to_bf16`]. Output vector `v`'s lane `j` is value `32v + j`
/// of the pixels: pixel `(32v + j) / 3`, channel `(32v + j) % 3`. Channels 0 and 1 come from one
/// two-source permute (`pair`: indices from 32 pick the second source), channel 2 from a
/// one-source permute (`third`) blended in where `third_mask` is set.
struct Interleave3 {
    pair: [[u16; 32]; 3],
    third: [[u16; 32]; 3],
    third_mask: [u32; 3],
}

const INTERLEAVE3: Interleave3 = {
    let mut t = Interleave3 {
        pair: [[0; 32]; 3],
        third: [[0; 32]; 3],
        third_mask: [0; 3],
    };
    let mut v = 0;
    while v < 3 {
        let mut j = 0;
        while j < 32 {
            let value = 32 * v + j;
            let pixel = (value / 3) as u16;
            match value % 3 {
                0 => t.pair[v][j] = pixel,
                1 => t.pair[v][j] = 32 + pixel,
                _ => {
                    t.third[v][j] = pixel;
                    t.third_mask[v] |= 1 << j;
                }
            }
            j += 1;
        }
        v += 1;
    }
    t
};

/// Pixels `0..32k` of three channel planes, rounded to bf16 as [`super::f32_to_bf16`] rounds
/// them and interleaved into `out` (`out[3p + ch] = planes[ch][p]`), 32 pixels at a time with
/// `k` as large as the planes allow; returns `32k`, the pixels done (the caller does the rest).
///
/// # Safety
/// The CPU supports AVX512-BF16 (and so AVX-512 F and BW); every plane holds at least
/// `out.len() / 3` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn interleave3_f32_to_bf16(planes: [&[f32]; 3], out: &mut [Bf16]) -> usize {
    let pixels = out.len() / 3;
    debug_assert!(planes.iter().all(|p| p.len() >= pixels));
    // SAFETY: each index table is 64 readable bytes.
    let load_idx = |t: &[u16; 32]| unsafe { _mm512_loadu_si512(t.as_ptr().cast()) };
    let pair_idx = INTERLEAVE3.pair.each_ref().map(load_idx);
    let third_idx = INTERLEAVE3.third.each_ref().map(load_idx);
    let third_mask = INTERLEAVE3.third_mask;
    let full = pixels / 32 * 32;
    for p in (0..full).step_by(32) {
        // SAFETY: p + 32 <= pixels <= each plane's length; a vector of 32 bf16 is one of 32
        // 16-bit lanes (the same 64 bytes).
        let [r, g, b] = planes.map(|plane| unsafe {
            let at = plane.as_ptr().add(p);
            // The second operand gives the low 16 lanes.
            let bf16 = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(at.add(16)), _mm512_loadu_ps(at));
            std::mem::transmute::<__m512bh, __m512i>(bf16)
        });
        for v in 0..3 {
            let pair = _mm512_permutex2var_epi16(r, pair_idx[v], g);
            let third = _mm512_permutexvar_epi16(third_idx[v], b);
            let vec = _mm512_mask_blend_epi16(third_mask[v], pair, third);
            // SAFETY: 3p + 32v + 32 <= 3 * full <= out.len().
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(3 * p + 32 * v).cast(), vec) };
        }
    }
    full
}

/// The throughput probe of `avx512bf16_f32_12x32`: 12 independent chains of `vdpbf16ps zmm`
/// (32 bf16 multiply-adds each), as the kernel issues them. Returns the multiply-adds done.
///
/// # Safety
/// The CPU supports AVX-512F/BW and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn peak_avx512bf16(iters: usize) -> f64 {
    // bf16 pairs of 1.0 and a tiny step: the sums stay finite for any number of rounds. The
    // operands come through black_box so that LLVM cannot fold the dot products.
    let ones: __m512bh = std::hint::black_box(_mm512_cvtne2ps_pbh(
        _mm512_set1_ps(1.0),
        _mm512_set1_ps(1.0),
    ));
    let step: __m512bh = std::hint::black_box(_mm512_cvtne2ps_pbh(
        _mm512_set1_ps(1e-7),
        _mm512_set1_ps(1e-7),
    ));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, ones, step);
        }
    }
    std::hint::black_box(acc);
    (iters * 12 * 32) as f64
}
