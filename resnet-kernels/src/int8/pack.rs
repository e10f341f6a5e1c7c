//! Packing for the INT8 kernels: B (weights) once per model in 4-k groups, and the `u8` im2col.

use crate::gemm::ConvGeometry;
use rayon::prelude::*;

/// Splits `k` into blocks of at most `kc_max` (a multiple of 4), as even as possible, every block
/// but the last a multiple of 4: `(k0, kc)` pairs.
pub(crate) fn k_blocks4(k: usize, kc_max: usize) -> Vec<(usize, usize)> {
    debug_assert!(kc_max.is_multiple_of(4));
    let groups = k.div_ceil(4);
    let count = groups.div_ceil(kc_max / 4).max(1);
    let (base, extra) = (groups / count, groups % count);
    let mut k0 = 0;
    (0..count)
        .map(|i| {
            let g = base + usize::from(i < extra);
            let kc = (4 * g).min(k - k0);
            let block = (k0, kc);
            k0 += kc;
            block
        })
        .collect()
}

/// Packs a row-major `K x N` byte matrix into K blocks of NR-wide micro-panels. Within a panel,
/// for each group of 4 consecutive k: NR columns x 4 bytes (`[g][j][t]`, k = 4g + t), so that
/// one vector load gives each `i32` lane the 4 weights of its column. With `split`, each group
/// is stored twice: first `h = w >> 1`, then `l = w & 1` (`w = 2h + l`, for the `vpmaddubsw`
/// kernels). Zero-padded to a multiple of 4 in K and of NR in N. Returns `(k0, kc, offset)` per
/// block and the data.
pub(crate) fn pack_b8(
    b: &[i8],
    k: usize,
    n: usize,
    nr: usize,
    kc_max: usize,
    split: bool,
) -> (Vec<(usize, usize, usize)>, Vec<i8>) {
    let panels = n.div_ceil(nr);
    let parts: &[fn(i8) -> i8] = if split {
        &[|w| w >> 1, |w| w & 1]
    } else {
        &[|w| w]
    };
    let mut data = Vec::with_capacity(k.div_ceil(4) * 4 * panels * nr * parts.len());
    let mut blocks = Vec::new();
    for (k0, kc) in k_blocks4(k, kc_max) {
        blocks.push((k0, kc, data.len()));
        for p in 0..panels {
            for g in 0..kc.div_ceil(4) {
                for part in parts {
                    for j in p * nr..(p + 1) * nr {
                        for t in 0..4 {
                            let kk = k0 + 4 * g + t;
                            data.push(if j < n && kk < k0 + kc {
                                part(b[kk * n + j])
                            } else {
                                0
                            });
                        }
                    }
                }
            }
        }
    }
    (blocks, data)
}

/// The explicit im2col matrix `[M, K]` of an NHWC `u8` input, `pad` outside the image (the
/// implicit packing's twin in tests).
pub fn im2col_nhwc_u8(input: &[u8], g: &ConvGeometry, pad: u8) -> Vec<u8> {
    assert_eq!(input.len(), g.input_len());
    let k = g.k();
    let mut out = vec![0; g.m() * k];
    for (row, dst) in out.chunks_exact_mut(k).enumerate() {
        g.im2col_row_segment_padded(input, row, 0, dst, pad);
    }
    out
}

/// The explicit im2col `[M, K]` of an NHWC `u8` input into `out`, by direct loops over
/// (image, output row, output column, kernel row) with each kernel row's in-bounds pixels copied
/// as one run, rows of output pixels in parallel. For inputs with few channels (the stem's 3),
/// where the implicit packing's per-segment index arithmetic costs more than the copies.
/// Equal to [`im2col_nhwc_u8`] (tested).
pub fn im2col_nhwc_u8_into(input: &[u8], g: &ConvGeometry, pad: u8, out: &mut Vec<u8>) {
    assert_eq!(input.len(), g.input_len());
    let (k, c, kn) = (g.k(), g.in_c, g.kernel);
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    out.resize(g.m() * k, 0);
    out.par_chunks_mut(ow_n * k)
        .enumerate()
        .for_each(|(line, dst)| {
            let (n, oh) = (line / oh_n, line % oh_n);
            for ow in 0..ow_n {
                let row = &mut dst[ow * k..][..k];
                for kh in 0..kn {
                    let seg = &mut row[kh * kn * c..][..kn * c];
                    let ih = (oh * g.stride + kh) as isize - g.pad as isize;
                    if ih < 0 || ih as usize >= g.in_h {
                        seg.fill(pad);
                        continue;
                    }
                    // Kernel columns kw with 0 <= ow·s + kw − pad < W.
                    let iw0 = (ow * g.stride) as isize - g.pad as isize;
                    let kw_lo = (-iw0).clamp(0, kn as isize) as usize;
                    let kw_hi = (g.in_w as isize - iw0).clamp(0, kn as isize) as usize;
                    seg[..kw_lo * c].fill(pad);
                    if kw_hi > kw_lo {
                        let at =
                            ((n * g.in_h + ih as usize) * g.in_w) as isize + iw0 + kw_lo as isize;
                        let at = at as usize * c;
                        seg[kw_lo * c..kw_hi * c]
                            .copy_from_slice(&input[at..at + (kw_hi - kw_lo) * c]);
                    }
                    seg[kw_hi.max(kw_lo) * c..].fill(pad);
                }
            }
        });
}
