//! INT8 convolution with A read in place, for the AMX lines: no im2col is packed. The input is
//! copied once into a zero-point-padded NHWC buffer; then for a stride-1 convolution the 32
//! rows of an A block are 32 consecutive pixels of that buffer (row stride: one pixel, `C`
//! bytes), and K step `s` (64 channels `c0..c0+64` of window position `(kh, kw)`) is the same
//! block shifted by `(kh * Wp + kw) * C + c0` bytes: one `tileloadd` per A tile, straight from
//! the activation ([`crate::amx::Gather2x2`]).
//!
//! Output rows are counted in the padded image's geometry: row `r` of image `n` is output
//! pixel `(r / Wp, r % Wp)`, so each image has `Ho * Wp` rows of which the `Wp - Wo` at the
//! end of each pixel row fall on the padding: they are computed (about 2 / Wp of the work) and
//! never stored. The sums are the im2col path's exactly (integer arithmetic, the same
//! products; the padding holds the zero point, which is what im2col writes outside the image),
//! so the two paths agree bit for bit (tested).

use super::loops::tile_requant;
use super::{PackedB8, Requant};
use crate::aligned::AlignedVec;
use crate::amx::{CBlock, Gather2x2, TileExec, K_STEP_BYTES};
use crate::gemm::ConvGeometry;
use crate::tiling::{SharedMut, WorkSplit};
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// Rows and columns of one block (the AMX kernels' 2 x 2 tiles).
const MR: usize = 32;
const NR: usize = 32;
/// Most K steps one K block may take (its offsets live on the stack).
const MAX_STEPS: usize = 128;

thread_local! {
    /// The caller's zero-point-padded copy of the input, reused across calls.
    static PADDED: RefCell<AlignedVec<u8>> = const { RefCell::new(AlignedVec::new()) };
    /// Each worker's `i32` partial sums when K takes several blocks.
    static ACC: RefCell<AlignedVec<i32>> = const { RefCell::new(AlignedVec::new()) };
}

/// Whether the convolution's shape suits [`conv`]: stride 1, channels in whole 64-byte tile
/// rows.
pub(crate) fn shape_applies(g: &ConvGeometry) -> bool {
    g.stride == 1 && g.in_c.is_multiple_of(K_STEP_BYTES)
}

/// Whether [`conv`] computes this convolution with `b`: its shape ([`shape_applies`]), and K
/// blocks of whole steps (at most [`MAX_STEPS`] each).
pub(crate) fn applies(g: &ConvGeometry, b: &PackedB8) -> bool {
    shape_applies(g)
        && g.k() == b.k
        && b.blocks
            .iter()
            .all(|&(_, kc, _)| kc.is_multiple_of(K_STEP_BYTES) && kc / K_STEP_BYTES <= MAX_STEPS)
}

/// `C = requant(conv(input, B))` on the tile unit `T` ([`super::ConvDirect`]).
pub(crate) fn conv<T: TileExec>(
    input: &[u8],
    g: &ConvGeometry,
    pad_code: u8,
    b: &PackedB8,
    c: &mut [u8],
    ldc: usize,
    req: &Requant<'_>,
) {
    debug_assert!(applies(g, b));
    let ch = g.in_c;
    let (hp, wp) = (g.in_h + 2 * g.pad, g.in_w + 2 * g.pad);
    let (ho, wo) = (g.out_h(), g.out_w());
    let n = b.n;
    // Rows per image in the padded geometry. The last block of an image reads up to MR - 1
    // rows past them and the window reaches (kernel - 1) * (Wp + 1) pixels further: that
    // many pixels of slack after the last image keep every load inside the buffer.
    let rows_img = ho * wp;
    let image_px = hp * wp;
    let slack_px = MR + g.kernel * (wp + 1);
    let c_out = SharedMut::new(c.as_mut_ptr());
    PADDED.with(|buf| {
        let mut padded = buf.borrow_mut();
        pad_input(input, g, pad_code, image_px, slack_px, &mut padded);
        let padded: &[u8] = &padded;
        let split = WorkSplit::new(rows_img, n, MR, NR, b.blocking);
        let per_image = split.items();
        let multi = b.blocks.len() > 1;
        crate::team::for_each(g.batch * per_image, |index| {
            let (image, item) = (index / per_image, split.item(index % per_image));
            let ld_scratch = (item.j_end - item.j_begin).div_ceil(NR) * NR;
            ACC.with(|sbuf| {
                let mut scratch = sbuf.borrow_mut();
                if multi {
                    // The first K block overwrites every sum it later reads: grow, never clear.
                    let len = item.rows.div_ceil(MR) * MR * ld_scratch;
                    if scratch.len() < len {
                        scratch.resize(len, 0);
                    }
                }
                let mut offsets = [0usize; MAX_STEPS];
                for (bi, &(k0, kc, offset)) in b.blocks.iter().enumerate() {
                    let steps = kc / K_STEP_BYTES;
                    // Step s: window position (kh, kw) and channels c0.. of K index k0 + 64 s.
                    for (s, o) in offsets[..steps].iter_mut().enumerate() {
                        let k = k0 + s * K_STEP_BYTES;
                        let (tap, c0) = (k / ch, k % ch);
                        let (kh, kw) = (tap / g.kernel, tap % g.kernel);
                        *o = (kh * wp + kw) * ch + c0;
                    }
                    let (accumulate, last) = (bi > 0, bi + 1 == b.blocks.len());
                    for j0 in (item.j_begin..item.j_end).step_by(NR) {
                        let cols = NR.min(n - j0);
                        let panel = kc * NR;
                        let b_panel = &b.data[offset + (j0 / NR) * panel..][..panel];
                        for i0 in (item.m0..item.m0 + item.rows).step_by(MR) {
                            let rows = MR.min(item.m0 + item.rows - i0);
                            let first_px = image * image_px + i0;
                            let mut block = MaybeUninit::<CBlock>::uninit();
                            let job = Gather2x2 {
                                a: padded[first_px * ch..].as_ptr(),
                                lda: ch,
                                a_offsets: offsets.as_ptr(),
                                b: b_panel.as_ptr().cast(),
                                steps,
                                c: block.as_mut_ptr().cast(),
                            };
                            // SAFETY: the line is runnable (checked when B was packed); A's 32
                            // rows past every offset lie inside `padded` (its slack, above);
                            // the panel holds `steps` x 16 rows of 128 bytes; `block` is the
                            // 32 x 32 result, written whole before it is read.
                            unsafe { crate::amx::int8_gather_block::<T>(&job) };
                            let sums = block.as_ptr().cast::<i32>();
                            let acc = if multi {
                                scratch[(i0 - item.m0) * ld_scratch + (j0 - item.j_begin)..]
                                    .as_mut_ptr()
                            } else {
                                std::ptr::null_mut()
                            };
                            if !last {
                                // SAFETY: `sums` holds 32 x 32; the scratch holds MR-rounded
                                // rows of ld_scratch >= j0 - j_begin + NR sums from `acc`.
                                unsafe {
                                    crate::amx::int8_epilogue::<T>(
                                        sums, rows, acc, ld_scratch, accumulate, None,
                                    )
                                };
                                continue;
                            }
                            // Runs of rows inside one output pixel row are consecutive rows
                            // of C: one epilogue call each; the padding's rows are skipped.
                            let mut r = 0;
                            while r < rows {
                                let (oy, ox) = ((i0 + r) / wp, (i0 + r) % wp);
                                if ox >= wo {
                                    r += wp - ox; // the rest of this row is padding
                                    continue;
                                }
                                let run = (wo - ox).min(rows - r);
                                let at = (image * ho + oy) * wo + ox;
                                let t = tile_requant(req, c_out, ldc, at, j0);
                                // SAFETY: rows r..r+run of `sums` (and of the scratch, when
                                // used) hold NR sums; output rows at..at+run < M and columns
                                // j0.. are inside C, the residual, bias and scale (checked by
                                // the caller) and belong to this work item.
                                unsafe {
                                    let (sums_r, acc_r) =
                                        (sums.add(r * NR), acc.wrapping_add(r * ld_scratch));
                                    if cols == NR {
                                        crate::amx::int8_epilogue::<T>(
                                            sums_r,
                                            run,
                                            acc_r,
                                            ld_scratch,
                                            accumulate,
                                            Some(&t),
                                        );
                                    } else {
                                        for i in 0..run {
                                            for j in 0..cols {
                                                let mut v = *sums_r.add(i * NR + j);
                                                if accumulate {
                                                    v = v.wrapping_add(
                                                        *acc_r.add(i * ld_scratch + j),
                                                    );
                                                }
                                                *t.c.add(i * ldc + j) =
                                                    super::scalar::requant_tile_element(
                                                        v, &t, i, j,
                                                    );
                                            }
                                        }
                                    }
                                }
                                r += run;
                            }
                        }
                    }
                }
            });
        });
    });
}

/// `out` = the batch in NHWC with `g.pad` pixels of `pad_code` around each image, the images
/// one after another (`image_px` pixels each), then at least `slack_px` pixels (any value: only
/// rows that are never stored read them). Every padded row is written whole, in parallel on the
/// team; the buffer is only grown, so a warm call neither allocates nor fills twice.
fn pad_input(
    input: &[u8],
    g: &ConvGeometry,
    pad_code: u8,
    image_px: usize,
    slack_px: usize,
    out: &mut AlignedVec<u8>,
) {
    let ch = g.in_c;
    let (hp, wp) = (g.in_h + 2 * g.pad, g.in_w + 2 * g.pad);
    let images_len = g.batch * image_px * ch;
    let len = images_len + slack_px * ch;
    if out.len() < len {
        out.resize(len, pad_code);
    }
    let (row_in, side) = (g.in_w * ch, g.pad * ch);
    crate::team::for_each_chunk_mut(&mut out[..images_len], wp * ch, |i, row| {
        let (image, py) = (i / hp, i % hp);
        if py < g.pad || py >= g.pad + g.in_h {
            row.fill(pad_code);
            return;
        }
        let src = &input[(image * g.in_h + py - g.pad) * row_in..][..row_in];
        row[..side].fill(pad_code);
        row[side..side + row_in].copy_from_slice(src);
        row[side + row_in..].fill(pad_code);
    });
}
