//! The five loops around the bf16 micro-kernel, generic over the kernel type (as in
//! [`crate::int8`]: f32 partial sums in a per-thread scratch when K takes several blocks).

use super::pack::padded_k;
use super::{Bf16, EpilogueBf16, MicroKernelBf16, OutputBf16, PackedBBf16, TileOut};
use crate::aligned::AlignedVec;
use crate::amx::Frame;
use crate::gemm::pack::Im2colCursor;
use crate::gemm::ConvGeometry;
use crate::tiling::{NextBlockFetch, WorkSplit};
use std::cell::RefCell;

/// Where the rows of A (bf16) come from.
#[derive(Clone, Copy, Debug)]
pub enum ASourceBf16<'a> {
    /// A row-major matrix with `rows` rows of at least K values, row stride `lda`.
    Matrix {
        /// The values.
        data: &'a [Bf16],
        /// Number of rows (M).
        rows: usize,
        /// Row stride.
        lda: usize,
    },
    /// The implicit im2col of an NHWC bf16 input (zero outside the image), packed straight
    /// from the input.
    Conv {
        /// The NHWC input.
        input: &'a [Bf16],
        /// Its geometry.
        geometry: ConvGeometry,
    },
}

impl ASourceBf16<'_> {
    pub(crate) fn rows(&self) -> usize {
        match self {
            ASourceBf16::Matrix { rows, .. } => *rows,
            ASourceBf16::Conv { geometry, .. } => geometry.m(),
        }
    }

    /// Copies rows `m0..m0+rows` x columns `k0..k0+kc` into `out`, row-major with row stride
    /// `kcp` (kc padded, see [`padded_k`]); the columns past kc and the rows up to the next
    /// multiple of MR are zero.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pack(
        &self,
        m0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
        kcp: usize,
        mr: usize,
        out: &mut AlignedVec<Bf16>,
    ) {
        // Every value is written below, so the buffer is only grown, never cleared.
        let total = rows.div_ceil(mr) * mr * kcp;
        if out.len() < total {
            out.resize(total, Bf16::ZERO);
        }
        out.truncate(total);
        out[rows * kcp..].fill(Bf16::ZERO);
        let mut cursor = match self {
            ASourceBf16::Conv { geometry, .. } => Some(Im2colCursor::new(geometry, m0, k0)),
            ASourceBf16::Matrix { .. } => None,
        };
        for (r, row) in out.chunks_exact_mut(kcp).take(rows).enumerate() {
            match self {
                ASourceBf16::Matrix { data, lda, .. } => {
                    row[..kc].copy_from_slice(&data[(m0 + r) * lda + k0..][..kc])
                }
                // The whole row as destination: short runs may spill into the padding as whole
                // chunks, which is zeroed next.
                ASourceBf16::Conv { input, geometry } => {
                    let at = cursor.as_mut().expect("a convolution has a cursor");
                    geometry.im2col_segment_at(input, at, kc, row, Bf16::ZERO);
                    at.next_row();
                }
            }
            row[kc..].fill(Bf16::ZERO);
        }
    }

    /// Checks A against B's K (a bug in the caller otherwise).
    pub(crate) fn check(&self, k: usize) {
        let m = self.rows();
        match self {
            ASourceBf16::Matrix { data, lda, .. } => {
                assert!(*lda >= k && data.len() >= (m - 1) * lda + k, "A too small")
            }
            ASourceBf16::Conv { input, geometry } => {
                assert_eq!(geometry.k(), k, "conv K differs from the packed weights");
                assert_eq!(input.len(), geometry.input_len(), "input size");
            }
        }
    }
}

thread_local! {
    /// Each worker's A-packing buffer, reused across calls.
    static A_PACK: RefCell<AlignedVec<Bf16>> = const { RefCell::new(AlignedVec::new()) };
    /// Each worker's f32 partial sums when K takes several blocks.
    static ACC: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
}

/// A raw pointer to C that work items share; each item writes only its own tiles.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) *mut T);
// SAFETY: work items write disjoint tiles of C (disjoint row blocks x column chunks).
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above; no item reads another item's tiles.
unsafe impl<T> Sync for Shared<T> {}

/// The destination of the whole GEMM, checked, as raw pointers.
#[derive(Clone, Copy)]
pub(crate) struct Dst<'e> {
    pub(crate) c_bf16: Shared<Bf16>,
    pub(crate) c_f32: Shared<f32>,
    pub(crate) ldc: usize,
    /// Where C's rows go in a framed output (`None`: row `i` at `i * ldc`).
    pub(crate) frame: Option<Frame>,
    pub(crate) epi: &'e EpilogueBf16<'e>,
}

impl Dst<'_> {
    /// Checks the output and the epilogue against `m x n`.
    pub(crate) fn new<'e>(
        out: OutputBf16<'_>,
        epi: &'e EpilogueBf16<'e>,
        m: usize,
        n: usize,
    ) -> Dst<'e> {
        let null = (Shared(std::ptr::null_mut()), Shared(std::ptr::null_mut()));
        let mut frame = None;
        let ((c_bf16, c_f32), ldc) = match out {
            OutputBf16::Bf16 { c, ldc } => {
                assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
                ((Shared(c.as_mut_ptr()), null.1), ldc)
            }
            OutputBf16::F32 { c, ldc } => {
                assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C too small");
                ((null.0, Shared(c.as_mut_ptr())), ldc)
            }
            OutputBf16::Framed { c, frame: f } => {
                assert!(
                    f.ch == n && f.batch * f.h * f.w == m,
                    "the frame does not hold C"
                );
                // Checks the length too. The epilogue writes every image pixel.
                f.clear(c, Bf16::ZERO);
                frame = Some(f);
                ((Shared(c.as_mut_ptr()), null.1), n)
            }
        };
        if let Some(bias) = epi.bias {
            assert!(bias.len() >= n, "bias too short");
        }
        match (epi.residual, epi.residual_frame) {
            (Some((r, ldr)), None) => assert!(
                ldr >= n && r.len() >= (m - 1) * ldr + n,
                "residual too small"
            ),
            (Some((r, ldr)), Some(f)) => assert!(
                ldr == f.ch && f.ch >= n && f.batch * f.h * f.w == m && r.len() >= f.len(),
                "the residual's frame does not hold C"
            ),
            (None, _) => {}
        }
        Dst {
            c_bf16,
            c_f32,
            ldc,
            frame,
            epi,
        }
    }

    /// The tile epilogue at `(i0, j0)` of C.
    pub(crate) fn tile(&self, i0: usize, j0: usize) -> TileOut {
        let at = self.frame.map_or(i0, |f| f.row(i0)) * self.ldc + j0;
        TileOut {
            bias: self.epi.bias.map_or(std::ptr::null(), |b| b[j0..].as_ptr()),
            residual: self.epi.residual.map_or(std::ptr::null(), |(r, ldr)| {
                let row = self.epi.residual_frame.map_or(i0, |f| f.row(i0));
                r[row * ldr + j0..].as_ptr()
            }),
            ldr: self.epi.residual.map_or(0, |(_, ldr)| ldr),
            relu: self.epi.relu,
            // (i0, j0) is inside C (checked on entry); the null one stays null.
            c_bf16: if self.c_bf16.0.is_null() {
                std::ptr::null_mut()
            } else {
                self.c_bf16.0.wrapping_add(at)
            },
            c_f32: if self.c_f32.0.is_null() {
                std::ptr::null_mut()
            } else {
                self.c_f32.0.wrapping_add(at)
            },
            ldc: self.ldc,
        }
    }
}

pub(crate) fn gemm<K: MicroKernelBf16>(
    a: &ASourceBf16<'_>,
    b: &PackedBBf16,
    out: OutputBf16<'_>,
    epi: &EpilogueBf16<'_>,
) {
    let (m, n) = (a.rows(), b.n);
    assert_eq!(b.nr(), K::NR, "B was packed for another kernel");
    if m == 0 || n == 0 {
        return;
    }
    a.check(b.k);
    let dst = Dst::new(out, epi, m, n);

    // Loops 3 and 5 make the work items (the packing's blocking).
    let split = WorkSplit::new(m, n, K::MR, K::NR, b.blocking);
    let multi = b.blocks.len() > 1;
    split.for_each(|item| {
        let (m0, rows_in_block) = (item.m0, item.rows);
        let (j_begin, j_end) = (item.j_begin, item.j_end);
        // Partial sums of this item: rows_in_block x (columns rounded up to NR).
        let ld_scratch = (j_end - j_begin).div_ceil(K::NR) * K::NR;
        A_PACK.with(|abuf| {
            ACC.with(|sbuf| {
                let mut a_pack = abuf.borrow_mut();
                let mut scratch = sbuf.borrow_mut();
                if multi {
                    // The first K block overwrites every sum it later reads: grow, never clear.
                    let len = rows_in_block.div_ceil(K::MR) * K::MR * ld_scratch;
                    if scratch.len() < len {
                        scratch.resize(len, 0.0);
                    }
                }
                // Loop 4: K blocks. The first overwrites the sums, the others add to them, the
                // last applies the epilogue.
                for (bi, &(k0, kc, offset)) in b.blocks.iter().enumerate() {
                    let kcp = padded_k(kc);
                    let accumulate = bi > 0;
                    let last = bi + 1 == b.blocks.len();
                    a.pack(m0, rows_in_block, k0, kc, kcp, K::MR, &mut a_pack);
                    let blocks_i = rows_in_block.div_ceil(K::MR);
                    let next = (b.blocks.get(bi + 1))
                        .filter(|_| K::FETCHES_NEXT_B_BLOCK)
                        .map(|&(_, kc_next, offset_next)| (offset_next, padded_k(kc_next) * K::NR));
                    let calls = (j_end - j_begin).div_ceil(K::NR) * blocks_i;
                    let fetch =
                        NextBlockFetch::for_item(&b.data, next, K::NR, (j_begin, j_end), calls);
                    // Loop 2: NR-wide micro-panels of B.
                    for (jb, j0) in (j_begin..j_end).step_by(K::NR).enumerate() {
                        let cols = K::NR.min(n - j0);
                        let panel = kcp * K::NR;
                        let b_panel = &b.data[offset + (j0 / K::NR) * panel..][..panel];
                        // Loop 1: MR-row micro-panels of A.
                        for ir in 0..blocks_i {
                            fetch.fetch(jb * blocks_i + ir);
                            let i0 = m0 + ir * K::MR;
                            let rows = K::MR.min(m - i0);
                            let a_panel = &a_pack[ir * kcp * K::MR..][..kcp * K::MR];
                            let acc = if multi {
                                scratch[(i0 - m0) * ld_scratch + (j0 - j_begin)..].as_mut_ptr()
                            } else {
                                std::ptr::null_mut()
                            };
                            if cols == K::NR {
                                let t = last.then(|| dst.tile(i0, j0));
                                // SAFETY: the kernel's ISA was checked when B was packed; the
                                // panels hold kcp*MR and kcp*NR values (sliced above); the
                                // scratch (when used) holds MR-rounded rows of ld_scratch >=
                                // j0 - j_begin + NR sums from `acc`; C, bias and residual cover
                                // rows i0..i0+rows, columns j0..j0+NR (checked on entry), which
                                // belong to this work item only.
                                unsafe {
                                    K::run(
                                        rows,
                                        kcp,
                                        a_panel.as_ptr(),
                                        b_panel.as_ptr(),
                                        acc,
                                        ld_scratch,
                                        accumulate,
                                        t.as_ref(),
                                    )
                                }
                            } else {
                                edge_tile::<K>(
                                    EdgeTile {
                                        rows,
                                        cols,
                                        kcp,
                                        accumulate,
                                        last,
                                        a: a_panel,
                                        b: b_panel,
                                    },
                                    acc,
                                    ld_scratch,
                                    &dst,
                                    (i0, j0),
                                );
                            }
                        }
                    }
                }
            })
        });
    });
}

struct EdgeTile<'p> {
    rows: usize,
    cols: usize,
    kcp: usize,
    accumulate: bool,
    last: bool,
    a: &'p [Bf16],
    b: &'p [Bf16],
}

/// A tile narrower than NR: sums into the work item's scratch (or a local tile when K is one
/// block), then the scalar twin's epilogue on the `cols` real columns of the last block.
fn edge_tile<K: MicroKernelBf16>(
    t: EdgeTile<'_>,
    scratch: *mut f32,
    ld_scratch: usize,
    dst: &Dst<'_>,
    (i0, j0): (usize, usize),
) {
    let mut local = [0f32; 32 * 32];
    assert!(K::MR * K::NR <= local.len());
    let (acc, ld) = if scratch.is_null() {
        (local.as_mut_ptr(), K::NR)
    } else {
        (scratch, ld_scratch)
    };
    // SAFETY: the kernel's ISA was checked when B was packed; the panels hold kcp*MR and kcp*NR
    // values; `acc` holds MR rows of NR sums with stride `ld` (the local tile, or the scratch,
    // whose width is rounded up to NR).
    unsafe {
        K::run(
            t.rows,
            t.kcp,
            t.a.as_ptr(),
            t.b.as_ptr(),
            acc,
            ld,
            t.accumulate,
            None,
        )
    };
    if !t.last {
        return;
    }
    let tile = dst.tile(i0, j0);
    for i in 0..t.rows {
        for j in 0..t.cols {
            // SAFETY: (i, j) is inside the MR x NR sums at `acc`; (i0+i, j0+j) is inside C, the
            // residual and the bias (checked on entry) and inside this work item's tiles.
            unsafe { super::scalar::store_tile_element(*acc.add(i * ld + j), &tile, i, j) };
        }
    }
}
