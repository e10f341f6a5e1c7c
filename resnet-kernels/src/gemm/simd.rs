//! The x86 micro-kernels, written once: one macro body instantiated per ISA with that ISA's
//! vector type and intrinsics. Each tile is `MR` rows x two vectors of columns; the rows of A are
//! broadcast one at a time and multiplied into both column vectors (`2·MR` accumulators).
//! A kernel may replace the K loop of its full 12-row tiles by the shared `asm!` block of
//! [`crate::broadcast_loop`] (`full_tile_k_loop`); its partial tiles and every epilogue stay in
//! the macro's Rust.

/// A full 12-row tile's K loop ([`crate::broadcast_loop`]): `(steps, a, lda in bytes, b, acc0,
/// acc1)`. Unsafe: the CPU has the kernel's features and A, B hold what
/// [`super::MicroKernel::run`] says.
type FullTileKLoop<V> = unsafe fn(usize, *const u8, usize, *const u8, &mut [V; 12], &mut [V; 12]);

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
                    if let (Some(k_loop), 12) = (full, R) {
                        let rows0: &mut [$vec; 12] = (&mut acc0[..]).try_into().expect("12 rows");
                        let rows1: &mut [$vec; 12] = (&mut acc1[..]).try_into().expect("12 rows");
                        // SAFETY: 12 rows; the caller's contract covers A (kc floats per row at
                        // stride lda), B (kc x NR floats) and the CPU's features.
                        unsafe { k_loop(kc, a.cast(), lda * 4, b.cast(), rows0, rows1) };
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
    full_tile_k_loop: Some(crate::broadcast_loop::k_loop_f32)
);
