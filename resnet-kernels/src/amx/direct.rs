//! A convolution with A read in place, for the AMX lines of both families (INT8 and bf16): no
//! im2col is packed. The input is copied once into a padded NHWC buffer whose rows are split by
//! their index modulo the stride ([`SplitRows`]; one part at stride 1). Then the 32 rows of an A
//! block are 32 consecutive output pixels, `stride` pixels apart in that buffer (row stride:
//! `stride x C` elements), and K step `s` (64 bytes of channels `c0..` of window position
//! `(kh, kw)`) is the same block shifted to part `kh % stride`, `kh / stride` rows down and
//! `kw` pixels right: one `tileloadd` per A tile, straight from the activation
//! ([`super::Gather2x2`]).
//!
//! Output rows are counted in the split buffer's geometry: row `r` of image `n` is output
//! pixel `(r / Wq, r % Wq)` with `Wq` the padded width divided by the stride, so each image has
//! `Ho * Wq` rows of which the `Wq - Wo` at the end of each pixel row fall on the padding: they
//! are computed (about 2 / Wp of the work at stride 1, 1 / Wq at stride 2 with padding 1, none
//! for a 1x1 stride-2 convolution) and never stored. Every kept row's tiles hold exactly what
//! the im2col path's tiles hold (the padding is what im2col writes outside the image) and go
//! through the same instructions in the same order, so the two paths agree bit for bit in both
//! families (tested).
//!
//! What differs between the families (element, sums, epilogue) is [`InPlaceFamily`]; the
//! loop, the padded copy and the row bookkeeping are here once.

use super::{CBlock, Dot, Gather2x2, TileExec, K_STEP_BYTES, PANEL_ROW_BYTES};
use crate::aligned::{AlignedVec, Plain};
use crate::gemm::ConvGeometry;
use crate::tiling::{Blocking, WorkItem, WorkSplit};
use std::mem::MaybeUninit;

/// Rows and columns of one block (the AMX kernels' 2 x 2 tiles).
pub(crate) const MR: usize = 32;
pub(crate) const NR: usize = 32;
/// Most K steps one K block may take (its offsets live on the stack).
const MAX_STEPS: usize = 128;

/// The packed weights as the loop reads them: K blocks of 32-column VNNI panels (16 rows of
/// 128 bytes per 64-byte K step), as both families' AMX lines pack them.
pub(crate) struct Panels<'a> {
    /// `(k0, kc, offset)` of each K block, `kc` and `offset` in elements.
    pub blocks: &'a [(usize, usize, usize)],
    /// The packed data.
    pub bytes: &'a [u8],
    /// Columns (N).
    pub n: usize,
    /// The work split's sizes.
    pub blocking: Blocking,
}

/// One family's part of the in-place convolution: its element, sums and epilogue.
pub(crate) trait InPlaceFamily: Sync {
    /// The activation element (`u8` codes, bf16).
    type Elem: Plain + Send + Sync;
    /// The sums (`i32`, `f32`).
    type Sum: Plain + Default + Send;
    /// The epilogue's destination for one tile.
    type Tile;
    /// The tile dot product.
    const DOT: Dot;
    /// Whether a zero weight times any element of `input` adds exactly nothing: always for
    /// integer products; for bf16, unless `input` holds an infinity or a NaN (whose product
    /// with zero is NaN). Then tile rows may run past a window into the next pixels' values.
    /// Asked of each input row as it is copied.
    fn zero_products_exact(input: &[Self::Elem]) -> bool;
    /// Runs `f` on this thread's padded copy of the input (reused across calls).
    fn with_padded<R>(f: impl FnOnce(&mut AlignedVec<Self::Elem>) -> R) -> R;
    /// Runs `f` on this worker's partial sums (reused across calls).
    fn with_scratch<R>(f: impl FnOnce(&mut AlignedVec<Self::Sum>) -> R) -> R;
    /// The epilogue's destination at row `at`, column `j0` of C.
    fn tile(&self, at: usize, j0: usize) -> Self::Tile;
    /// The family's AMX block epilogue on `rows` rows of 32 finished sums (row stride 32) into
    /// `out` (partial sums never reach it: the kernel continues them in its C tiles).
    ///
    /// # Safety
    /// As the family's micro-kernel's `out`; `sums` holds `rows` rows of 32.
    unsafe fn epilogue<T: TileExec>(sums: *const Self::Sum, rows: usize, out: &Self::Tile);
    /// One sum through the scalar twin's epilogue into element `(i, j)` of `tile` (the columns
    /// of an edge panel).
    ///
    /// # Safety
    /// `(i, j)` is inside the tile's rows and columns of C and the epilogue's operands.
    unsafe fn store_element(v: Self::Sum, tile: &Self::Tile, i: usize, j: usize);
}

/// How an in-place convolution lays its input out for the tiles to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InPlaceLayout {
    /// A padded copy of the NHWC input, its rows split by the stride: channels in whole 64-byte
    /// tile rows; the weights packed as for the family's GEMM.
    Padded,
    /// As [`InPlaceLayout::Padded`] at stride 1, with the input already laid out so: a
    /// [`Frame`] the layer before wrote its output into. Nothing is copied.
    Framed,
    /// One kernel row's window per tile row (the stem: 7 pixels x 3 channels); the weights with
    /// zero rows between kernel rows (the family's `pack_window_rows`). bf16 writes each output
    /// pixel's windows once; INT8 reads them straight from a padded copy of the input.
    WindowRows,
    /// As [`InPlaceLayout::WindowRows`], with the input already the padded copy split by row
    /// parity that it reads a finite input from (`bf16::window_rows_input_bf16`, made straight
    /// from the network's NCHW f32 input; every value finite). Nothing is copied.
    StridedRows,
}

/// An NHWC activation stored as the in-place path reads a stride-1 convolution's input: each
/// image inside a frame of `pad` zero pixels, the images one after another, then slack (zeros)
/// for the rows the last block reads past the last image. A layer whose output feeds such a
/// convolution can write it there through its epilogue ([`Frame::row`]), and the convolution
/// then reads it with [`InPlaceLayout::Framed`]: no copy (about 4% of a bf16 forward pass on
/// the Xeon model 167 went to those copies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Images.
    pub batch: usize,
    /// Height of an image inside its frame.
    pub h: usize,
    /// Width of an image inside its frame.
    pub w: usize,
    /// Channels of a pixel.
    pub ch: usize,
    /// The frame's width (the reading convolution's padding).
    pub pad: usize,
    /// The reading convolution's kernel side (how far its windows reach: the slack).
    pub kernel: usize,
}

impl Frame {
    /// The frame the in-place path reads `g`'s input from, if `g` can be read framed
    /// (stride 1).
    pub fn for_input(g: &ConvGeometry) -> Option<Frame> {
        (g.stride == 1).then_some(Frame {
            batch: g.batch,
            h: g.in_h,
            w: g.in_w,
            ch: g.in_c,
            pad: g.pad,
            kernel: g.kernel,
        })
    }

    /// Elements of one image with its frame.
    fn image_elems(&self) -> usize {
        (self.h + 2 * self.pad) * (self.w + 2 * self.pad) * self.ch
    }

    /// Elements the buffer needs: the framed images, then the slack [`SplitRows::copy`] adds
    /// for a stride-1 convolution of this kernel.
    pub fn len(&self) -> usize {
        self.batch * self.image_elems() + (MR + 1 + self.kernel) * self.ch
    }

    /// Whether the frame holds no image.
    pub fn is_empty(&self) -> bool {
        self.batch == 0
    }

    /// The framed pixel (index of its first channel, in pixels) of dense pixel `r` (`(n, y,
    /// x)` counted row-major). Consecutive pixels of one image row stay consecutive.
    pub fn row(&self, r: usize) -> usize {
        let per_image = self.h * self.w;
        let (n, yx) = (r / per_image, r % per_image);
        let (y, x) = (yx / self.w, yx % self.w);
        let wp = self.w + 2 * self.pad;
        (n * (self.h + 2 * self.pad) + y + self.pad) * wp + x + self.pad
    }

    /// Writes `zero` over everything in `buf` but the images' pixels: the frames and the
    /// slack. The images' pixels are left for the epilogue to write.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Frame::len`].
    pub fn clear<E: Plain>(&self, buf: &mut [E], zero: E) {
        assert!(buf.len() >= self.len(), "framed buffer too small");
        let (wp, p, ch) = (self.w + 2 * self.pad, self.pad, self.ch);
        let images = self.batch * self.image_elems();
        for image in buf[..images].chunks_exact_mut(self.image_elems()) {
            let (top, rest) = image.split_at_mut(p * wp * ch);
            top.fill(zero);
            let (rows, bottom) = rest.split_at_mut(self.h * wp * ch);
            bottom.fill(zero);
            for row in rows.chunks_exact_mut(wp * ch) {
                row[..p * ch].fill(zero);
                row[(p + self.w) * ch..].fill(zero);
            }
        }
        buf[images..self.len()].fill(zero);
    }
}

/// Checks the input's length against `g` in `layout` (a bug in the caller otherwise): the
/// dense NHWC input, or a [`Frame`] of it.
pub(crate) fn check_input_len<E>(g: &ConvGeometry, layout: InPlaceLayout, len: usize) {
    match layout {
        InPlaceLayout::Framed => {
            let frame = Frame::for_input(g).expect("a framed input is read at stride 1");
            assert!(len >= frame.len(), "framed input too small");
        }
        InPlaceLayout::Padded | InPlaceLayout::WindowRows => {
            assert_eq!(len, g.input_len(), "input size")
        }
        InPlaceLayout::StridedRows => {
            assert!(len >= strided_rows_len::<E>(g), "prepared input too small")
        }
    }
}

/// The layout an in-place convolution of elements `E` would use for this shape, if any:
/// [`InPlaceLayout::Padded`] where it applies, else [`InPlaceLayout::WindowRows`].
pub(crate) fn layout_for<E>(g: &ConvGeometry) -> Option<InPlaceLayout> {
    if shape_applies::<E>(g) {
        Some(InPlaceLayout::Padded)
    } else if window_rows_apply::<E>(g.kernel, g.in_c) {
        Some(InPlaceLayout::WindowRows)
    } else {
        None
    }
}

/// Bytes of one element of `E`.
const fn bytes_of<E>() -> usize {
    std::mem::size_of::<E>()
}

/// Whether the convolution's shape suits [`conv`]: channels in whole 64-byte tile rows (any
/// stride: the rows are split by the stride, [`SplitRows`]).
pub(crate) fn shape_applies<E>(g: &ConvGeometry) -> bool {
    g.stride >= 1 && (g.in_c * bytes_of::<E>()).is_multiple_of(K_STEP_BYTES)
}

/// Whether [`conv`] computes this convolution with weights of K `k` in `blocks`: its shape
/// ([`shape_applies`]) and K blocks of whole steps (at most [`MAX_STEPS`] each).
pub(crate) fn applies<E>(g: &ConvGeometry, k: usize, blocks: &[(usize, usize, usize)]) -> bool {
    let step = K_STEP_BYTES / bytes_of::<E>();
    shape_applies::<E>(g)
        && g.k() == k
        && blocks
            .iter()
            .all(|&(_, kc, _)| kc.is_multiple_of(step) && kc / step <= MAX_STEPS)
}

/// Where the rows of A lie in a prepared buffer, and which of them are rows of C.
struct RowLayout {
    /// Images in this pass.
    batch: usize,
    /// The row of C this pass's first image starts at.
    out_row0: usize,
    /// Elements from one image's first A row to the next image's.
    image_elems: usize,
    /// Elements from one A row to the next (the tile loads' stride).
    lda: usize,
    /// A rows per output pixel row (so `out_h x row_pitch` per image): those past `out_w` are
    /// computed and never stored.
    row_pitch: usize,
    /// The output's width and height.
    out_w: usize,
    out_h: usize,
}

/// `C = epilogue(A · B)` on the tile unit `T`, the A rows of K step `s` of a block read at
/// `buffer + row * lda + offsets[s]` (bytes; `step_offsets(k0, offsets)` fills them for the
/// block starting at K index `k0`).
fn gather_gemm<F: InPlaceFamily, T: TileExec>(
    family: &F,
    buffer: &[F::Elem],
    rows: &RowLayout,
    b: &Panels<'_>,
    step_offsets: impl Fn(usize, &mut [usize]) + Sync,
) {
    let elem = bytes_of::<F::Elem>();
    let step = K_STEP_BYTES / elem;
    let n = b.n;
    let (wp, wo, ho) = (rows.row_pitch, rows.out_w, rows.out_h);
    let split = WorkSplit::new(ho * wp, n, MR, NR, b.blocking);
    let per_image = split.items();
    let multi = b.blocks.len() > 1;
    let streams_b = rows.batch * ho * wp <= STREAMED_B_ROWS;
    crate::team::for_each(rows.batch * per_image, |index| {
        let (image, item) = (index / per_image, split.item(index % per_image));
        let blocks_j = (item.j_end - item.j_begin).div_ceil(NR);
        F::with_scratch(|scratch| {
            if multi {
                // One 32 x 32 block of partial sums per C block of the item, each laid out as
                // the kernel's C block, so that the next K block loads it into its C tiles.
                // The first K block overwrites every sum it later reads: grow, never clear.
                let len = item.rows.div_ceil(MR) * blocks_j * MR * NR;
                if scratch.len() < len {
                    scratch.resize(len, F::Sum::default());
                }
            }
            let mut offsets = [0usize; MAX_STEPS];
            for (bi, &(k0, kc, offset)) in b.blocks.iter().enumerate() {
                let steps = kc / step;
                step_offsets(k0, &mut offsets[..steps]);
                // The last image's last block reads 32 rows from its first row, each 64 bytes
                // past its farthest offset: the preparer's slack must cover it.
                debug_assert!({
                    let last_row = (rows.batch - 1) * rows.image_elems
                        + ((ho * wp).div_ceil(MR) * MR - 1) * rows.lda;
                    let farthest = offsets[..steps].iter().max().copied().unwrap_or(0);
                    last_row * elem + farthest + K_STEP_BYTES <= buffer.len() * elem
                });
                let (continues, last) = (bi > 0, bi + 1 == b.blocks.len());
                let panel_bytes = kc * NR * elem;
                for j0 in (item.j_begin..item.j_end).step_by(NR) {
                    let cols = NR.min(n - j0);
                    let b_panel =
                        &b.bytes[offset * elem + (j0 / NR) * panel_bytes..][..panel_bytes];
                    let prefetch = if streams_b {
                        NextPanel::new(b, bi, j0, &item, elem).spread(item.rows.div_ceil(MR), steps)
                    } else {
                        Prefetch::NONE
                    };
                    for (call, i0) in (item.m0..item.m0 + item.rows).step_by(MR).enumerate() {
                        let rows_here = MR.min(item.m0 + item.rows - i0);
                        let mut block = MaybeUninit::<CBlock>::uninit();
                        let (c_in, c) = if multi {
                            let at = ((i0 - item.m0) / MR * blocks_j + (j0 - item.j_begin) / NR)
                                * MR
                                * NR;
                            let partial = scratch[at..][..MR * NR].as_mut_ptr().cast::<u8>();
                            (
                                if continues {
                                    partial
                                } else {
                                    std::ptr::null_mut()
                                },
                                partial,
                            )
                        } else {
                            (std::ptr::null_mut(), block.as_mut_ptr().cast())
                        };
                        let job = Gather2x2 {
                            a: buffer[image * rows.image_elems + i0 * rows.lda..]
                                .as_ptr()
                                .cast(),
                            lda: rows.lda * elem,
                            a_offsets: offsets.as_ptr(),
                            b: b_panel.as_ptr(),
                            steps,
                            c_in,
                            ldc_in: PANEL_ROW_BYTES,
                            c,
                            ldc: PANEL_ROW_BYTES,
                            prefetch: prefetch.at(call),
                            prefetch_lines: prefetch.lines_per_step,
                        };
                        // SAFETY: the line is runnable (checked when B was packed); A's 32
                        // rows past every offset lie inside `buffer` (the preparers' slack);
                        // the panel holds `steps` x 16 rows of 128 bytes; `c` is a 32 x 32
                        // block (of the scratch, or `block`), written whole before it is
                        // read, and `c_in` the same scratch block written by the K block
                        // before.
                        unsafe { T::with_thread_tiles(|t| t.gather_2x2(F::DOT, &job)) };
                        if !last {
                            continue;
                        }
                        let sums = c.cast::<F::Sum>().cast_const();
                        // Runs of rows inside one output pixel row are consecutive rows
                        // of C: one epilogue call each; the rows past the width are skipped.
                        let mut r = 0;
                        while r < rows_here {
                            let (oy, ox) = ((i0 + r) / wp, (i0 + r) % wp);
                            if ox >= wo {
                                r += wp - ox; // the rest of this row is padding
                                continue;
                            }
                            let run = (wo - ox).min(rows_here - r);
                            let tile = family.tile(rows.out_row0 + (image * ho + oy) * wo + ox, j0);
                            // SAFETY: rows r..r+run of `sums` hold NR sums; output rows
                            // at..at+run < M and columns j0..j0+cols are inside C and the
                            // epilogue's operands (checked by the caller) and belong to this
                            // work item.
                            unsafe {
                                let sums_r = sums.add(r * NR);
                                if cols == NR {
                                    F::epilogue::<T>(sums_r, run, &tile);
                                } else {
                                    for i in 0..run {
                                        for j in 0..cols {
                                            F::store_element(*sums_r.add(i * NR + j), &tile, i, j);
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
}

/// Most rows of C (a pass's, all images) for which [`gather_gemm`] prefetches B: 8 row blocks.
///
/// A layer's weights come from L3 once per forward pass (the network's 22 MB of bf16 do not fit
/// L2), and the hardware prefetchers start on a panel only when its first lines are read: the
/// tile loads of each panel's first row block wait on L3. With few row blocks that wait is most
/// of the layer (batch 1's layer3 and layer4, 7 and 2 row blocks), and fetching the next panel
/// during the current one's calls took 5-14% off those layers' time on the Xeon model 167 (2
/// threads, interleaved runs, 2026-12-07). With many (batch 8: 16 to 210), the panels are read
/// again from L2 by the later blocks, the wait is a small part, and the prefetches (up to 32
/// lines per K step where an item has one row block) made layers 2-12% slower.
const STREAMED_B_ROWS: usize = 8 * MR;

/// The B panel a work item reads after the current one: the next panel of this K block, else
/// the item's first panel of the next K block. The calls on the current panel fetch it into
/// L2 as they run, a share per call and a few lines per K step ([`Gather2x2::prefetch`]; see
/// [`STREAMED_B_ROWS`] for when).
struct NextPanel {
    /// Its first byte, and its length in bytes (0: none).
    at: *const u8,
    bytes: usize,
}

/// [`NextPanel`] cut into the calls on the current panel: call `i` fetches from `at(i)`.
struct Prefetch {
    at: *const u8,
    per_call: usize,
    /// Cache lines per K step.
    lines_per_step: usize,
}

impl NextPanel {
    fn new(b: &Panels<'_>, block: usize, j0: usize, item: &WorkItem, elem: usize) -> Self {
        let panel = |(_, kc, offset): (usize, usize, usize), j: usize| {
            let bytes = kc * NR * elem;
            NextPanel {
                at: b.bytes[offset * elem + (j / NR) * bytes..].as_ptr(),
                bytes,
            }
        };
        if j0 + NR < item.j_end {
            panel(b.blocks[block], j0 + NR)
        } else if let Some(&next) = b.blocks.get(block + 1) {
            panel(next, item.j_begin)
        } else {
            NextPanel {
                at: std::ptr::null(),
                bytes: 0,
            }
        }
    }

    /// The panel in equal shares over `calls` calls of `steps` K steps each.
    fn spread(&self, calls: usize, steps: usize) -> Prefetch {
        const LINE: usize = 64;
        let lines = self.bytes.div_ceil(LINE);
        let lines_per_step = lines.div_ceil(calls.max(1)).div_ceil(steps.max(1));
        Prefetch {
            at: self.at,
            per_call: lines_per_step * steps * LINE,
            lines_per_step,
        }
    }
}

impl Prefetch {
    const NONE: Prefetch = Prefetch {
        at: std::ptr::null(),
        per_call: 0,
        lines_per_step: 0,
    };

    /// Where call `i` starts (past the panel for the last calls when the shares round up:
    /// a prefetch reads nothing, wherever it points).
    fn at(&self, call: usize) -> *const u8 {
        self.at.wrapping_add(call * self.per_call)
    }
}

/// The padded input with its rows split by their index modulo the stride (one part at stride
/// 1), the layout [`conv`] and [`conv_strided_rows`] read A from: part `p` of an image holds
/// its padded rows `p, p + stride, ...`, each `wp` pixels (the padded width rounded up to a
/// multiple of the stride). Output pixel `(oy, ox)`'s window position `(kh, kw)` is then at
/// part `kh % stride`, row `oy + kh / stride`, pixel `ox * stride + kw`: consecutive output
/// pixels are `stride` pixels apart, across output rows too when rows are counted `wq = wp /
/// stride` pixels wide.
struct SplitRows {
    /// The stride (the number of parts) and the channels.
    stride: usize,
    ch: usize,
    /// Pixels per row, a multiple of the stride; output rows counted per image row.
    wp: usize,
    wq: usize,
    /// Rows per part.
    q_rows: usize,
    /// Parts the windows reach (`min(stride, kernel)`; a 1x1 stride-2 convolution reads only
    /// the even rows, so the odd ones are not copied).
    parts_read: usize,
}

impl SplitRows {
    fn new(g: &ConvGeometry) -> Self {
        let s = g.stride;
        let wq = (g.in_w + 2 * g.pad).div_ceil(s);
        SplitRows {
            stride: s,
            ch: g.in_c,
            wp: wq * s,
            wq,
            q_rows: (g.in_h + 2 * g.pad).div_ceil(s),
            parts_read: s.min(g.kernel),
        }
    }

    /// Elements of one part.
    fn part_elems(&self) -> usize {
        self.q_rows * self.wp * self.ch
    }

    /// Where the A rows of a batch of `g`'s images lie in the split copy.
    fn rows(&self, g: &ConvGeometry) -> RowLayout {
        RowLayout {
            batch: g.batch,
            out_row0: 0,
            image_elems: self.stride * self.part_elems(),
            lda: self.stride * self.ch,
            row_pitch: self.wq,
            out_w: g.out_w(),
            out_h: g.out_h(),
        }
    }

    /// Elements from an output pixel's A row to its window position `(kh, kw)`, channel `c0`.
    fn offset(&self, kh: usize, kw: usize, c0: usize) -> usize {
        let s = self.stride;
        (kh % s) * self.part_elems() + ((kh / s) * self.wp + kw) * self.ch + c0
    }

    /// Writes the split copy of `input` into `buf`, then `slack` elements of `pad`: the last
    /// block reads up to `MR - 1` rows (`stride x C` elements each) past the last image's
    /// last output row, each as far as its window reaches. Returns whether `check` holds for
    /// every input row copied.
    fn copy<E: Plain + Send + Sync>(
        &self,
        input: &[E],
        g: &ConvGeometry,
        pad: E,
        slack: usize,
        buf: &mut AlignedVec<E>,
        check: impl Fn(&[E]) -> bool + Sync,
    ) -> bool {
        let row_in = g.in_w * g.in_c;
        self.fill(g, pad, slack, buf, |image, y, row| {
            let src = &input[(image * g.in_h + y) * row_in..][..row_in];
            row.copy_from_slice(src);
            check(src)
        })
    }

    /// [`SplitRows::copy`] with each image row written by `fill(image, y, row)` (the row's
    /// `in_w x C` values; returns what the check says of them).
    fn fill<E: Plain + Send + Sync>(
        &self,
        g: &ConvGeometry,
        pad: E,
        slack: usize,
        buf: &mut AlignedVec<E>,
        fill: impl Fn(usize, usize, &mut [E]) -> bool + Sync,
    ) -> bool {
        let slack = slack + (MR + 1) * self.stride * self.ch;
        let parts = (self.stride, self.parts_read);
        pad_input(g, pad, parts, (self.wp, slack), buf, fill)
    }

    /// Elements [`SplitRows::fill`] writes with `slack`: the parts of every image, then slack.
    fn len(&self, g: &ConvGeometry, slack: usize) -> usize {
        g.batch * self.stride * self.part_elems() + slack + (MR + 1) * self.stride * self.ch
    }
}

/// `C = epilogue(conv(input, B))` on the tile unit `T`, A read in place from a padded copy
/// split by the stride (see the module), or, when `framed`, from `input` itself (a [`Frame`]
/// of `g`'s input: the same layout at stride 1). The caller has checked [`applies`] and the
/// sizes.
pub(crate) fn conv<F: InPlaceFamily, T: TileExec>(
    family: &F,
    input: &[F::Elem],
    g: &ConvGeometry,
    pad: F::Elem,
    b: &Panels<'_>,
    framed: bool,
) {
    let elem = bytes_of::<F::Elem>();
    let step = K_STEP_BYTES / elem;
    let (ch, split) = (g.in_c, SplitRows::new(g));
    // Step s: window position (kh, kw) and channels c0.. of K index k0 + s * step, as a byte
    // offset from the block's first pixel.
    let offsets = |k0: usize, offsets: &mut [usize]| {
        for (s, o) in offsets.iter_mut().enumerate() {
            let k = k0 + s * step;
            let (tap, c0) = (k / ch, k % ch);
            *o = split.offset(tap / g.kernel, tap % g.kernel, c0) * elem;
        }
    };
    if framed {
        let frame = Frame::for_input(g).expect("a framed input is read at stride 1");
        assert!(input.len() >= frame.len(), "framed input too small");
        return gather_gemm::<F, T>(family, input, &split.rows(g), b, offsets);
    }
    F::with_padded(|padded| {
        // Past the last block's rows, a window reaches `kernel` pixels further.
        split.copy(input, g, pad, g.kernel * ch, padded, |_| true);
        gather_gemm::<F, T>(family, padded, &split.rows(g), b, offsets);
    });
}

/// The window rows of a pass's images should stay in L2 while the tiles read them (2 MiB per
/// core on the Sapphire Rapids, 1 MiB on others): at batch 8 the stem's are 13 MB at once;
/// one image at a time took the bf16 stem from 3.9 to 3.6 ms on the Xeon 167 (layer_profile,
/// batch 8). The padded layout (layer1 at batch 8: 3.4 MB) measured no gain from passes.
const PASS_BYTES: usize = 1 << 20;

/// The batch cut into passes of whole images whose prepared copies (`image_bytes` each) fit
/// [`PASS_BYTES`] (at least one image): `(first image, the pass's geometry)`.
fn passes(g: &ConvGeometry, image_bytes: usize) -> Vec<(usize, ConvGeometry)> {
    let per_pass = (PASS_BYTES / image_bytes.max(1)).clamp(1, g.batch.max(1));
    (0..g.batch)
        .step_by(per_pass)
        .map(|first| {
            let pass = ConvGeometry {
                batch: per_pass.min(g.batch - first),
                ..*g
            };
            (first, pass)
        })
        .collect()
}

/// Whether a convolution suits [`conv_window_rows`]: one kernel row's window (`kernel` pixels
/// of `C` channels) fits one 64-byte tile row. The stem (7 x 3 bf16 = 42 bytes) is the case it
/// is for: its im2col copies runs of 3 channels, and its K of 147 is not a whole number of
/// tile rows.
pub(crate) fn window_rows_apply<E>(kernel: usize, in_c: usize) -> bool {
    kernel * in_c * bytes_of::<E>() <= K_STEP_BYTES
}

/// K of the weights [`conv_window_rows`] takes: one tile row per kernel row.
pub(crate) fn window_rows_k<E>(kernel: usize) -> usize {
    kernel * K_STEP_BYTES / bytes_of::<E>()
}

/// The weights for [`conv_window_rows`]: `b` (`K x N` row-major, K in (kh, kw, c) order) with
/// each kernel row's `kernel x C` rows followed by zero rows up to one tile row (K' = kernel x
/// 64 bytes).
pub(crate) fn window_rows_weights<E: Plain + Default>(
    b: &[E],
    kernel: usize,
    in_c: usize,
    n: usize,
) -> Vec<E> {
    let step = K_STEP_BYTES / bytes_of::<E>();
    let row = kernel * in_c;
    assert_eq!(b.len(), kernel * row * n, "B must be K x N");
    let mut out = vec![E::default(); window_rows_k::<E>(kernel) * n];
    for kh in 0..kernel {
        out[kh * step * n..][..row * n].copy_from_slice(&b[kh * row * n..][..row * n]);
    }
    out
}

/// `C = epilogue(conv(input, B'))` on the tile unit `T`, with `B'` from
/// [`window_rows_weights`]: instead of an im2col, the input is rewritten once so that each
/// output pixel's window on each input row is one 64-byte entry (the `kernel x C` values,
/// then `pad`). Input rows are split by their index modulo the stride, so that for kernel row
/// `kh` the entries of consecutive output pixels, across output rows too, are consecutive:
/// K step `kh` reads part `kh % stride`, shifted by `kh / stride` rows. Every A row is a row
/// of C (no padding rows), and the tiles hold what the im2col path's hold, in a K order with
/// zero weights between the kernel rows. Where zero products are exact (always for INT8; for
/// bf16 when the input holds no infinity or NaN) the windows are skipped and the rows read in
/// place ([`conv_strided_rows`]).
pub(crate) fn conv_window_rows<F: InPlaceFamily, T: TileExec>(
    family: &F,
    input: &[F::Elem],
    g: &ConvGeometry,
    pad: F::Elem,
    b: &Panels<'_>,
) {
    if conv_strided_rows::<F, T>(family, input, g, pad, b) {
        return;
    }
    let step = K_STEP_BYTES / bytes_of::<F::Elem>();
    let s = g.stride;
    let (hp, ho, wo) = (g.in_h + 2 * g.pad, g.out_h(), g.out_w());
    let q_rows = hp.div_ceil(s);
    let part_elems = q_rows * wo * step;
    let elem = bytes_of::<F::Elem>();
    for (first, pass) in passes(g, s * part_elems * elem) {
        let rows = RowLayout {
            batch: pass.batch,
            out_row0: first * ho * wo,
            image_elems: s * part_elems,
            lda: step,
            row_pitch: wo,
            out_w: wo,
            out_h: ho,
        };
        let input = &input[first * g.input_len() / g.batch..][..pass.input_len()];
        F::with_padded(|windows| {
            pack_window_rows(input, &pass, pad, q_rows, windows);
            let offsets = |k0: usize, offsets: &mut [usize]| {
                for (i, o) in offsets.iter_mut().enumerate() {
                    let kh = k0 / step + i;
                    *o = ((kh % s) * part_elems + (kh / s) * wo * step) * elem;
                }
            };
            gather_gemm::<F, T>(family, windows, &rows, b, offsets);
        });
    }
}

/// [`conv_window_rows`] for families where zero weights are exact (INT8): no windows are
/// written; the tile rows are read straight from a padded copy of the input split by row
/// parity, `stride` pixels apart, so each 64-byte row holds the window and then the next
/// pixels' values, which meet the zero weights between kernel rows. Output rows are counted
/// in the padded width divided by the stride (the few past the output width are computed and
/// never stored). The copy is a tenth of the windows' bytes (159 KB against 1.65 MB for the
/// stem): the INT8 stem went from 0.28 to 0.20 ms at batch 1 and from 2.1-2.2 to 1.5-1.6 ms
/// at batch 8 on the Xeon 167, although these rows are not 64-byte aligned. bf16 takes it only
/// for a finite input: a NaN or an infinity beside a window would turn its zero products into
/// NaN. With finite values the zero products add exact zeros, so the sums are those of the
/// windows, bit for bit (tested).
///
/// Whether the input's zero products are exact is checked row by row as the copy is made (a
/// separate scan of the batch before it cost 15 us of one thread at batch 1 on the Xeon 167):
/// returns `false`, having computed nothing, where they are not.
fn conv_strided_rows<F: InPlaceFamily, T: TileExec>(
    family: &F,
    input: &[F::Elem],
    g: &ConvGeometry,
    pad: F::Elem,
    b: &Panels<'_>,
) -> bool {
    let step = K_STEP_BYTES / bytes_of::<F::Elem>();
    F::with_padded(|buf| {
        // Past the last block's rows, a tile row reaches 64 bytes further.
        if !SplitRows::new(g).copy(input, g, pad, step, buf, F::zero_products_exact) {
            return false;
        }
        conv_strided_rows_prepared::<F, T>(family, buf, g, b);
        true
    })
}

/// [`conv_strided_rows`] on its split copy, already made (by it, or by
/// [`strided_rows_input`]: [`InPlaceLayout::StridedRows`]).
pub(crate) fn conv_strided_rows_prepared<F: InPlaceFamily, T: TileExec>(
    family: &F,
    prepared: &[F::Elem],
    g: &ConvGeometry,
    b: &Panels<'_>,
) {
    let elem = bytes_of::<F::Elem>();
    let step = K_STEP_BYTES / elem;
    let split = SplitRows::new(g);
    debug_assert!(prepared.len() >= split.len(g, step));
    // Step i: kernel row kh, its whole window (and the next pixels' values) in one row.
    let offsets = |k0: usize, offsets: &mut [usize]| {
        for (i, o) in offsets.iter_mut().enumerate() {
            *o = split.offset(k0 / step + i, 0, 0) * elem;
        }
    };
    gather_gemm::<F, T>(family, prepared, &split.rows(g), b, offsets);
}

/// Elements of [`strided_rows_input`]'s buffer for `g`.
pub(crate) fn strided_rows_len<E>(g: &ConvGeometry) -> usize {
    SplitRows::new(g).len(g, K_STEP_BYTES / bytes_of::<E>())
}

/// The input of [`InPlaceLayout::StridedRows`] for `g` in `buf`: the split copy
/// [`conv_window_rows`] reads a finite input from, each image row written by `fill(image, y,
/// row)` (its `in_w x C` values) instead of copied from an NHWC input. Returns whether every
/// `fill` returned true (the caller's check that the row's zero products are exact); where one
/// did not, the buffer must not be read as that layout.
pub(crate) fn strided_rows_input<E: Plain + Send + Sync>(
    g: &ConvGeometry,
    pad: E,
    buf: &mut AlignedVec<E>,
    fill: impl Fn(usize, usize, &mut [E]) -> bool + Sync,
) -> bool {
    let step = K_STEP_BYTES / bytes_of::<E>();
    SplitRows::new(g).fill(g, pad, step, buf, fill)
}

/// `out` = for each image, stride part `p` and row `q` (input row `q * stride + p` of the
/// padded image), for each output column `ox`: the `kernel x C` values of the window starting
/// at padded column `ox * stride`, then `pad` up to 64 bytes; then `MR` entries of slack (the
/// last block's rows past the image). In parallel over the rows; the buffer is only grown.
fn pack_window_rows<E: Plain + Send + Sync>(
    input: &[E],
    g: &ConvGeometry,
    pad: E,
    q_rows: usize,
    out: &mut AlignedVec<E>,
) {
    let step = K_STEP_BYTES / bytes_of::<E>();
    let (s, ch, wo) = (g.stride, g.in_c, g.out_w());
    debug_assert!(g.kernel * ch <= step);
    let row_elems = wo * step;
    let rows_len = g.batch * s * q_rows * row_elems;
    if out.len() < rows_len + MR * step {
        out.resize(rows_len + MR * step, pad);
    }
    let row_in = g.in_w * ch;
    crate::team::for_each_chunk_mut(&mut out[..rows_len], row_elems, |i, row| {
        let (image, part, q) = (i / (s * q_rows), (i / q_rows) % s, i % q_rows);
        let py = q * s + part;
        row.fill(pad);
        if py < g.pad || py >= g.pad + g.in_h {
            return;
        }
        let src = &input[(image * g.in_h + py - g.pad) * row_in..][..row_in];
        for (ox, entry) in row.chunks_exact_mut(step).enumerate() {
            // Padded columns ox * s .. ox * s + kernel; input column = padded - pad.
            let x0 = (ox * s) as isize - g.pad as isize;
            let (lo, hi) = (x0.max(0), (x0 + g.kernel as isize).min(g.in_w as isize));
            if lo < hi {
                let at = ((lo - x0) as usize) * ch;
                entry[at..at + (hi - lo) as usize * ch]
                    .copy_from_slice(&src[lo as usize * ch..hi as usize * ch]);
            }
        }
    });
}

/// `out` = the batch in NHWC with `g.pad` pixels of `pad` around each image (more on the right
/// up to `row_px` pixels per row), each image's padded rows split into `parts` by their index
/// modulo `parts` (part `p` holds rows `p, p + parts, ...`; 1 keeps them in order), the images
/// one after another, then `slack` elements of `pad` (read by rows that are never stored, and
/// by the strided rows of [`conv_strided_rows`] that run past the last window, where a stale
/// NaN would meet a zero weight). Only the first `parts_read` parts are written (the others
/// are never read); each of their rows is written whole, in parallel on the team; the storage
/// only grows and is never filled first, so a warm call neither allocates nor fills twice.
/// Returns whether `fill` returned true for every row it wrote.
fn pad_input<E: Plain + Send + Sync>(
    g: &ConvGeometry,
    pad: E,
    (parts, parts_read): (usize, usize),
    (row_px, slack): (usize, usize),
    out: &mut AlignedVec<E>,
    fill: impl Fn(usize, usize, &mut [E]) -> bool + Sync,
) -> bool {
    let all_hold = std::sync::atomic::AtomicBool::new(true);
    let ch = g.in_c;
    let q_rows = (g.in_h + 2 * g.pad).div_ceil(parts);
    let rows_len = g.batch * parts * q_rows * row_px * ch;
    // Every row is written below (or skipped, never read: a part the windows do not reach),
    // so the buffer is not filled first: it is shared with layers that shrink it, and a fill of
    // its growth cost the batch-1 stem's input 15 us of one thread (Xeon model 167).
    out.resize_for_overwrite(rows_len + slack);
    out[rows_len..].fill(pad);
    let (row_in, side) = (g.in_w * ch, g.pad * ch);
    crate::team::for_each_chunk_mut(&mut out[..rows_len], row_px * ch, |i, row| {
        let (image, part, q) = (i / (parts * q_rows), (i / q_rows) % parts, i % q_rows);
        let py = q * parts + part;
        if part >= parts_read {
            return;
        }
        if py < g.pad || py >= g.pad + g.in_h {
            row.fill(pad);
            return;
        }
        row[..side].fill(pad);
        let holds = fill(image, py - g.pad, &mut row[side..side + row_in]);
        row[side + row_in..].fill(pad);
        if !holds {
            all_hold.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    });
    all_hold.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each call's prefetches go: the whole next panel (the next one of the item in this
    /// K block, else the item's first in the next K block), in shares that leave no line out.
    #[test]
    fn prefetch_covers_the_next_panel() {
        // Two K blocks (16 and 8 steps of 32 bf16) of 4 panels each.
        let blocks = [(0, 512, 0), (512, 256, 512 * 128)];
        let bytes = vec![0u8; (512 + 256) * 128 * 2];
        let b = Panels {
            blocks: &blocks,
            bytes: &bytes,
            n: 128,
            blocking: Blocking {
                kc: 512,
                mc: 64,
                nc: 64,
            },
        };
        let item = WorkItem {
            m0: 0,
            rows: 70,
            j_begin: 64,
            j_end: 128,
        };
        let base = bytes.as_ptr() as usize;
        let start = |p: &NextPanel| p.at as usize - base;
        let (k0_panel, k1_panel) = (512 * NR * 2, 256 * NR * 2);
        // Panel 2 of K block 0 -> panel 3 of K block 0.
        let next = NextPanel::new(&b, 0, 64, &item, 2);
        assert_eq!((start(&next), next.bytes), (3 * k0_panel, k0_panel));
        // The item's last panel of K block 0 -> its first (panel 2) of K block 1.
        let next = NextPanel::new(&b, 0, 96, &item, 2);
        let k1 = 512 * 128 * 2;
        assert_eq!((start(&next), next.bytes), (k1 + 2 * k1_panel, k1_panel));
        // After the last panel of the last block: nothing.
        let last = NextPanel::new(&b, 1, 96, &item, 2);
        assert_eq!(last.bytes, 0);
        assert_eq!(last.spread(3, 8).lines_per_step, 0);
        // Three calls (70 rows) of 8 steps over a 32 KB panel: 512 lines, 22 per step.
        let next = NextPanel::new(&b, 0, 64, &item, 2);
        for (calls, steps) in [(3, 8), (1, 16), (7, 1), (2, 36)] {
            let p = next.spread(calls, steps);
            let covered: usize = (0..calls)
                .map(|i| p.at(i) as usize - next.at as usize)
                .zip(std::iter::repeat(p.lines_per_step * steps * 64))
                .map(|(at, len)| {
                    assert_eq!(at % 64, 0, "prefetches stay on line boundaries");
                    len.min(next.bytes.saturating_sub(at))
                })
                .sum();
            assert_eq!(covered, next.bytes, "{calls} calls of {steps} steps");
            // No more than one extra line per step beyond an even share.
            let even = next.bytes.div_ceil(64).div_ceil(calls * steps);
            assert!(p.lines_per_step <= even + 1);
        }
    }
}
