//! The x86 micro-kernels, written once: one macro body instantiated per ISA with that ISA's
//! vector type and intrinsics. Each tile is `MR` rows x two vectors of columns; the rows of A are
//! broadcast one at a time and multiplied into both column vectors (`2·MR` accumulators).
//! A kernel may replace the K loop of its full-height tiles by an `asm!` block
//! (`full_tile_k_loop`); its partial tiles and every epilogue stay in the macro's Rust.

/// A full tile's K loop: `(kc, a, lda, b, acc0, acc1)`, adding `A · B` into the MR
/// accumulators of each column vector. Unsafe: the CPU has the kernel's features and A, B
/// hold what [`super::MicroKernel::run`] says.
type FullTileKLoop<V> = unsafe fn(usize, *const f32, usize, *const f32, &mut [V], &mut [V]);

/// Defines a kernel type for one ISA.
macro_rules! simd_kernel {
    (
        $(#[$doc:meta])*
        $kernel:ident, name: $name:literal, features: $features:literal,
        mr: $mr:literal, lanes: $lanes:literal, vector: $vec:ty,
        zero: $zero:ident, load: $load:ident, store: $store:ident, splat: $splat:ident,
        fma: $fma:ident, add: $add:ident, max: $max:ident,
        rows: [$($r:literal),+],
        full_tile_k_loop: $full:expr
    ) => {
        $(#[$doc])*
        pub(crate) struct $kernel;

        impl super::MicroKernel for $kernel {
            const MR: usize = $mr;
            const NR: usize = 2 * $lanes;
            const NAME: &'static str = $name;

            unsafe fn run(
                rows: usize,
                kc: usize,
                (a, lda): (*const f32, usize),
                b: *const f32,
                c: *mut f32,
                ldc: usize,
                accumulate: bool,
                epi: Option<&super::TileEpilogue>,
            ) {
                /// R rows of the tile (R = MR except on the last rows of C, so row tails waste
                /// no FMAs).
                #[target_feature(enable = $features)]
                unsafe fn tile<const R: usize>(
                    kc: usize,
                    (a, lda): (*const f32, usize),
                    b: *const f32,
                    c: *mut f32,
                    ldc: usize,
                    accumulate: bool,
                    epi: Option<&super::TileEpilogue>,
                ) {
                    use std::arch::x86_64::*;
                    const NR: usize = 2 * $lanes;
                    let mut acc0: [$vec; R] = [$zero(); R];
                    let mut acc1: [$vec; R] = [$zero(); R];
                    let full: Option<FullTileKLoop<$vec>> = $full;
                    if let (Some(k_loop), true) = (full, R == $mr) {
                        // SAFETY: R = MR rows; the caller's contract covers A, B and kc.
                        unsafe { k_loop(kc, a, lda, b, &mut acc0, &mut acc1) };
                    } else {
                    for k in 0..kc {
                        // SAFETY: k < kc and i < R = rows: a + i*lda + k and b + k*NR .. b +
                        // k*NR + NR stay inside A's rows and B's panel (caller contract).
                        unsafe {
                            let b0 = $load(b.add(k * NR));
                            let b1 = $load(b.add(k * NR + $lanes));
                            for i in 0..R {
                                let a_ik = $splat(*a.add(i * lda + k));
                                acc0[i] = $fma(a_ik, b0, acc0[i]);
                                acc1[i] = $fma(a_ik, b1, acc1[i]);
                            }
                        }
                    }
                    }
                    for i in 0..R {
                        // SAFETY: row i < R = rows of the tile: c, the NR biases and the
                        // residual row are inside their buffers (caller contract).
                        unsafe {
                            let out = c.add(i * ldc);
                            let (mut v0, mut v1) = (acc0[i], acc1[i]);
                            if accumulate {
                                v0 = $add(v0, $load(out));
                                v1 = $add(v1, $load(out.add($lanes)));
                            }
                            if let Some(e) = epi {
                                if !e.bias.is_null() {
                                    v0 = $add(v0, $load(e.bias));
                                    v1 = $add(v1, $load(e.bias.add($lanes)));
                                }
                                if !e.residual.is_null() {
                                    let r = e.residual.add(i * e.ldr);
                                    v0 = $add(v0, $load(r));
                                    v1 = $add(v1, $load(r.add($lanes)));
                                }
                                if e.relu {
                                    v0 = $max(v0, $zero());
                                    v1 = $max(v1, $zero());
                                }
                            }
                            $store(out, v0);
                            $store(out.add($lanes), v1);
                        }
                    }
                }

                // SAFETY: forwarded from the caller's contract (ISA support, buffer sizes).
                unsafe {
                    match rows {
                        $($r => tile::<$r>(kc, (a, lda), b, c, ldc, accumulate, epi),)+
                        _ => unreachable!("rows must be 1..=MR"),
                    }
                }
            }
        }
    };
}

simd_kernel!(
    /// `avx2_f32_6x16`: 6 x 16 tile, 12 ymm accumulators of the 16 registers, plus two for the
    /// B row and one for the broadcast A value.
    Avx2FmaKernel, name: "avx2_f32_6x16", features: "avx2,fma",
    mr: 6, lanes: 8, vector: __m256,
    zero: _mm256_setzero_ps, load: _mm256_loadu_ps, store: _mm256_storeu_ps, splat: _mm256_set1_ps,
    fma: _mm256_fmadd_ps, add: _mm256_add_ps, max: _mm256_max_ps,
    rows: [1, 2, 3, 4, 5, 6],
    full_tile_k_loop: None
);

simd_kernel!(
    /// `avx512_f32_12x32`: 12 x 32 tile, 24 zmm accumulators of the 32 registers, plus two for
    /// the B row and one for the broadcast A value.
    Avx512Kernel, name: "avx512_f32_12x32", features: "avx512f",
    mr: 12, lanes: 16, vector: __m512,
    zero: _mm512_setzero_ps, load: _mm512_loadu_ps, store: _mm512_storeu_ps, splat: _mm512_set1_ps,
    fma: _mm512_fmadd_ps, add: _mm512_add_ps, max: _mm512_max_ps,
    rows: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    full_tile_k_loop: Some(k_loop_avx512_12x32)
);

/// The K loop of a full 12-row `avx512_f32_12x32` tile as one `asm!` block. Compiled from the
/// generic loop, each K step spent about 14 integer instructions on the 12 row addresses
/// (`i * lda + k`), which compete with the FMAs for the vector ports. Here the rows are read
/// from four base pointers with the row stride as a scaled index (rows 0, 1, 2, 4, 8 from `a`;
/// 3, 5, 7, 11 from `a + 3 lda`; 6, 10 from `a + 6 lda`; 9 from `a + 9 lda`), so a step costs
/// six integer instructions per two steps: the four bases, B, the counter.
///
/// # Safety
/// The CPU has AVX-512 F; A holds 12 rows of `kc` floats at stride `lda`, B `kc x 32` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn k_loop_avx512_12x32(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    acc0: &mut [std::arch::x86_64::__m512],
    acc1: &mut [std::arch::x86_64::__m512],
) {
    use std::arch::asm;
    if kc == 0 {
        return;
    }
    let ldb = lda * 4;
    let (mut c0, mut c1): (
        [std::arch::x86_64::__m512; 12],
        [std::arch::x86_64::__m512; 12],
    ) = (
        acc0.try_into().expect("12 rows"),
        acc1.try_into().expect("12 rows"),
    );
    // SAFETY: the caller's contract: every address below is inside A's 12 rows (k < kc) or
    // B's panel; only the named registers are written.
    unsafe {
        asm!(
            // Two K steps per iteration (the second at +4 bytes of A, +128 of B), then
            // the odd step.
            "mov {k2}, {k}",
            "shr {k2}, 1",
            "jz 3f",
            "2:",
            "vmovups {b0}, [{b}]",
            "vmovups {b1}, [{b} + 64]",
            "vbroadcastss {t}, dword ptr [{p0}]",
            "vfmadd231ps {x0}, {b0}, {t}", "vfmadd231ps {y0}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}]",
            "vfmadd231ps {x1}, {b0}, {t}", "vfmadd231ps {y1}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*2]",
            "vfmadd231ps {x2}, {b0}, {t}", "vfmadd231ps {y2}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3}]",
            "vfmadd231ps {x3}, {b0}, {t}", "vfmadd231ps {y3}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*4]",
            "vfmadd231ps {x4}, {b0}, {t}", "vfmadd231ps {y4}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*2]",
            "vfmadd231ps {x5}, {b0}, {t}", "vfmadd231ps {y5}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p6}]",
            "vfmadd231ps {x6}, {b0}, {t}", "vfmadd231ps {y6}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*4]",
            "vfmadd231ps {x7}, {b0}, {t}", "vfmadd231ps {y7}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*8]",
            "vfmadd231ps {x8}, {b0}, {t}", "vfmadd231ps {y8}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p9}]",
            "vfmadd231ps {x9}, {b0}, {t}", "vfmadd231ps {y9}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p6} + {ld}*4]",
            "vfmadd231ps {x10}, {b0}, {t}", "vfmadd231ps {y10}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*8]",
            "vfmadd231ps {x11}, {b0}, {t}", "vfmadd231ps {y11}, {b1}, {t}",
            "vmovups {b0}, [{b} + 128]",
            "vmovups {b1}, [{b} + 192]",
            "vbroadcastss {t}, dword ptr [{p0} + 4]",
            "vfmadd231ps {x0}, {b0}, {t}", "vfmadd231ps {y0}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld} + 4]",
            "vfmadd231ps {x1}, {b0}, {t}", "vfmadd231ps {y1}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*2 + 4]",
            "vfmadd231ps {x2}, {b0}, {t}", "vfmadd231ps {y2}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + 4]",
            "vfmadd231ps {x3}, {b0}, {t}", "vfmadd231ps {y3}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*4 + 4]",
            "vfmadd231ps {x4}, {b0}, {t}", "vfmadd231ps {y4}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*2 + 4]",
            "vfmadd231ps {x5}, {b0}, {t}", "vfmadd231ps {y5}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p6} + 4]",
            "vfmadd231ps {x6}, {b0}, {t}", "vfmadd231ps {y6}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*4 + 4]",
            "vfmadd231ps {x7}, {b0}, {t}", "vfmadd231ps {y7}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*8 + 4]",
            "vfmadd231ps {x8}, {b0}, {t}", "vfmadd231ps {y8}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p9} + 4]",
            "vfmadd231ps {x9}, {b0}, {t}", "vfmadd231ps {y9}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p6} + {ld}*4 + 4]",
            "vfmadd231ps {x10}, {b0}, {t}", "vfmadd231ps {y10}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*8 + 4]",
            "vfmadd231ps {x11}, {b0}, {t}", "vfmadd231ps {y11}, {b1}, {t}",
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
            "vmovups {b0}, [{b}]",
            "vmovups {b1}, [{b} + 64]",
            "vbroadcastss {t}, dword ptr [{p0}]",
            "vfmadd231ps {x0}, {b0}, {t}", "vfmadd231ps {y0}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}]",
            "vfmadd231ps {x1}, {b0}, {t}", "vfmadd231ps {y1}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*2]",
            "vfmadd231ps {x2}, {b0}, {t}", "vfmadd231ps {y2}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3}]",
            "vfmadd231ps {x3}, {b0}, {t}", "vfmadd231ps {y3}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*4]",
            "vfmadd231ps {x4}, {b0}, {t}", "vfmadd231ps {y4}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*2]",
            "vfmadd231ps {x5}, {b0}, {t}", "vfmadd231ps {y5}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p6}]",
            "vfmadd231ps {x6}, {b0}, {t}", "vfmadd231ps {y6}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*4]",
            "vfmadd231ps {x7}, {b0}, {t}", "vfmadd231ps {y7}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p0} + {ld}*8]",
            "vfmadd231ps {x8}, {b0}, {t}", "vfmadd231ps {y8}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p9}]",
            "vfmadd231ps {x9}, {b0}, {t}", "vfmadd231ps {y9}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p6} + {ld}*4]",
            "vfmadd231ps {x10}, {b0}, {t}", "vfmadd231ps {y10}, {b1}, {t}",
            "vbroadcastss {t}, dword ptr [{p3} + {ld}*8]",
            "vfmadd231ps {x11}, {b0}, {t}", "vfmadd231ps {y11}, {b1}, {t}",
            "4:",
            p0 = inout(reg) a => _,
            p3 = inout(reg) a.wrapping_add(3 * lda) => _,
            p6 = inout(reg) a.wrapping_add(6 * lda) => _,
            p9 = inout(reg) a.wrapping_add(9 * lda) => _,
            ld = in(reg) ldb,
            b = inout(reg) b => _,
            k = in(reg) kc,
            k2 = out(reg) _,
            b0 = out(zmm_reg) _,
            b1 = out(zmm_reg) _,
            t = out(zmm_reg) _,
            x0 = inout(zmm_reg) c0[0], x1 = inout(zmm_reg) c0[1], x2 = inout(zmm_reg) c0[2],
            x3 = inout(zmm_reg) c0[3], x4 = inout(zmm_reg) c0[4], x5 = inout(zmm_reg) c0[5],
            x6 = inout(zmm_reg) c0[6], x7 = inout(zmm_reg) c0[7], x8 = inout(zmm_reg) c0[8],
            x9 = inout(zmm_reg) c0[9], x10 = inout(zmm_reg) c0[10], x11 = inout(zmm_reg) c0[11],
            y0 = inout(zmm_reg) c1[0], y1 = inout(zmm_reg) c1[1], y2 = inout(zmm_reg) c1[2],
            y3 = inout(zmm_reg) c1[3], y4 = inout(zmm_reg) c1[4], y5 = inout(zmm_reg) c1[5],
            y6 = inout(zmm_reg) c1[6], y7 = inout(zmm_reg) c1[7], y8 = inout(zmm_reg) c1[8],
            y9 = inout(zmm_reg) c1[9], y10 = inout(zmm_reg) c1[10], y11 = inout(zmm_reg) c1[11],
            options(nostack, readonly),
        );
    }
    acc0.copy_from_slice(&c0);
    acc1.copy_from_slice(&c1);
}
