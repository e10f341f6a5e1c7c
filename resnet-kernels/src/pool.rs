//! Pooling, in both layouts: NHWC (channels innermost, for the native backend) and NCHW.

/// A value max-pooling works on: `f32` activations, or `u8` INT8 codes (quantisation is
/// monotonic, so the max of the codes is the code of the max).
pub trait PoolValue: Copy + Send + Sync {
    /// Lower than or equal to every value: a window starts from it, so padding never wins.
    const LOWEST: Self;
    /// The larger of two values (a branch-free max, which the compiler vectorises).
    fn max_of(self, other: Self) -> Self;
}

impl PoolValue for f32 {
    const LOWEST: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn max_of(self, other: f32) -> f32 {
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
    const LOWEST: u8 = 0;
    #[inline(always)]
    fn max_of(self, other: u8) -> u8 {
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
            dst.fill(T::LOWEST);
            for ih in (2 * oh).saturating_sub(1)..(2 * oh + 2).min(h) {
                for iw in (2 * ow).saturating_sub(1)..(2 * ow + 2).min(w) {
                    let src = &input[((n * h + ih) * w + iw) * c..][..c];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = d.max_of(s);
                    }
                }
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
}
