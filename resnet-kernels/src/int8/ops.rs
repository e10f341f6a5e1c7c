//! Element-wise INT8 operations on 8-bit data: quantisation of the network input, max-pool and
//! average pool on `u8` NHWC tensors, and the scalar requantisation (the rounding definition).

use super::Requant;

/// `x` quantised with scale `1 / inv_scale` and zero point `zero_point`:
/// `clamp(round_half_even(x · inv_scale) + zero_point, 0, 255)`.
#[inline]
pub fn quantize_u8(x: f32, inv_scale: f32, zero_point: i32) -> u8 {
    // Clamp first (to the codes' range, exact bounds), then round half to even by adding and
    // subtracting 1.5·2^23, which is exact for |v| < 2^22 under the default rounding mode and,
    // unlike `f32::round_ties_even`, needs no SSE4.1 (a libm call on baseline x86-64).
    let lo = -(zero_point as f32);
    let v = (x * inv_scale).max(lo).min(255.0 + lo);
    const MAGIC: f32 = 12_582_912.0;
    let rounded = (v + MAGIC) - MAGIC;
    // SAFETY: `rounded` is a whole number in [-255, 255]: `f32::max` returns `lo` for a NaN
    // product, and the clamp bounds infinities. (The checked `as i32` made the compiler test
    // every lane for NaN and range one by one, which kept the loop from vectorising.)
    let code = unsafe { rounded.to_int_unchecked::<i32>() };
    (code + zero_point) as u8
}

/// Rounds half to even and saturates to `i32` (for biases quantised once per model).
pub fn round_half_even_i32(x: f64) -> i32 {
    x.round_ties_even().clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// [`quantize_u8`] over a run, compiled for AVX-512 where the CPU has it (16 values per step
/// instead of the baseline build's 4; the same operations, so the same codes).
fn quantize_run(src: &[f32], inv_scale: f32, zero_point: i32, dst: &mut [u8]) {
    #[inline(always)]
    fn body(src: &[f32], inv_scale: f32, zero_point: i32, dst: &mut [u8]) {
        for (q, &x) in dst.iter_mut().zip(src) {
            *q = quantize_u8(x, inv_scale, zero_point);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::Isa::Avx512.is_supported() {
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn body_avx512(src: &[f32], inv_scale: f32, zero_point: i32, dst: &mut [u8]) {
            body(src, inv_scale, zero_point, dst)
        }
        // SAFETY: AVX-512 F/BW are supported (checked above); the body is safe code.
        return unsafe { body_avx512(src, inv_scale, zero_point, dst) };
    }
    body(src, inv_scale, zero_point, dst)
}

/// NCHW `f32` `[N, C, H·W]` -> NHWC `u8` `[N, H·W, C]`, quantised as [`quantize_u8`].
pub fn quantize_nchw_to_nhwc_u8(
    input: &[f32],
    batch: usize,
    c: usize,
    hw: usize,
    inv_scale: f32,
    zero_point: i32,
    out: &mut [u8],
) {
    // Each channel's run quantised as one contiguous loop (which vectorises), then
    // interleaved: quantising pixel by pixel across the planes does not vectorise.
    crate::layout::nchw_to_nhwc_with(input, batch, c, hw, out, |src, dst| {
        quantize_run(src, inv_scale, zero_point, dst)
    });
}

/// The requantising epilogue for one element of column `j`, exactly as every kernel computes it
/// (see the module's design note); `residual` is the residual's byte at that element.
pub fn requantize_scalar(acc: i32, j: usize, residual: Option<u8>, r: &Requant<'_>) -> u8 {
    let zp = r.zero_point as i32;
    super::scalar::requant_core(
        acc,
        r.bias[j],
        r.scale[j],
        residual
            .zip(r.residual)
            .map(|(v, res)| (v, res.zero_point, res.scale)),
        zp,
        if r.relu { 0.0 } else { -(zp as f32) },
        (255 - zp) as f32,
    )
}

/// Global average pool of a `u8` NHWC tensor `[N, HW, C]` to real values `[N, C]`:
/// `scale · (sum / HW − zero_point)`, the sum exact in `u32`.
pub fn avg_pool_u8_nhwc(
    input: &[u8],
    batch: usize,
    hw: usize,
    c: usize,
    scale: f32,
    zero_point: i32,
    out: &mut [f32],
) {
    assert_eq!(input.len(), batch * hw * c);
    assert_eq!(out.len(), batch * c);
    let mut sums = vec![0u32; c];
    for (image, dst) in input.chunks_exact(hw * c).zip(out.chunks_exact_mut(c)) {
        sums.fill(0);
        for pixel in image.chunks_exact(c) {
            for (s, &v) in sums.iter_mut().zip(pixel) {
                *s += v as u32;
            }
        }
        for (d, &s) in dst.iter_mut().zip(&sums) {
            *d = scale * (s as f32 / hw as f32 - zero_point as f32);
        }
    }
}
