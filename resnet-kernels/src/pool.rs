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
}

impl PoolValue for f32 {
    const LOWEST_KEY: f32 = f32::NEG_INFINITY;
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
    assert_eq!(input.len(), batch * h * w * c);
    assert_eq!(out.len(), batch * oh_n * ow_n * c);
    if out.is_empty() {
        return;
    }
    // One output row per task, in parallel: the stem's pool reads 3.2 MB of bf16 (0.8 MB of
    // u8) at batch 1, which on one core cost as much as a convolution of the layers after it.
    crate::team::for_each_chunk_mut(out, ow_n * c, |row, out_row| {
        let (n, oh) = (row / oh_n, row % oh_n);
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

    #[test]
    fn layouts_agree() {
        let (n, c, h, w) = (2, 3, 7, 6);
        let nchw: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 37) % 101) as f32 - 50.0)
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
                    assert_eq!(
                        a[(bi * c + ch) * oh * ow + p],
                        b[(bi * oh * ow + p) * c + ch]
                    );
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
            assert!((x - y).abs() < 1e-4);
        }
    }

    /// The bf16 and u8 pools (on keys) choose what the f32 pool chooses, negatives, signed
    /// zeros and infinities included: max-pooling only selects, so the results are equal.
    #[test]
    fn key_pools_select_as_the_f32_pool() {
        use crate::bf16::Bf16;
        let (n, h, w, c) = (2, 9, 8, 35);
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
            assert_eq!(*g, Bf16::from_f32(*w), "bf16 output {i}");
        }
        let codes: Vec<u8> = (0..values.len()).map(|i| ((i * 31) % 256) as u8).collect();
        let widened: Vec<f32> = codes.iter().map(|&v| v as f32).collect();
        let mut want8 = vec![0.0; want.len()];
        max_pool_3x3_s2_p1_nhwc(&widened, n, h, w, c, &mut want8);
        let mut got8 = vec![0u8; want.len()];
        max_pool_3x3_s2_p1_nhwc(&codes, n, h, w, c, &mut got8);
        for (g, w) in got8.iter().zip(&want8) {
            assert_eq!(*g as f32, *w);
        }
    }
}
