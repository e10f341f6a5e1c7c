//! The AMX-BF16 micro-kernel (`tdpbf16ps`): 32 x 32 f32 per call in 2 x 2 tiles, B read from
//! the AVX512-BF16 kernel's 32-column panels of k-pairs (VNNI-2), then the bf16 family's
//! epilogue on the stored block. K blocks are padded to 32 (one tile row of bf16) when B is
//! packed, so there is never a tail step.

use super::{Block2x2, CBlock, Dot, TileExec, K_STEP_BYTES, PANEL_ROW_BYTES};
use crate::bf16::{Bf16, MicroKernelBf16, TileOut};
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// The AMX-BF16 kernel on the tile unit `T` ([`super::AmxHardware`] or [`super::AmxModel`]).
pub(crate) struct AmxKernelBf16<T>(PhantomData<T>);

const MR: usize = 32;
const NR: usize = 32;

impl<T: TileExec> MicroKernelBf16 for AmxKernelBf16<T> {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = T::BF16_NAME;
    const KC: usize = crate::bf16::blocking::AMX_KC;

    unsafe fn run(
        rows: usize,
        kc2: usize,
        a: *const Bf16,
        b: *const Bf16,
        acc: *mut f32,
        ld_acc: usize,
        accumulate: bool,
        out: Option<&TileOut>,
    ) {
        let row_bytes = 2 * kc2;
        assert!(
            row_bytes.is_multiple_of(K_STEP_BYTES),
            "bf16 K blocks are padded to 32 when B is packed"
        );
        // A K block after the first continues the sums in the C tiles (loaded from `acc`), and
        // a block before the last stores them straight back: the partial sums never pass
        // through the vector epilogue.
        let ld_acc_bytes = ld_acc * std::mem::size_of::<f32>();
        let c_in = if accumulate {
            acc.cast_const().cast()
        } else {
            std::ptr::null()
        };
        // Written whole by the 4 `tilestored` before any byte is read: not initialised first.
        let mut block = MaybeUninit::<CBlock>::uninit();
        let (c, ldc) = match out {
            None => (acc.cast(), ld_acc_bytes),
            Some(_) => (block.as_mut_ptr().cast(), PANEL_ROW_BYTES),
        };
        let job = Block2x2 {
            a: a.cast(),
            lda: row_bytes,
            b: b.cast(),
            steps: row_bytes / K_STEP_BYTES,
            c_in,
            ldc_in: ld_acc_bytes,
            c,
            ldc,
        };
        // SAFETY: the line is runnable (checked when B was packed), so for the hardware AMX is
        // granted; the caller guarantees 32 A rows of kc2 values, kc2 / 2 B pair-rows of 32
        // columns (128 bytes each) and MR rows of NR sums at `acc` when it is read or written;
        // `block` is the 32 x 32 block.
        unsafe { T::with_thread_tiles(|tiles| tiles.block_2x2(Dot::Bf16ps, &job)) };
        if out.is_some() {
            // SAFETY: the block is written; the caller's contract covers `out`.
            unsafe {
                epilogue::<T>(
                    block.as_ptr().cast(),
                    rows,
                    std::ptr::null_mut(),
                    0,
                    false,
                    out,
                )
            }
        }
    }

    const CONV_DIRECT: Option<crate::bf16::ConvDirectBf16> = Some(crate::bf16::direct::conv::<T>);
    const FETCHES_NEXT_B_BLOCK: bool = true;
}

/// The family's epilogue on `rows` rows of 32 sums at `sums` (row stride 32): the AVX-512 one
/// for the hardware, the scalar twin's for the model (the batteries hold them to the same
/// results).
///
/// # Safety
/// As [`MicroKernelBf16::run`]'s `acc` and `out`; `sums` holds `rows` rows of 32 f32.
pub(crate) unsafe fn epilogue<T: TileExec>(
    sums: *const f32,
    rows: usize,
    acc: *mut f32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileOut>,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if T::HARDWARE {
            return epilogue_avx512(sums, rows, acc, ld_acc, accumulate, out);
        }
        for i in 0..rows {
            for j in 0..NR {
                let mut v = *sums.add(i * NR + j);
                if accumulate {
                    v += *acc.add(i * ld_acc + j);
                }
                match out {
                    None => *acc.add(i * ld_acc + j) = v,
                    Some(t) => crate::bf16::scalar::store_tile_element(v, t, i, j),
                }
            }
        }
    }
}

/// The AVX512-BF16 kernel's epilogue on the block, one row (2 x 16 columns) at a time.
///
/// # Safety
/// As [`MicroKernelBf16::run`]'s `acc` and `out`; `sums` holds 32 x 32 f32; the CPU has
/// AVX512-BF16 (every AMX-BF16 CPU has).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn epilogue_avx512(
    sums: *const f32,
    rows: usize,
    acc: *mut f32,
    ld_acc: usize,
    accumulate: bool,
    out: Option<&TileOut>,
) {
    use std::arch::x86_64::_mm512_loadu_ps;
    for i in 0..rows {
        // SAFETY: row i is inside the block and the tile (caller contract).
        unsafe {
            let v0 = _mm512_loadu_ps(sums.add(i * NR));
            let v1 = _mm512_loadu_ps(sums.add(i * NR + 16));
            crate::bf16::simd::epilogue_row(v0, v1, i, acc, ld_acc, accumulate, out);
        }
    }
}

/// The hardware line's throughput probe: 4 independent `tdpbf16ps` per round. Returns the
/// multiply-adds done.
///
/// # Safety
/// AMX is granted to this process.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn peak_hardware(iters: usize) -> f64 {
    // SAFETY: the caller's contract.
    unsafe { super::hardware::peak(Dot::Bf16ps, iters) }
}

/// The model line's throughput probe: `iters` rounds of one model `tdpbf16ps` (at most 64: the
/// model is slow and only tests run it). Returns the multiply-adds done.
///
/// # Safety
/// None needed (software); `unsafe` for the probe signature.
pub(crate) unsafe fn peak_model(iters: usize) -> f64 {
    let rounds = iters.clamp(1, 64);
    // SAFETY: the model needs no CPU support; tiles are configured by with_thread_tiles.
    unsafe {
        super::AmxModel::with_thread_tiles(|m| {
            for _ in 0..rounds {
                super::TileOps::tdpbf16ps(m, super::Tmm(0), super::Tmm(4), super::Tmm(6));
            }
        })
    };
    rounds as f64 * 16.0 * 16.0 * 32.0
}
