//! The AMX-INT8 micro-kernel (`tdpbusd`): 32 x 32 `i32` per call in 2 x 2 tiles, B read from
//! the VNNI kernels' 32-column panels of 4-k groups (VNNI-4), then the INT8 family's epilogue
//! on the stored block. K blocks are padded to whole 64-byte steps when B is packed
//! (`K_ALIGN`), so there is never a tail step (the stem's 147 becomes 192).

use super::{Block2x2, CBlock, Dot, TileExec, K_STEP_BYTES, PANEL_ROW_BYTES};
use crate::int8::{MicroKernel8, TileRequant};
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// The AMX-INT8 kernel on the tile unit `T` ([`super::AmxHardware`] or [`super::AmxModel`]).
pub(crate) struct AmxKernel8<T>(PhantomData<T>);

const MR: usize = 32;
const NR: usize = 32;

impl<T: TileExec> MicroKernel8 for AmxKernel8<T> {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = T::INT8_NAME;
    const B_PARTS: usize = 1;
    const K_ALIGN: usize = K_STEP_BYTES;
    const BLOCKING: crate::int8::Blocking = crate::int8::blocking::AMX;

    unsafe fn run(
        rows: usize,
        kc4: usize,
        a: *const u8,
        b: *const i8,
        acc: *mut i32,
        ld_acc: usize,
        accumulate: bool,
        out: Option<&TileRequant>,
    ) {
        assert!(
            kc4.is_multiple_of(K_STEP_BYTES),
            "AMX-INT8 K blocks are padded to whole 64-byte steps when B is packed"
        );
        // Every byte of the block is written by the 4 `tilestored` before any is read, so it is
        // not initialised first (4 KiB of stores per call, a third of a 576-deep block's tile
        // work). Unlike the bf16 kernel, partial sums are not continued in the C tiles (`c_in`):
        // the `i32` output mode accumulates into C itself, which holds only `rows` rows, and
        // whole-tile loads and stores would run past them.
        let mut c = MaybeUninit::<CBlock>::uninit();
        let job = Block2x2 {
            a,
            lda: kc4,
            b: b.cast(),
            steps: kc4 / K_STEP_BYTES,
            c_in: std::ptr::null(),
            ldc_in: 0,
            c: c.as_mut_ptr().cast(),
            ldc: PANEL_ROW_BYTES,
        };
        // SAFETY: the line is runnable (checked when B was packed), so for the hardware AMX is
        // granted; `job` addresses the panels (caller contract) and `c`.
        unsafe { T::with_thread_tiles(|tiles| tiles.block_2x2(Dot::Busd, &job)) };
        let sums = c.as_ptr().cast::<i32>();
        // SAFETY: `sums` is the 32 x 32 block (64-byte aligned); the caller guarantees `rows`
        // rows of NR sums at acc (stride ld_acc) when read or written and the epilogue's
        // pointers for rows x NR outputs.
        unsafe { epilogue::<T>(sums, rows, acc, ld_acc, accumulate, out) }
    }

    const CONV_DIRECT: Option<crate::int8::ConvDirect> = Some(crate::int8::direct::conv::<T>);
    const FETCHES_NEXT_B_BLOCK: bool = true;
}

/// The family's epilogue on `rows` rows of 32 sums at `sums` (row stride 32): the AVX-512 one
/// for the hardware, the scalar twin's for the model (bit-identical, tested).
///
/// # Safety
/// As [`epilogue_scalar`]; `sums` holds `rows` rows of 32 `i32`.
pub(crate) unsafe fn epilogue<T: TileExec>(
    sums: *const i32,
    rows: usize,
    acc: *mut i32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileRequant>,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if T::HARDWARE {
            return epilogue_avx512(sums, rows, acc, ld_acc, accumulate, out);
        }
        epilogue_scalar(sums, rows, acc, ld_acc, accumulate, out)
    }
}

/// The family's epilogue on `rows` rows of the block, element by element (the scalar twin's
/// code, so the model's outputs are the twin's by construction of the sums).
///
/// # Safety
/// As [`MicroKernel8::run`]'s `acc` and `out`; `sums` holds 32 x 32 `i32`.
unsafe fn epilogue_scalar(
    sums: *const i32,
    rows: usize,
    acc: *mut i32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileRequant>,
) {
    for i in 0..rows {
        for j in 0..NR {
            // SAFETY: (i, j) is inside the block and the tile (caller contract).
            unsafe {
                let mut v = *sums.add(i * NR + j);
                if accumulate {
                    v = v.wrapping_add(*acc.add(i * ld_acc + j));
                }
                match out {
                    None => *acc.add(i * ld_acc + j) = v,
                    Some(t) => {
                        *t.c.add(i * t.ldc + j) =
                            crate::int8::scalar::requant_tile_element(v, t, i, j)
                    }
                }
            }
        }
    }
}

/// The VNNI kernel's AVX-512 epilogue on the block, 16 columns at a time.
///
/// # Safety
/// As [`epilogue_scalar`], and the CPU has AVX-512 F/BW (every AMX CPU has).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn epilogue_avx512(
    sums: *const i32,
    rows: usize,
    acc: *mut i32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileRequant>,
) {
    use crate::int8::simd::w512;
    for i in 0..rows {
        for j0 in [0, w512::LANES] {
            // SAFETY: (i, j0..j0+16) is inside the block and the tile (caller contract).
            unsafe {
                let mut v = w512::load_i32(sums.add(i * NR + j0));
                let p = acc.wrapping_add(i * ld_acc + j0);
                if accumulate {
                    v = w512::add(v, w512::load_i32(p));
                }
                match out {
                    None => w512::store_i32(p, v),
                    Some(t) => w512::requant_store(v, t, i, j0),
                }
            }
        }
    }
}

/// The model line's throughput probe: `iters` rounds of one model `tdpbusd` (at most 64: the
/// model is slow and only tests run it). Returns the multiply-accumulates done.
///
/// # Safety
/// None needed (software); `unsafe` for the probe signature.
pub(crate) unsafe fn peak_model(iters: usize) -> f64 {
    let rounds = iters.clamp(1, 64);
    // SAFETY: the model needs no CPU support; tiles are configured by with_thread_tiles.
    unsafe {
        super::AmxModel::with_thread_tiles(|m| {
            for _ in 0..rounds {
                super::TileOps::tdpbusd(m, super::Tmm(0), super::Tmm(4), super::Tmm(6));
            }
        })
    };
    rounds as f64 * 16.0 * 16.0 * 64.0
}

/// The hardware line's throughput probe.
///
/// # Safety
/// AMX is granted to this process.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn peak_hardware(iters: usize) -> f64 {
    // SAFETY: the caller's contract.
    unsafe { super::hardware::peak(Dot::Busd, iters) }
}
