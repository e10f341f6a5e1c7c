//! Pooling, in both layouts: NHWC (channels innermost, for the native backend) and NCHW.

/// A value max-pooling works on: `f32` activations, `u8` INT8 codes (quantisation is
/// monotonic, so the max of the codes is the code of the max), or bf16 activations.
///
/// The pool runs on keys: an order-preserving encoding of the values in which the max is one
/// vector instruction of the baseline ISA (`maxps`, `pmaxub`, `pmaxsw`). For `f32` and `u8` the
/// key is the value itself; bf16 bits compare as signed 16-bit integers once a negative value's
/// magnitude bits are flipped ([`crate::bf16::Bf16`]'s impl), which made its pool 3x faster
/// than comparing decoded keys and choosing the value.
pub trait PoolValue: Copy + Send + Sync {
    /// A key lower than or equal to every value's key: a window starts from it, so padding
    /// never wins.
    const LOWEST_KEY: Self;
    /// The value's key.
    #[inline(always)]
    fn to_key(self) -> Self {
        self
    }
    /// The value of a key (the inverse of [`PoolValue::to_key`]).
    #[inline(always)]
    fn value_of_key(self) -> Self {
        self
    }
    /// The larger of two keys (branch-free, which the compiler vectorises).
    fn max_key(self, other: Self) -> Self;
    /// The larger of two values.
    #[inline(always)]
    fn max_of(self, other: Self) -> Self {
        self.to_key().max_key(other.to_key()).value_of_key()
    }
    /// How the AVX-512 pool compares this type's keys, if it has that path.
    const WIDE: WideKeys = WideKeys::None;
}

/// How the AVX-512 pool ([`max_pool_3x3_s2_p1_nhwc`]'s wide path) compares the keys of a
/// [`PoolValue`]: the same keys and the same max as the portable loop, 64 bytes at a time
/// instead of the baseline's 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WideKeys {
    /// No wide path: the portable loop.
    None,
    /// `f32` values, `vmaxps` with the running max as its second operand (which it returns
    /// for a NaN, as the portable `max_key` keeps it).
    F32,
    /// Unsigned bytes, `vpmaxub` (`u8` codes).
    U8,
    /// Signed 16-bit keys after flipping a negative value's magnitude bits, `vpmaxsw` (bf16;
    /// the flip is its own inverse).
    SignedOrder16 {
        /// The key of the lowest value (a window starts from it).
        lowest: u16,
    },
}

impl PoolValue for f32 {
    const LOWEST_KEY: f32 = f32::NEG_INFINITY;
    const WIDE: WideKeys = WideKeys::F32;
    #[inline(always)]
    fn max_key(self, other: f32) -> f32 {
        // One `maxps`: a NaN `other` leaves `self`, as `f32::max` would, and `self` (the
        // running max, from -inf) is never NaN, so the NaN handling of `f32::max` is not needed.
        if other > self {
            other
        } else {
            self
        }
    }
}

impl PoolValue for u8 {
    const LOWEST_KEY: u8 = 0;
    const WIDE: WideKeys = WideKeys::U8;
    #[inline(always)]
    fn max_key(self, other: u8) -> u8 {
        self.max(other)
    }
}

/// Max-pool 3x3, stride 2, padding 1 (padding never wins), NHWC: `[N, H, W, C] -> [N, OH, OW, C]`.
/// NaN never wins either (as with `f32::max`).
#[inline]
pub fn max_pool_3x3_s2_p1_nhwc<T: PoolValue>(
    input: &[T],
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    out: &mut [T],
) {
    let (oh_n, ow_n) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    assert_eq!(out.len(), batch * oh_n * ow_n * c);
    pool_into(input, (batch, h, w, c), out, 0);
}

/// [`max_pool_3x3_s2_p1_nhwc`] into a framed output: each output image inside a frame of `pad`
/// pixels (`[N, OH + 2 pad, OW + 2 pad, C]`, the layout the next convolution reads in place,
/// `amx::Frame`); the frame's pixels are left as they are.
pub fn max_pool_3x3_s2_p1_nhwc_framed<T: PoolValue>(
    input: &[T],
    (batch, h, w, c): (usize, usize, usize, usize),
    out: &mut [T],
    pad: usize,
) {
    let (oh_n, ow_n) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    let framed = batch * (oh_n + 2 * pad) * (ow_n + 2 * pad) * c;
    assert!(out.len() >= framed, "framed output too small");
    pool_into(input, (batch, h, w, c), &mut out[..framed], pad);
}

/// The pool into output rows inside frames of `pad` pixels (0: dense).
fn pool_into<T: PoolValue>(
    input: &[T],
    (batch, h, w, c): (usize, usize, usize, usize),
    out: &mut [T],
    pad: usize,
) {
    let (oh_n, ow_n) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    assert_eq!(input.len(), batch * h * w * c);
    if out.is_empty() {
        return;
    }
    let framed_h = oh_n + 2 * pad;
    // The wide path: whole 64-byte vectors of channels, on a CPU with AVX-512 BW. Xeon model
    // 167 (2026-12-07): the bf16 stem's pool at batch 1, in cache, 89 -> 35 us on 2 threads.
    #[cfg(target_arch = "x86_64")]
    let wide = T::WIDE != WideKeys::None
        && (c * std::mem::size_of::<T>()).is_multiple_of(64)
        && crate::cpu::Isa::Avx512.is_supported();
    // One output row per task, in parallel: the stem's pool reads 3.2 MB of bf16 (0.8 MB of
    // u8) at batch 1, which on one core cost as much as a convolution of the layers after it.
    crate::team::for_each_chunk_mut(out, (ow_n + 2 * pad) * c, |row, framed_row| {
        let (n, framed_oh) = (row / framed_h, row % framed_h);
        if framed_oh < pad || framed_oh >= pad + oh_n {
            return; // a row of the frame
        }
        let oh = framed_oh - pad;
        let out_row = &mut framed_row[pad * c..][..ow_n * c];
        #[cfg(target_arch = "x86_64")]
        if wide {
            let image = &input[n * h * w * c..][..h * w * c];
            let mut rows: [&[u8]; 3] = [&[]; 3];
            let mut count = 0;
            for ih in (2 * oh).saturating_sub(1)..(2 * oh + 2).min(h) {
                rows[count] = as_bytes(&image[ih * w * c..][..w * c]);
                count += 1;
            }
            // SAFETY: AVX-512 F and BW were checked above; each row slice holds w * c values
            // and `out_row` ow_n * c, whose bytes the wide row writes in place.
            unsafe {
                wide_row(
                    T::WIDE,
                    &rows[..count],
                    w,
                    c * std::mem::size_of::<T>(),
                    as_bytes_mut(out_row),
                )
            };
            return;
        }
        for ow in 0..ow_n {
            let dst = &mut out_row[ow * c..][..c];
            dst.fill(T::LOWEST_KEY);
            for ih in (2 * oh).saturating_sub(1)..(2 * oh + 2).min(h) {
                for iw in (2 * ow).saturating_sub(1)..(2 * ow + 2).min(w) {
                    let src = &input[((n * h + ih) * w + iw) * c..][..c];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = d.max_key(s.to_key());
                    }
                }
            }
            for d in dst.iter_mut() {
                *d = d.value_of_key();
            }
        }
    });
}

/// The bytes of a pool value slice (plain data: `f32`, `u8`, bf16).
#[cfg(target_arch = "x86_64")]
fn as_bytes<T: PoolValue>(v: &[T]) -> &[u8] {
    // SAFETY: every PoolValue is plain data without padding (f32, u8, a u16 newtype); the
    // bytes live as long as `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// [`as_bytes`], mutable.
#[cfg(target_arch = "x86_64")]
fn as_bytes_mut<T: PoolValue>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as `as_bytes`; any bytes are a valid value of these types.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

/// One output row of the pool on 64-byte vectors: for each output pixel, the max of the keys
/// of the window's pixels in `rows` (each `w` pixels of `cb` bytes), stored as values.
///
/// # Safety
/// The CPU has AVX-512 F and BW; `cb` is a multiple of 64; each row holds `w * cb` bytes and
/// `out` a whole number of pixels; `keys` is not [`WideKeys::None`].
#[cfg(target_arch = "x86_64")]
unsafe fn wide_row(keys: WideKeys, rows: &[&[u8]], w: usize, cb: usize, out: &mut [u8]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match keys {
            WideKeys::U8 => wide_row_keys::<false>(0, rows, w, cb, out),
            WideKeys::F32 => wide_row_f32(rows, w, cb, out),
            WideKeys::SignedOrder16 { lowest } => wide_row_keys::<true>(lowest, rows, w, cb, out),
            WideKeys::None => unreachable!("the caller checks for a wide path"),
        }
    }
}

/// [`wide_row`] for `f32` values.
///
/// # Safety
/// As [`wide_row`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_row_f32(rows: &[&[u8]], w: usize, cb: usize, out: &mut [u8]) {
    use std::arch::x86_64::*;
    debug_assert!(cb.is_multiple_of(64) && rows.iter().all(|r| r.len() >= w * cb));
    for (ow, dst) in out.chunks_exact_mut(cb).enumerate() {
        let (c0, c1) = ((2 * ow).saturating_sub(1), (2 * ow + 2).min(w));
        for j in (0..cb).step_by(64) {
            let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
            for row in rows {
                for iw in c0..c1 {
                    // SAFETY: iw < w and j + 64 <= cb, so the 64 bytes lie inside the row.
                    let v = unsafe { _mm512_loadu_ps(row.as_ptr().add(iw * cb + j).cast()) };
                    // The second operand for a NaN or equal values: the running max stays.
                    acc = _mm512_max_ps(v, acc);
                }
            }
            // SAFETY: j + 64 <= cb = dst.len().
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(j).cast(), acc) };
        }
    }
}

/// [`wide_row`] for unsigned bytes (`SIGNED16` false) or signed-order 16-bit keys whose lowest
/// is `lowest`.
///
/// # Safety
/// As [`wide_row`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn wide_row_keys<const SIGNED16: bool>(
    lowest: u16,
    rows: &[&[u8]],
    w: usize,
    cb: usize,
    out: &mut [u8],
) {
    use std::arch::x86_64::*;
    debug_assert!(cb.is_multiple_of(64) && rows.iter().all(|r| r.len() >= w * cb));
    let lowest = _mm512_set1_epi16(lowest as i16);
    let magnitude = _mm512_set1_epi16(0x7FFF);
    for (ow, dst) in out.chunks_exact_mut(cb).enumerate() {
        let (c0, c1) = ((2 * ow).saturating_sub(1), (2 * ow + 2).min(w));
        for j in (0..cb).step_by(64) {
            let mut acc = lowest;
            for row in rows {
                for iw in c0..c1 {
                    // SAFETY: iw < w and j + 64 <= cb, so the 64 bytes lie inside the row.
                    let v = unsafe { _mm512_loadu_si512(row.as_ptr().add(iw * cb + j).cast()) };
                    acc = if SIGNED16 {
                        // The signed-order flip (a negative value's magnitude bits).
                        let flip = _mm512_and_si512(_mm512_srai_epi16::<15>(v), magnitude);
                        _mm512_max_epi16(acc, _mm512_xor_si512(v, flip))
                    } else {
                        _mm512_max_epu8(acc, v)
                    };
                }
            }
            if SIGNED16 {
                // The flip is its own inverse: key back to value.
                let flip = _mm512_and_si512(_mm512_srai_epi16::<15>(acc), magnitude);
                acc = _mm512_xor_si512(acc, flip);
            }
            // SAFETY: j + 64 <= cb = dst.len().
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(j).cast(), acc) };
        }
    }
}

/// Global average pool, NHWC: `[N, H, W, C] -> [N, C]`.
pub fn global_avg_pool_nhwc(input: &[f32], batch: usize, hw: usize, c: usize, out: &mut [f32]) {
    assert_eq!(input.len(), batch * hw * c);
    assert_eq!(out.len(), batch * c);
    for n in 0..batch {
        let dst = &mut out[n * c..][..c];
        dst.fill(0.0);
        for p in 0..hw {
            for (d, &s) in dst.iter_mut().zip(&input[(n * hw + p) * c..][..c]) {
                *d += s;
            }
        }
        let inv = 1.0 / hw as f32;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
}

/// Max-pool 3x3, stride 2, padding 1, NCHW: `[N·C, H, W] -> [N·C, OH, OW]`.
pub fn max_pool_3x3_s2_p1_nchw(input: &[f32], planes: usize, h: usize, w: usize, out: &mut [f32]) {
    let (oh_n, ow_n) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    assert_eq!(input.len(), planes * h * w);
    assert_eq!(out.len(), planes * oh_n * ow_n);
    for p in 0..planes {
        let plane = &input[p * h * w..][..h * w];
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let mut best = f32::NEG_INFINITY;
                for ih in (2 * oh).saturating_sub(1)..(2 * oh + 2).min(h) {
                    for iw in (2 * ow).saturating_sub(1)..(2 * ow + 2).min(w) {
                        best = best.max(plane[ih * w + iw]);
                    }
                }
                out[(p * oh_n + oh) * ow_n + ow] = best;
            }
        }
    }
}

/// Global average pool, NCHW: `[N·C, H·W] -> [N·C]`.
pub fn global_avg_pool_nchw(input: &[f32], planes: usize, hw: usize, out: &mut [f32]) {
    assert_eq!(input.len(), planes * hw);
    assert_eq!(out.len(), planes);
    for (o, plane) in out.iter_mut().zip(input.chunks_exact(hw)) {
        *o = plane.iter().sum::<f32>() / hw as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framed pool writes the dense pool's rows inside a frame of `pad` pixels and leaves
    /// the frame alone (a sentinel there survives), on the portable (3 channels) and the wide
    /// path (64: whole 64-byte vectors where the CPU has AVX-512), odd and even sizes.
    #[test]
    fn framed_output_holds_the_dense_rows() {
        for (n, h, w, c, pad) in [(2, 7, 6, 3, 1), (1, 8, 9, 64, 1), (2, 5, 5, 64, 2)] {
            let input: Vec<f32> = (0..n * h * w * c)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let (oh, ow) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
            let mut dense = vec![0.0; n * oh * ow * c];
            max_pool_3x3_s2_p1_nhwc(&input, n, h, w, c, &mut dense);
            let (fh, fw) = (oh + 2 * pad, ow + 2 * pad);
            let sentinel = -1234.5;
            let mut framed = vec![sentinel; n * fh * fw * c + 5];
            max_pool_3x3_s2_p1_nhwc_framed(&input, (n, h, w, c), &mut framed, pad);
            let mut expected = vec![sentinel; framed.len()];
            for (r, pixel) in dense.chunks_exact(c).enumerate() {
                let (img, y, x) = (r / (oh * ow), r / ow % oh, r % ow);
                let at = ((img * fh + y + pad) * fw + x + pad) * c;
                expected[at..at + c].copy_from_slice(pixel);
            }
            assert_eq!(framed, expected, "{n}x{h}x{w}x{c} pad {pad}");
        }
    }

    /// NHWC and NCHW pool the same, with 3 channels (the portable NHWC loop) and with 16 and
    /// 64 (whole 64-byte vectors: the AVX-512 path where the CPU has it), NaNs, signed zeros
    /// and infinities included (a NaN never wins, as with `f32::max`).
    #[test]
    fn layouts_agree() {
        for c in [3, 16, 64] {
            layouts_agree_with(c);
        }
    }

    fn layouts_agree_with(c: usize) {
        let (n, h, w) = (2, 7, 6);
        let special = [f32::NAN, -0.0, 0.0, f32::NEG_INFINITY, f32::INFINITY];
        let nchw: Vec<f32> = (0..n * c * h * w)
            .map(|i| match i % 11 {
                0 => special[(i / 11) % special.len()],
                _ => ((i * 37) % 101) as f32 - 50.0,
            })
            .collect();
        let mut nhwc = vec![0.0; nchw.len()];
        for b in 0..n {
            for ch in 0..c {
                for p in 0..h * w {
                    nhwc[(b * h * w + p) * c + ch] = nchw[(b * c + ch) * h * w + p];
                }
            }
        }
        let (oh, ow) = (4, 3);
        let mut a = vec![0.0; n * c * oh * ow];
        let mut b = vec![0.0; n * c * oh * ow];
        max_pool_3x3_s2_p1_nchw(&nchw, n * c, h, w, &mut a);
        max_pool_3x3_s2_p1_nhwc(&nhwc, n, h, w, c, &mut b);
        for bi in 0..n {
            for ch in 0..c {
                for p in 0..oh * ow {
                    let (x, y) = (
                        a[(bi * c + ch) * oh * ow + p],
                        b[(bi * oh * ow + p) * c + ch],
                    );
                    assert_eq!(x.to_bits(), y.to_bits(), "{c} channels: {x} vs {y}");
                }
            }
        }
        // Window of output (0, 0) covers rows 0..2 and columns 0..2 of each plane.
        let mut want = f32::MIN;
        for y in 0..2 {
            for x in 0..2 {
                want = want.max(nchw[y * w + x]);
            }
        }
        assert_eq!(a[0], want);
        let mut ga = vec![0.0; n * c];
        let mut gb = vec![0.0; n * c];
        global_avg_pool_nchw(&nchw, n * c, h * w, &mut ga);
        global_avg_pool_nhwc(&nhwc, n, h * w, c, &mut gb);
        for (x, y) in ga.iter().zip(&gb) {
            // A plane with an infinity or a NaN averages to one in both layouts.
            assert!(
                x == y || (x - y).abs() < 1e-4 || (x.is_nan() && y.is_nan()),
                "{x} {y}"
            );
        }
    }

    /// The bf16 and u8 pools (on keys) choose what the f32 pool chooses, negatives, signed
    /// zeros and infinities included: max-pooling only selects, so the results are equal. With
    /// 64 channels both take the AVX-512 path where the CPU has it (whole 64-byte vectors),
    /// with 96 bf16 does and u8 does not, with 35 neither does.
    #[test]
    fn key_pools_select_as_the_f32_pool() {
        for c in [35, 64, 96] {
            key_pools_select_as_the_f32_pool_with(c);
        }
    }

    fn key_pools_select_as_the_f32_pool_with(c: usize) {
        use crate::bf16::Bf16;
        let (n, h, w) = (2, 9, 8);
        let special = [-0.0, 0.0, f32::NEG_INFINITY, f32::INFINITY, -1e30, 1e-30];
        let values: Vec<f32> = (0..n * h * w * c)
            .map(|i| match i % 13 {
                0 => special[(i / 13) % special.len()],
                _ => (((i * 7919) % 2003) as f32 - 1001.0) / 64.0,
            })
            .collect();
        let (oh, ow) = (5, 4);
        let mut want = vec![0.0; n * oh * ow * c];
        max_pool_3x3_s2_p1_nhwc(&values, n, h, w, c, &mut want);
        let b: Vec<Bf16> = values.iter().map(|&v| Bf16::from_f32(v)).collect();
        let mut got = vec![Bf16::ZERO; want.len()];
        max_pool_3x3_s2_p1_nhwc(&b, n, h, w, c, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(*g, Bf16::from_f32(*w), "bf16 output {i}, {c} channels");
        }
        let codes: Vec<u8> = (0..values.len()).map(|i| ((i * 31) % 256) as u8).collect();
        let widened: Vec<f32> = codes.iter().map(|&v| v as f32).collect();
        let mut want8 = vec![0.0; want.len()];
        max_pool_3x3_s2_p1_nhwc(&widened, n, h, w, c, &mut want8);
        let mut got8 = vec![0u8; want.len()];
        max_pool_3x3_s2_p1_nhwc(&codes, n, h, w, c, &mut got8);
        for (g, w) in got8.iter().zip(&want8) {
            assert_eq!(*g as f32, *w, "u8, {c} channels");
        }
    }
}
