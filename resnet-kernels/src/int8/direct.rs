//! The INT8 family's part of the in-place convolution ([`crate::amx::direct`]): `u8` codes
//! padded with the input's zero point (the code of 0.0, what im2col writes outside the image),
//! `i32` sums, the requantising epilogue. Integer sums, so bit-identical to the im2col path.

use super::loops::tile_requant;
use super::{Frame, InPlaceLayout, PackedB8, Requant, TileRequant};
use crate::aligned::AlignedVec;
use crate::amx::direct::{self, InPlaceFamily, Panels};
use crate::amx::{Dot, TileExec};
use crate::gemm::ConvGeometry;
use crate::tiling::SharedMut;
use std::cell::RefCell;

thread_local! {
    /// The caller's zero-point-padded copy of the input, reused across calls.
    static PADDED: RefCell<AlignedVec<u8>> = const { RefCell::new(AlignedVec::new()) };
    /// Each worker's `i32` partial sums when K takes several blocks.
    static ACC: RefCell<AlignedVec<i32>> = const { RefCell::new(AlignedVec::new()) };
}

/// Whether [`conv`] computes this convolution with `b` (shape and K blocks).
pub(crate) fn applies(g: &ConvGeometry, b: &PackedB8) -> bool {
    direct::applies::<u8>(g, b.k, &b.blocks)
}

/// The requantised `u8` output.
struct Requantised<'r> {
    req: &'r Requant<'r>,
    c: SharedMut<u8>,
    ldc: usize,
    /// Where C's rows go in a framed output (`None`: row `i` at `i * ldc`).
    frame: Option<Frame>,
}

impl InPlaceFamily for Requantised<'_> {
    type Elem = u8;
    type Sum = i32;
    type Tile = TileRequant;
    const DOT: Dot = Dot::Busd;

    fn zero_products_exact(_input: &[u8]) -> bool {
        true
    }

    fn with_padded<R>(f: impl FnOnce(&mut AlignedVec<u8>) -> R) -> R {
        PADDED.with(|b| f(&mut b.borrow_mut()))
    }

    fn with_scratch<R>(f: impl FnOnce(&mut AlignedVec<i32>) -> R) -> R {
        ACC.with(|b| f(&mut b.borrow_mut()))
    }

    fn tile(&self, at: usize, j0: usize) -> TileRequant {
        let c_row = self.frame.map_or(at, |f| f.row(at));
        tile_requant(self.req, (self.c, self.ldc, c_row), at, j0)
    }

    unsafe fn epilogue<T: TileExec>(sums: *const i32, rows: usize, out: &TileRequant) {
        // SAFETY: forwarded from the caller; no partial sums are read or written (null, false).
        unsafe {
            crate::amx::int8_epilogue::<T>(sums, rows, std::ptr::null_mut(), 0, false, Some(out))
        }
    }

    unsafe fn store_element(v: i32, t: &TileRequant, i: usize, j: usize) {
        // SAFETY: the caller's contract.
        unsafe { *t.c.add(i * t.ldc + j) = super::scalar::requant_tile_element(v, t, i, j) }
    }
}

/// `C = requant(conv(input, B))` on the tile unit `T` ([`super::ConvDirect`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv<T: TileExec>(
    input: &[u8],
    g: &ConvGeometry,
    pad_code: u8,
    b: &PackedB8,
    (c, ldc, frame): (&mut [u8], usize, Option<Frame>),
    req: &Requant<'_>,
    layout: InPlaceLayout,
) {
    let out = Requantised {
        req,
        c: SharedMut::new(c.as_mut_ptr()),
        ldc,
        frame,
    };
    let panels = Panels {
        blocks: &b.blocks,
        bytes: b.data.as_bytes(),
        n: b.n,
        blocking: b.blocking,
    };
    match layout {
        InPlaceLayout::Padded => {
            debug_assert!(applies(g, b));
            direct::conv::<_, T>(&out, input, g, pad_code, &panels, false)
        }
        InPlaceLayout::Framed => {
            debug_assert!(applies(g, b));
            direct::conv::<_, T>(&out, input, g, pad_code, &panels, true)
        }
        InPlaceLayout::WindowRows => {
            direct::conv_window_rows::<_, T>(&out, input, g, pad_code, &panels)
        }
        InPlaceLayout::StridedRows => {
            unreachable!("in_place_applies refuses a prepared INT8 input")
        }
    }
}
