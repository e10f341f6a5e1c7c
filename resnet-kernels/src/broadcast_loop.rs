//! The K loop of a full 12-row x 32-column AVX-512 tile as one `asm!` block, written once for
//! the broadcast kernels, which all step 4 bytes along each row of A and 128 bytes along B (two
//! 64-byte vectors of the panel), so only the broadcast and the dot instruction differ. In use
//! for `avx512_f32_12x32` (`vbroadcastss` + `vfmadd231ps`). The same loop for
//! `avx512bf16_f32_12x32` (`vpbroadcastd` + `vdpbf16ps`) and `avx512vnni_i32_12x32`
//! (`vpbroadcastd` + `vpdpbusd`, A's unsigned bytes first) measured no change on the Xeon 167,
//! whose `vdpbf16ps` and `vpdpbusd` throughput bounds those kernels, so they keep their Rust
//! loops (not measured on an AMD machine).
//!
//! Why: compiled from the kernels' generic loops, each K step spent about 14 integer
//! instructions on the 12 row addresses (`a + i * lda + k`), which compete with the dot products
//! for the vector ports. Here the rows are read from four base pointers with the row stride as a
//! scaled index (rows 0, 1, 2, 4, 8 from `a`; 3, 5, 7, 11 from `a + 3 lda`; 6, 10 from `a + 6
//! lda`; 9 from `a + 9 lda`), two K steps per iteration: six integer instructions per two
//! steps. The accumulators stay in registers (`inout(zmm_reg)`), and the tile's epilogue stays in
//! each kernel's Rust.

use std::arch::asm;
use std::arch::x86_64::__m512;

/// One K step's template text: B's two vectors at `b + $b_at`, then each of the 12 rows of A
/// (at `+ $a_at` bytes) broadcast and multiplied into its two accumulators.
macro_rules! k_step {
    ($bcast:literal, $dot:literal, $ops0:literal, $ops1:literal, $a_at:literal, $b_at:literal) => {
        concat!(
            concat!("vmovups {b0}, [{b}", $b_at, "]\n"),
            concat!("vmovups {b1}, [{b} + 64", $b_at, "]\n"),
            concat!($bcast, " {t}, dword ptr [{p0}", $a_at, "]\n"),
            concat!($dot, " {x0}", $ops0, "\n", $dot, " {y0}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p0} + {ld}", $a_at, "]\n"),
            concat!($dot, " {x1}", $ops0, "\n", $dot, " {y1}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p0} + {ld}*2", $a_at, "]\n"),
            concat!($dot, " {x2}", $ops0, "\n", $dot, " {y2}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p3}", $a_at, "]\n"),
            concat!($dot, " {x3}", $ops0, "\n", $dot, " {y3}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p0} + {ld}*4", $a_at, "]\n"),
            concat!($dot, " {x4}", $ops0, "\n", $dot, " {y4}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p3} + {ld}*2", $a_at, "]\n"),
            concat!($dot, " {x5}", $ops0, "\n", $dot, " {y5}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p6}", $a_at, "]\n"),
            concat!($dot, " {x6}", $ops0, "\n", $dot, " {y6}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p3} + {ld}*4", $a_at, "]\n"),
            concat!($dot, " {x7}", $ops0, "\n", $dot, " {y7}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p0} + {ld}*8", $a_at, "]\n"),
            concat!($dot, " {x8}", $ops0, "\n", $dot, " {y8}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p9}", $a_at, "]\n"),
            concat!($dot, " {x9}", $ops0, "\n", $dot, " {y9}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p6} + {ld}*4", $a_at, "]\n"),
            concat!($dot, " {x10}", $ops0, "\n", $dot, " {y10}", $ops1, "\n"),
            concat!($bcast, " {t}, dword ptr [{p3} + {ld}*8", $a_at, "]\n"),
            concat!($dot, " {x11}", $ops0, "\n", $dot, " {y11}", $ops1, ""),
        )
    };
}

/// Defines `$name(steps, a, lda, b, acc0, acc1)`: for each of `steps` K steps, 12 rows of A (4
/// bytes each at `a + row * lda`, advancing 4 bytes per step) broadcast by `$bcast` and
/// multiplied by `$dot` into the accumulators of the 2 B vectors (128 bytes per step at `b`).
/// `$ops0` / `$ops1` give the dot product's source order for B vector 0 / 1.
macro_rules! k_loop_12x32 {
    ($(#[$doc:meta])* $name:ident, $features:literal, $acc:ty, $bcast:literal, $dot:literal, $ops0:literal, $ops1:literal) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the features named; A holds 12 rows of `4 * steps` bytes at stride
        /// `lda`, B `128 * steps` bytes.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(
            steps: usize,
            a: *const u8,
            lda: usize,
            b: *const u8,
            c0: &mut [$acc; 12],
            c1: &mut [$acc; 12],
        ) {
            // SAFETY: the caller's contract: every address read is inside A's 12 rows (the
            // steps' 4 bytes each) or B's panel; only the named registers are written.
            unsafe {
                asm!(
                    "mov {k2}, {k}",
                    "shr {k2}, 1",
                    "jz 3f",
                    "2:",
                    k_step!($bcast, $dot, $ops0, $ops1, "", ""),
                    k_step!($bcast, $dot, $ops0, $ops1, " + 4", " + 128"),
                    "add {p0}, 8",
                    "add {p3}, 8",
                    "add {p6}, 8",
                    "add {p9}, 8",
                    "add {b}, 256",
                    "dec {k2}",
                    "jnz 2b",
                    "3:",
                    "test {k}, 1",
                    "jz 4f",
                    k_step!($bcast, $dot, $ops0, $ops1, "", ""),
                    "4:",
            p0 = inout(reg) a => _,
            p3 = inout(reg) a.wrapping_add(3 * lda) => _,
            p6 = inout(reg) a.wrapping_add(6 * lda) => _,
            p9 = inout(reg) a.wrapping_add(9 * lda) => _,
            ld = in(reg) lda,
            b = inout(reg) b => _,
            k = in(reg) steps,
            k2 = out(reg) _,
            b0 = out(zmm_reg) _,
            b1 = out(zmm_reg) _,
            t = out(zmm_reg) _,
            x0 = inout(zmm_reg) c0[0], y0 = inout(zmm_reg) c1[0],
            x1 = inout(zmm_reg) c0[1], y1 = inout(zmm_reg) c1[1],
            x2 = inout(zmm_reg) c0[2], y2 = inout(zmm_reg) c1[2],
            x3 = inout(zmm_reg) c0[3], y3 = inout(zmm_reg) c1[3],
            x4 = inout(zmm_reg) c0[4], y4 = inout(zmm_reg) c1[4],
            x5 = inout(zmm_reg) c0[5], y5 = inout(zmm_reg) c1[5],
            x6 = inout(zmm_reg) c0[6], y6 = inout(zmm_reg) c1[6],
            x7 = inout(zmm_reg) c0[7], y7 = inout(zmm_reg) c1[7],
            x8 = inout(zmm_reg) c0[8], y8 = inout(zmm_reg) c1[8],
            x9 = inout(zmm_reg) c0[9], y9 = inout(zmm_reg) c1[9],
            x10 = inout(zmm_reg) c0[10], y10 = inout(zmm_reg) c1[10],
            x11 = inout(zmm_reg) c0[11], y11 = inout(zmm_reg) c1[11],
            options(nostack, readonly),
                );
            }
        }
    };
}

k_loop_12x32!(
    /// `avx512_f32_12x32`'s K loop: `vbroadcastss` of one f32, `vfmadd231ps`.
    k_loop_f32, "avx512f", __m512, "vbroadcastss", "vfmadd231ps", ", {b0}, {t}", ", {b1}, {t}"
);
