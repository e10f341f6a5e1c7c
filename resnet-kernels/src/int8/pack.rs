//! Packing for the INT8 kernels: B (weights) once per model in 4-k groups, and the `u8` im2col.

use crate::aligned::AlignedVec;
use crate::gemm::ConvGeometry;

/// Packs a row-major `K x N` byte matrix into K blocks of NR-wide micro-panels. Within a panel,
/// for each group of 4 consecutive k: NR columns x 4 bytes (`[g][j][t]`, k = 4g + t), so that
/// one vector load gives each `i32` lane the 4 weights of its column. With `split`, each group
/// is stored twice: first `h = w >> 1`, then `l = w & 1` (`w = 2h + l`, for the `vpmaddubsw`
/// kernels). Each K block zero-padded to a multiple of `k_align` (a multiple of 4: the kernel's
/// `K_ALIGN`), N to a multiple of NR. Returns `(k0, kc, offset)` per block and the data.
pub(crate) fn pack_b8(
    b: &[i8],
    k: usize,
    n: usize,
    nr: usize,
    kc_max: usize,
    split: bool,
    k_align: usize,
) -> (Vec<(usize, usize, usize)>, AlignedVec<i8>) {
    let panels = n.div_ceil(nr);
    let parts: &[fn(i8) -> i8] = if split {
        &[|w| w >> 1, |w| w & 1]
    } else {
        &[|w| w]
    };
    let mut data =
        AlignedVec::with_capacity(k.div_ceil(k_align) * k_align * panels * nr * parts.len());
    let mut blocks = Vec::new();
    for (k0, kc) in crate::tiling::k_blocks(k, kc_max, k_align) {
        blocks.push((k0, kc, data.len()));
        for p in 0..panels {
            for g in 0..kc.div_ceil(k_align) * k_align / 4 {
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
        g.im2col_row_segment_padded(input, row, 0, k, dst, pad);
    }
    out
}
