//! Packing for the bf16 kernels: B (weights) once per model in k-pairs, and the bf16 im2col.

use super::Bf16;
use crate::aligned::AlignedVec;
use crate::gemm::ConvGeometry;

/// Splits `k` into blocks of at most `kc_max` (a multiple of `align`), as even as possible in
/// units of `align`, every block but the last a multiple of `align`: `(k0, kc)` pairs.
pub(crate) fn k_blocks_aligned(k: usize, kc_max: usize, align: usize) -> Vec<(usize, usize)> {
    debug_assert!(kc_max.is_multiple_of(align));
    let groups = k.div_ceil(align);
    let count = groups.div_ceil(kc_max / align).max(1);
    let (base, extra) = (groups / count, groups % count);
    let mut k0 = 0;
    (0..count)
        .map(|i| {
            let g = base + usize::from(i < extra);
            let kc = (align * g).min(k - k0);
            let block = (k0, kc);
            k0 += kc;
            block
        })
        .collect()
}

/// Each K block is padded with zeros to a multiple of this many k (32: one AMX-BF16 tile row of
/// 64 bytes; ResNet-18's K are multiples of 32 except the stem's 147).
pub(crate) const K_PAD: usize = 32;

/// `kc` rounded up to [`K_PAD`]: the row length of packed A and the depth of a packed B block.
pub(crate) fn padded_k(kc: usize) -> usize {
    kc.div_ceil(K_PAD) * K_PAD
}

/// Packs a row-major `K x N` bf16 matrix into K blocks of NR-wide micro-panels. Within a panel,
/// for each pair of consecutive k: NR columns x 2 values (`[g][j][t]`, k = 2g + t), so that one
/// vector load gives each f32 lane the 2 weights of its column (the VNNI-2 layout AMX-BF16's B
/// tiles use too). Every block is zero-padded in K to a multiple of [`K_PAD`] (the AMX-BF16 tile
/// depth, so that every kernel runs whole k steps) and in N to a multiple of NR. Returns
/// `(k0, kc, offset)` per block (kc unpadded) and the data.
pub(crate) fn pack_b_pairs(
    b: &[Bf16],
    k: usize,
    n: usize,
    nr: usize,
    kc_max: usize,
) -> (Vec<(usize, usize, usize)>, AlignedVec<Bf16>) {
    let panels = n.div_ceil(nr);
    let mut data = AlignedVec::with_capacity((k + K_PAD) * panels * nr);
    let mut blocks = Vec::new();
    for (k0, kc) in k_blocks_aligned(k, kc_max, 32) {
        blocks.push((k0, kc, data.len()));
        for p in 0..panels {
            for g in 0..padded_k(kc) / 2 {
                for j in p * nr..(p + 1) * nr {
                    for t in 0..2 {
                        let kk = k0 + 2 * g + t;
                        data.push(if j < n && kk < k0 + kc {
                            b[kk * n + j]
                        } else {
                            Bf16::ZERO
                        });
                    }
                }
            }
        }
    }
    (blocks, data)
}

/// The explicit im2col matrix `[M, K]` of an NHWC bf16 input, zero outside the image (the
/// implicit packing's twin in tests).
pub fn im2col_nhwc_bf16(input: &[Bf16], g: &ConvGeometry) -> Vec<Bf16> {
    assert_eq!(input.len(), g.input_len());
    let k = g.k();
    let mut out = vec![Bf16::ZERO; g.m() * k];
    for (row, dst) in out.chunks_exact_mut(k).enumerate() {
        g.im2col_row_segment_padded(input, row, 0, k, dst, Bf16::ZERO);
    }
    out
}
