//! The bf16 family's part of the in-place convolution ([`crate::amx::direct`]): bf16
//! activations padded with zeros (what im2col writes outside the image), f32 sums, the fused
//! bias + residual + ReLU epilogue rounding to bf16. The tiles hold what the im2col path's
//! tiles hold and take the same `tdpbf16ps` in the same order, so the results are bit-identical
//! to it (tested), not merely close.

use super::loops::Dst;
use super::{Bf16, EpilogueBf16, InPlaceLayout, OutputBf16, PackedBBf16, TileOut};
use crate::aligned::AlignedVec;
use crate::amx::direct::{self, InPlaceFamily, Panels};
use crate::amx::{Dot, TileExec};
use crate::gemm::ConvGeometry;
use std::cell::RefCell;

thread_local! {
    /// The caller's zero-padded copy of the input, reused across calls.
    static PADDED: RefCell<AlignedVec<Bf16>> = const { RefCell::new(AlignedVec::new()) };
    /// Each worker's f32 partial sums when K takes several blocks.
    static ACC: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
}

/// Whether [`conv`] computes this convolution with `b` (shape and K blocks).
pub(crate) fn applies(g: &ConvGeometry, b: &PackedBBf16) -> bool {
    direct::applies::<Bf16>(g, b.k, &b.blocks)
}

impl InPlaceFamily for Dst<'_> {
    type Elem = Bf16;
    type Sum = f32;
    type Tile = TileOut;
    const DOT: Dot = Dot::Bf16ps;

    fn zero_products_exact(input: &[Bf16]) -> bool {
        super::finite_bf16(input)
    }

    fn with_padded<R>(f: impl FnOnce(&mut AlignedVec<Bf16>) -> R) -> R {
        PADDED.with(|b| f(&mut b.borrow_mut()))
    }

    fn with_scratch<R>(f: impl FnOnce(&mut AlignedVec<f32>) -> R) -> R {
        ACC.with(|b| f(&mut b.borrow_mut()))
    }

    fn tile(&self, at: usize, j0: usize) -> TileOut {
        Dst::tile(self, at, j0)
    }

    unsafe fn epilogue<T: TileExec>(sums: *const f32, rows: usize, out: &TileOut) {
        // SAFETY: forwarded from the caller; no partial sums are read or written (null, false).
        unsafe {
            crate::amx::bf16_epilogue::<T>(sums, rows, std::ptr::null_mut(), 0, false, Some(out))
        }
    }

    unsafe fn store_element(v: f32, t: &TileOut, i: usize, j: usize) {
        // SAFETY: the caller's contract.
        unsafe { super::scalar::store_tile_element(v, t, i, j) }
    }
}

/// `C = epilogue(conv(input, B))` on the tile unit `T` ([`super::ConvDirectBf16`]).
pub(crate) fn conv<T: TileExec>(
    input: &[Bf16],
    g: &ConvGeometry,
    b: &PackedBBf16,
    out: OutputBf16<'_>,
    epi: &EpilogueBf16<'_>,
    layout: InPlaceLayout,
) {
    let dst = Dst::new(out, epi, g.m(), b.n);
    let panels = Panels {
        blocks: &b.blocks,
        bytes: b.data.as_bytes(),
        n: b.n,
        blocking: b.blocking,
    };
    match layout {
        InPlaceLayout::Padded => {
            debug_assert!(applies(g, b));
            direct::conv::<_, T>(&dst, input, g, Bf16::ZERO, &panels, false)
        }
        InPlaceLayout::Framed => {
            debug_assert!(applies(g, b));
            direct::conv::<_, T>(&dst, input, g, Bf16::ZERO, &panels, true)
        }
        InPlaceLayout::WindowRows => {
            direct::conv_window_rows::<_, T>(&dst, input, g, Bf16::ZERO, &panels)
        }
        InPlaceLayout::StridedRows => {
            direct::conv_strided_rows_prepared::<_, T>(&dst, input, g, &panels)
        }
    }
}
