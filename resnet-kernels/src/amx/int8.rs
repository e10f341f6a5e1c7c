//! The AMX-INT8 micro-kernel (`tdpbusd`): 32 x 32 `i32` per call in 2 x 2 tiles, B read from
//! the VNNI kernels' 32-column panels of 4-k groups (VNNI-4), then the INT8 family's epilogue
//! on the stored block.

use super::{Block2x2, CBlock, Dot, Tail, TileExec, K_STEP_BYTES, PANEL_ROW_BYTES};
use crate::int8::{MicroKernel8, TileRequant};
use std::marker::PhantomData;

/// The AMX-INT8 kernel on the tile unit `T` ([`super::AmxHardware`] or [`super::AmxModel`]).
pub(crate) struct AmxKernel8<T>(PhantomData<T>);

const MR: usize = 32;
const NR: usize = 32;

/// Fills `tail` with the K remainder (`rem` bytes per row, a multiple of 4, < 64) starting at
/// byte `k0` of the 32 A rows (stride `kc4`) and at group `k0 / 4` of B, zero-padded to a step.
///
/// # Safety
/// `a` holds 32 rows of `kc4 >= k0 + rem` bytes; `b` holds `kc4 / 4` groups of 128 bytes.
pub(super) unsafe fn fill_tail(
    tail: &mut Tail,
    a: *const u8,
    kc4: usize,
    b: *const u8,
    k0: usize,
    rem: usize,
    bytes_per_k: usize,
) {
    tail.a.fill(0);
    tail.b.fill(0);
    // SAFETY: the caller's contract: row r's bytes k0..k0+rem are inside A; B's rows from
    // group k0/bytes_per_k on, rem/bytes_per_k of them, are inside B.
    unsafe {
        for r in 0..MR {
            let src = std::slice::from_raw_parts(a.add(r * kc4 + k0), rem);
            tail.a[r * K_STEP_BYTES..][..rem].copy_from_slice(src);
        }
        let groups = rem / bytes_per_k;
        let src = std::slice::from_raw_parts(
            b.add(k0 / bytes_per_k * PANEL_ROW_BYTES),
            groups * PANEL_ROW_BYTES,
        );
        tail.b[..groups * PANEL_ROW_BYTES].copy_from_slice(src);
    }
}

impl<T: TileExec> MicroKernel8 for AmxKernel8<T> {
    const MR: usize = MR;
    const NR: usize = NR;
    const NAME: &'static str = T::INT8_NAME;
    const B_PARTS: usize = 1;

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
        let steps = kc4 / K_STEP_BYTES;
        let rem = kc4 % K_STEP_BYTES;
        let mut tail = Tail {
            a: [0; 32 * K_STEP_BYTES],
            b: [0; 16 * PANEL_ROW_BYTES],
        };
        if rem > 0 {
            // SAFETY: the caller guarantees 32 A rows of kc4 bytes and kc4/4 B groups of 128.
            unsafe { fill_tail(&mut tail, a, kc4, b.cast(), steps * K_STEP_BYTES, rem, 4) };
        }
        let mut c = CBlock([0; 32 * PANEL_ROW_BYTES]);
        let job = Block2x2 {
            a,
            lda: kc4,
            b: b.cast(),
            steps,
            tail_a: if rem > 0 {
                tail.a.as_ptr()
            } else {
                std::ptr::null()
            },
            tail_b: tail.b.as_ptr(),
            c: c.0.as_mut_ptr(),
        };
        // SAFETY: the line is runnable (checked when B was packed), so for the hardware AMX is
        // granted; `job` addresses the panels (caller contract), the tail copies and `c`.
        unsafe { T::with_thread_tiles(|tiles| tiles.block_2x2(Dot::Busd, &job)) };
        let sums = c.0.as_ptr().cast::<i32>();
        // SAFETY: `sums` is the 32 x 32 block (64-byte aligned); the caller guarantees `rows`
        // rows of NR sums at acc (stride ld_acc) when read or written and the epilogue's
        // pointers for rows x NR outputs.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if T::HARDWARE {
                return epilogue_avx512(sums, rows, acc, ld_acc, accumulate, out);
            }
            epilogue_scalar(sums, rows, acc, ld_acc, accumulate, out)
        }
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
