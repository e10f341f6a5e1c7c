//! The "library GEMM" baseline: `matrixmultiply::sgemm` behind a safe slice interface, plus the
//! classic NCHW im2col it is fed with (K ordered channel, kernel row, kernel column).

/// `C[M, N] = A[M, K] · B[K, N]`, all row-major and contiguous, via `matrixmultiply`.
///
/// # Panics
/// If a slice length does not match its shape.
pub fn sgemm_library(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert_eq!(a.len(), m * k, "A must be M x K");
    assert_eq!(b.len(), k * n, "B must be K x N");
    assert_eq!(c.len(), m * n, "C must be M x N");
    // SAFETY: the three slices hold exactly M·K, K·N and M·N floats (asserted above), and the
    // strides describe contiguous row-major matrices inside them; C does not alias A or B
    // (it is a distinct &mut slice).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

/// im2col of one NCHW image `[C, H, W]` into `[C·KH·KW, OH·OW]` (row = channel, kernel row,
/// kernel column; column = output pixel), zero where the window leaves the image.
pub fn im2col_nchw(
    input: &[f32],
    (c_n, h, w): (usize, usize, usize),
    kernel: usize,
    stride: usize,
    pad: usize,
    out: &mut Vec<f32>,
) -> (usize, usize) {
    assert_eq!(input.len(), c_n * h * w);
    let oh_n = (h + 2 * pad - kernel) / stride + 1;
    let ow_n = (w + 2 * pad - kernel) / stride + 1;
    let cols = oh_n * ow_n;
    out.clear();
    out.resize(c_n * kernel * kernel * cols, 0.0);
    for c in 0..c_n {
        for kh in 0..kernel {
            for kw in 0..kernel {
                let row = &mut out[((c * kernel + kh) * kernel + kw) * cols..][..cols];
                for oh in 0..oh_n {
                    let ih = (oh * stride + kh) as isize - pad as isize;
                    if ih < 0 || ih >= h as isize {
                        continue;
                    }
                    for ow in 0..ow_n {
                        let iw = (ow * stride + kw) as isize - pad as isize;
                        if iw >= 0 && iw < w as isize {
                            row[oh * ow_n + ow] = input[(c * h + ih as usize) * w + iw as usize];
                        }
                    }
                }
            }
        }
    }
    (c_n * kernel * kernel, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_gemm_matches_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|v| v as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| 1.0 - v as f32 * 0.25).collect();
        let mut c = vec![f32::NAN; m * n];
        sgemm_library(m, n, k, &a, &b, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn im2col_nchw_by_hand() {
        let input: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut out = Vec::new();
        let (k, cols) = im2col_nchw(&input, (1, 3, 3), 3, 1, 1, &mut out);
        assert_eq!((k, cols), (9, 9));
        // Row (kh=1, kw=1) is the image itself; row (0, 0) shifts it down-right with zeros.
        assert_eq!(&out[4 * 9..5 * 9], &input[..]);
        assert_eq!(&out[..9], &[0., 0., 0., 0., 1., 2., 0., 4., 5.]);
    }
}
