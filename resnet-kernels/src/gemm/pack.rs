//! Packing: B (weights) once per model, A (activations) per call, and im2col geometry.

use crate::aligned::AlignedVec;

/// A convolution's geometry in NHWC layout (`[N, H, W, C]`, channels innermost).
///
/// As a GEMM it has `M = N·OH·OW` rows (output pixels), `K = KH·KW·C` (window x channels, in
/// that order: the im2col row of a pixel is its window's pixels one after another, each with
/// its C channels) and one column per output channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvGeometry {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad - self.kernel) / self.stride + 1
    }

    /// GEMM rows: output pixels of the whole batch.
    pub fn m(&self) -> usize {
        self.batch * self.out_h() * self.out_w()
    }

    /// GEMM depth: `KH·KW·C`.
    pub fn k(&self) -> usize {
        self.kernel * self.kernel * self.in_c
    }

    /// Input elements expected.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_c
    }

    /// Copies columns `k0..k0+dst.len()` of im2col row `row` into `dst` (zeros in the padding).
    #[inline]
    pub(crate) fn im2col_row_segment(&self, input: &[f32], row: usize, k0: usize, dst: &mut [f32]) {
        self.im2col_row_segment_padded(input, row, k0, dst.len(), dst, 0.0)
    }

    /// Columns `k0..k0+len` of im2col row `row` into `dst[..len]`, for any element type, with
    /// `pad` where the window leaves the image (the INT8 path pads with the input's zero point,
    /// the code of the real value 0). Values of `dst` past `len` may be overwritten with garbage:
    /// a packed row passes its padding there, so that short runs are copied as whole chunks
    /// (the caller zeroes the padding afterwards).
    #[inline]
    pub(crate) fn im2col_row_segment_padded<T: Copy>(
        &self,
        input: &[T],
        row: usize,
        k0: usize,
        len: usize,
        dst: &mut [T],
        pad: T,
    ) {
        let at = Im2colCursor::new(self, row, k0);
        self.im2col_segment_at(input, &at, len, dst, pad)
    }

    /// [`Self::im2col_row_segment_padded`] at a cursor, which a packer walks from row to row
    /// with [`Im2colCursor::next_row`]: the cursor's divisions are done once per block, not
    /// seven times per row (which cost more than the copies of the stem's 21-byte runs).
    #[inline]
    pub(crate) fn im2col_segment_at<T: Copy>(
        &self,
        input: &[T],
        at: &Im2colCursor,
        len: usize,
        dst: &mut [T],
        pad: T,
    ) {
        assert!(
            dst.len() >= len,
            "im2col segment longer than its destination"
        );
        let (n, oh, ow) = (at.n, at.oh, at.ow);
        let (c_n, kernel) = (self.in_c, self.kernel);
        let (mut kh, mut kw, mut c0) = (at.kh, at.kw, at.c0);
        let k0 = at.k0;
        let mut k = k0;
        let end = k0 + len;
        while k < end {
            let ih = (oh * self.stride + kh) as isize - self.pad as isize;
            let iw = (ow * self.stride + kw) as isize - self.pad as isize;
            let row_inside = ih >= 0 && (ih as usize) < self.in_h;
            let (len, columns) = if row_inside && iw >= 0 && (iw as usize) < self.in_w {
                // Along a kernel row the window's pixels are neighbours in NHWC memory: copy
                // every in-bounds kw of this kernel row in one run (21 floats for the 7x7x3
                // stem instead of seven runs of 3).
                let kw_inside = (kernel - kw).min(self.in_w - iw as usize);
                let len = (kw_inside * c_n - c0).min(end - k);
                let at = ((n * self.in_h + ih as usize) * self.in_w + iw as usize) * c_n + c0;
                copy_run(&mut dst[k - k0..], &input[at..], len);
                (len, kw_inside)
            } else {
                let len = (c_n - c0).min(end - k);
                dst[k - k0..k - k0 + len].fill(pad);
                (len, 1)
            };
            k += len;
            // A run either ends the segment or covers `columns` whole window pixels.
            kw += columns;
            c0 = 0;
            if kw == kernel {
                (kh, kw) = (kh + 1, 0);
            }
        }
    }
}

/// Where an im2col row segment starts: the output pixel of the row (image, output row, output
/// column) and where column `k0` sits in the window (kernel row, kernel column, channel).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Im2colCursor {
    n: usize,
    oh: usize,
    ow: usize,
    k0: usize,
    kh: usize,
    kw: usize,
    c0: usize,
    out_h: usize,
    out_w: usize,
}

impl Im2colCursor {
    /// The cursor of row `row`, column `k0`.
    pub(crate) fn new(g: &ConvGeometry, row: usize, k0: usize) -> Im2colCursor {
        let (out_h, out_w) = (g.out_h(), g.out_w());
        let window = k0 / g.in_c;
        Im2colCursor {
            n: row / (out_h * out_w),
            oh: row / out_w % out_h,
            ow: row % out_w,
            k0,
            kh: window / g.kernel,
            kw: window % g.kernel,
            c0: k0 % g.in_c,
            out_h,
            out_w,
        }
    }

    /// The same column of the next row.
    #[inline]
    pub(crate) fn next_row(&mut self) {
        self.ow += 1;
        if self.ow == self.out_w {
            self.ow = 0;
            self.oh += 1;
            if self.oh == self.out_h {
                self.oh = 0;
                self.n += 1;
            }
        }
    }
}

/// Copies `src[..len]` to `dst[..len]` in whole 64-byte chunks, the last one overlapping the one
/// before, and, where both slices reach a chunk past `len`, the short run too as one chunk (the
/// bytes past `len` are garbage that the next run or the row's padding overwrites: runs are
/// written in increasing order). Constant-length copies compile to vector moves; a
/// `copy_from_slice` of a run's length is a `memmove` call, which for the stem's 21-byte and
/// layer1's 192-byte runs cost more than the bytes it moves.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T], len: usize) {
    let chunk = (64 / std::mem::size_of::<T>()).max(1);
    if len < chunk {
        if dst.len() >= chunk && src.len() >= chunk {
            dst[..chunk].copy_from_slice(&src[..chunk]);
        } else {
            dst[..len].copy_from_slice(&src[..len]);
        }
        return;
    }
    let mut i = 0;
    while i + chunk <= len {
        dst[i..i + chunk].copy_from_slice(&src[i..i + chunk]);
        i += chunk;
    }
    if i < len {
        let last = len - chunk;
        dst[last..len].copy_from_slice(&src[last..len]);
    }
}

/// The explicit im2col matrix `[M, K]` of an NHWC input (the implicit packing's scalar twin).
pub fn im2col_nhwc(input: &[f32], g: &ConvGeometry) -> Vec<f32> {
    assert_eq!(input.len(), g.input_len());
    let k = g.k();
    let mut out = vec![0.0; g.m() * k];
    for (row, dst) in out.chunks_exact_mut(k).enumerate() {
        g.im2col_row_segment(input, row, 0, dst);
    }
    out
}

/// Packs a row-major `K x N` matrix into K blocks of NR-wide micro-panels, k-major, zero-padded
/// to a multiple of NR columns. Returns `(k0, kc, offset)` per block and the packed data.
pub(crate) fn pack_b(
    b: &[f32],
    k: usize,
    n: usize,
    nr: usize,
    kc_max: usize,
) -> (Vec<(usize, usize, usize)>, AlignedVec<f32>) {
    let panels = n.div_ceil(nr);
    let mut data = AlignedVec::with_capacity(k * panels * nr);
    let mut blocks = Vec::new();
    for (k0, kc) in crate::tiling::k_blocks(k, kc_max, 1) {
        blocks.push((k0, kc, data.len()));
        for p in 0..panels {
            let (j0, j1) = (p * nr, ((p + 1) * nr).min(n));
            for kk in k0..k0 + kc {
                data.extend_from_slice(&b[kk * n + j0..kk * n + j1]);
                // The last panel is padded with zeros to the kernel's full width.
                data.resize(data.len() + nr - (j1 - j0), 0.0);
            }
        }
    }
    (blocks, data)
}
