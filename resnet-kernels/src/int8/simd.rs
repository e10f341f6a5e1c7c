//! The x86 INT8 micro-kernels, written once: one macro body instantiated per ISA with that ISA's
//! vector width ([`w512`] or [`w256`]) and its 4-byte dot product (`vpdpbusd`, or two
//! `vpmaddubsw` + `vpmaddwd` pairs on the split weights). Each tile is MR rows x two vectors of `i32` columns;
//! the 4 activation bytes of a row are broadcast as one `i32` and meet both B vectors
//! (`2·MR` accumulators).

use super::{MicroKernel8, TileRequant};

/// 512-bit helpers (AVX-512 F + BW). Only called from `#[target_feature]` kernels that enable
/// at least `avx512f,avx512bw`, into which they are inlined.
pub(crate) mod w512 {
    use super::TileRequant;
    use std::arch::x86_64::*;

    pub type V = __m512i;
    pub const LANES: usize = 16;

    #[inline(always)]
    pub unsafe fn zero() -> V {
        // SAFETY: the caller is a kernel compiled with `avx512f,avx512bw` (the module's
        // contract), picked only on a CPU that has them; no memory is touched.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    pub unsafe fn load(p: *const i8) -> V {
        // SAFETY: the caller guarantees 64 readable bytes at p.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    pub unsafe fn splat(x: i32) -> V {
        // SAFETY: the caller is a kernel compiled with `avx512f,avx512bw` (the module's
        // contract), picked only on a CPU that has them; no memory is touched.
        unsafe { _mm512_set1_epi32(x) }
    }
    #[inline(always)]
    pub unsafe fn add(a: V, b: V) -> V {
        // SAFETY: the caller is a kernel compiled with `avx512f,avx512bw` (the module's
        // contract), picked only on a CPU that has them; no memory is touched.
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    pub unsafe fn load_i32(p: *const i32) -> V {
        // SAFETY: the caller guarantees 16 readable i32 at p.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    pub unsafe fn store_i32(p: *mut i32, v: V) {
        // SAFETY: the caller guarantees 16 writable i32 at p.
        unsafe { _mm512_storeu_si512(p.cast(), v) }
    }
    /// `vpdpbusd`: each lane += 4 `u8 x s8` products, exact.
    #[inline(always)]
    pub unsafe fn dot_vnni(acc: V, a: V, b: V, _: V) -> V {
        // SAFETY: the caller is the VNNI kernel, compiled with `avx512f,avx512bw,avx512vnni`,
        // chosen only on a CPU that has them; no memory is touched.
        unsafe { _mm512_dpbusd_epi32(acc, a, b) }
    }
    /// The split-weight dot product: `a·h` and `a·l` by `vpmaddubsw` (exact: |h| <= 64,
    /// l in {0, 1}), widened by `vpmaddwd` with 2 and 1, added: `a·(2h + l) = a·w`.
    #[inline(always)]
    pub unsafe fn dot_split(acc: V, a: V, h: V, l: V) -> V {
        // SAFETY: the caller is a kernel compiled with `avx512f,avx512bw` (the module's
        // contract), picked only on a CPU that has them; no memory is touched.
        unsafe {
            let high = _mm512_madd_epi16(_mm512_maddubs_epi16(a, h), _mm512_set1_epi16(2));
            let low = _mm512_madd_epi16(_mm512_maddubs_epi16(a, l), _mm512_set1_epi16(1));
            _mm512_add_epi32(acc, _mm512_add_epi32(high, low))
        }
    }
    /// The design note's epilogue on 16 columns `j0..j0+16` of row `i`, stored as u8.
    #[inline(always)]
    pub unsafe fn requant_store(v: V, t: &TileRequant, i: usize, j0: usize) {
        // SAFETY: the caller guarantees (i, j0..j0+16) inside the tile: 16 biases, scales,
        // residual bytes and output bytes.
        unsafe {
            let v = _mm512_add_epi32(v, _mm512_loadu_si512(t.bias.add(j0).cast()));
            let mut f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_loadu_ps(t.scale.add(j0)));
            if !t.residual.is_null() {
                let r =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(t.residual.add(i * t.ldr + j0).cast()));
                let r = _mm512_sub_epi32(r, _mm512_set1_epi32(t.res_zero_point));
                f = _mm512_add_ps(
                    f,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(r), _mm512_set1_ps(t.res_scale)),
                );
            }
            f = _mm512_max_ps(f, _mm512_set1_ps(t.lo));
            f = _mm512_min_ps(f, _mm512_set1_ps(t.hi));
            // Round to nearest even (the default MXCSR mode), then the zero point.
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(t.zero_point));
            _mm_storeu_si128(t.c.add(i * t.ldc + j0).cast(), _mm512_cvtepi32_epi8(q));
        }
    }
}

/// 256-bit helpers (AVX2). Only called from `#[target_feature]` kernels that enable at least
/// `avx2`, into which they are inlined.
pub(crate) mod w256 {
    use super::TileRequant;
    use std::arch::x86_64::*;

    pub type V = __m256i;
    pub const LANES: usize = 8;

    #[inline(always)]
    pub unsafe fn zero() -> V {
        // SAFETY: the caller is a kernel compiled with `avx2` (the module's contract), picked
        // only on a CPU that has it; no memory is touched.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    pub unsafe fn load(p: *const i8) -> V {
        // SAFETY: the caller guarantees 32 readable bytes at p.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    pub unsafe fn splat(x: i32) -> V {
        // SAFETY: the caller is a kernel compiled with `avx2` (the module's contract), picked
        // only on a CPU that has it; no memory is touched.
        unsafe { _mm256_set1_epi32(x) }
    }
    #[inline(always)]
    pub unsafe fn add(a: V, b: V) -> V {
        // SAFETY: the caller is a kernel compiled with `avx2` (the module's contract), picked
        // only on a CPU that has it; no memory is touched.
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    pub unsafe fn load_i32(p: *const i32) -> V {
        // SAFETY: the caller guarantees 8 readable i32 at p.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    pub unsafe fn store_i32(p: *mut i32, v: V) {
        // SAFETY: the caller guarantees 8 writable i32 at p.
        unsafe { _mm256_storeu_si256(p.cast(), v) }
    }
    /// AVX-VNNI `vpdpbusd` (VEX): each lane += 4 `u8 x s8` products, exact.
    #[inline(always)]
    pub unsafe fn dot_vnni(acc: V, a: V, b: V, _: V) -> V {
        // SAFETY: the caller is the AVX-VNNI kernel, compiled with `avx2,avxvnni`, chosen only
        // on a CPU that has them; no memory is touched.
        unsafe { _mm256_dpbusd_avx_epi32(acc, a, b) }
    }
    /// The split-weight dot product: `a·h` and `a·l` by `vpmaddubsw` (exact: |h| <= 64,
    /// l in {0, 1}), widened by `vpmaddwd` with 2 and 1, added: `a·(2h + l) = a·w`.
    #[inline(always)]
    pub unsafe fn dot_split(acc: V, a: V, h: V, l: V) -> V {
        // SAFETY: the caller is a kernel compiled with `avx2` (the module's contract), picked
        // only on a CPU that has it; no memory is touched.
        unsafe {
            let high = _mm256_madd_epi16(_mm256_maddubs_epi16(a, h), _mm256_set1_epi16(2));
            let low = _mm256_madd_epi16(_mm256_maddubs_epi16(a, l), _mm256_set1_epi16(1));
            _mm256_add_epi32(acc, _mm256_add_epi32(high, low))
        }
    }
    /// The design note's epilogue on 8 columns `j0..j0+8` of row `i`, stored as u8.
    #[inline(always)]
    pub unsafe fn requant_store(v: V, t: &TileRequant, i: usize, j0: usize) {
        // SAFETY: the caller guarantees (i, j0..j0+8) inside the tile: 8 biases, scales,
        // residual bytes and output bytes.
        unsafe {
            let v = _mm256_add_epi32(v, _mm256_loadu_si256(t.bias.add(j0).cast()));
            let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(t.scale.add(j0)));
            if !t.residual.is_null() {
                let r =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(t.residual.add(i * t.ldr + j0).cast()));
                let r = _mm256_sub_epi32(r, _mm256_set1_epi32(t.res_zero_point));
                f = _mm256_add_ps(
                    f,
                    _mm256_mul_ps(_mm256_cvtepi32_ps(r), _mm256_set1_ps(t.res_scale)),
                );
            }
            f = _mm256_max_ps(f, _mm256_set1_ps(t.lo));
            f = _mm256_min_ps(f, _mm256_set1_ps(t.hi));
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(f), _mm256_set1_epi32(t.zero_point));
            // 8 i32 in 0..=255 -> 8 bytes: pack within each 128-bit lane, then gather the low
            // dword of each lane.
            let p = _mm256_packus_epi32(q, q);
            let p = _mm256_packus_epi16(p, p);
            let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
            _mm_storel_epi64(t.c.add(i * t.ldc + j0).cast(), _mm256_castsi256_si128(p));
        }
    }
}

/// Defines an INT8 kernel type for one ISA.
macro_rules! int8_kernel {
    (
        $(#[$doc:meta])*
        $kernel:ident, name: $name:literal, features: $features:literal,
        mr: $mr:literal, width: $w:ident, dot: $dot:ident, parts: $parts:literal,
        rows: [$($r:literal),+]
    ) => {
        $(#[$doc])*
        pub(crate) struct $kernel;

        impl MicroKernel8 for $kernel {
            const MR: usize = $mr;
            const NR: usize = 2 * $w::LANES;
            const NAME: &'static str = $name;
            const B_PARTS: usize = $parts;

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
                /// R rows of the tile (R = MR except on the last rows of C).
                #[target_feature(enable = $features)]
                unsafe fn tile<const R: usize>(
                    kc4: usize,
                    a: *const u8,
                    b: *const i8,
                    acc: *mut i32,
                    ld_acc: usize,
                    accumulate: bool,
                    out: Option<&TileRequant>,
                ) {
                    const L: usize = $w::LANES;
                    const NR: usize = 2 * L;
                    // SAFETY: `zero` needs the kernel's features, enabled on this fn.
                    let mut acc0: [$w::V; R] = [unsafe { $w::zero() }; R];
                    // SAFETY: as above.
                    let mut acc1: [$w::V; R] = [unsafe { $w::zero() }; R];
                    for g in 0..kc4 / 4 {
                        // SAFETY: g < kc4/4 and i < R <= MR: a + i*kc4 + 4g + 4 and
                        // b + (g+1)*NR*4*parts stay inside the panels (caller contract).
                        unsafe {
                            let group = b.add(g * NR * 4 * $parts);
                            let b0 = $w::load(group);
                            let b1 = $w::load(group.add(L * 4));
                            // The low weight parts of a split kernel (unused otherwise).
                            let (l0, l1) = if $parts == 2 {
                                ($w::load(group.add(NR * 4)), $w::load(group.add(NR * 4 + L * 4)))
                            } else {
                                (b0, b1)
                            };
                            for i in 0..R {
                                let a4 = a.add(i * kc4 + 4 * g).cast::<i32>().read_unaligned();
                                let av = $w::splat(a4);
                                acc0[i] = $w::$dot(acc0[i], av, b0, l0);
                                acc1[i] = $w::$dot(acc1[i], av, b1, l1);
                            }
                        }
                    }
                    for i in 0..R {
                        // SAFETY: row i < R = rows of the tile: the sums at acc (when read or
                        // written) and the epilogue's pointers cover it (caller contract).
                        unsafe {
                            let (mut v0, mut v1) = (acc0[i], acc1[i]);
                            let p = acc.wrapping_add(i * ld_acc);
                            if accumulate {
                                v0 = $w::add(v0, $w::load_i32(p));
                                v1 = $w::add(v1, $w::load_i32(p.add(L)));
                            }
                            match out {
                                None => {
                                    $w::store_i32(p, v0);
                                    $w::store_i32(p.add(L), v1);
                                }
                                Some(t) => {
                                    $w::requant_store(v0, t, i, 0);
                                    $w::requant_store(v1, t, i, L);
                                }
                            }
                        }
                    }
                }

                // SAFETY: forwarded from the caller's contract (ISA support, buffer sizes).
                unsafe {
                    match rows {
                        $($r => tile::<$r>(kc4, a, b, acc, ld_acc, accumulate, out),)+
                        _ => unreachable!("rows must be 1..=MR"),
                    }
                }
            }
        }
    };
}

int8_kernel!(
    /// `avx512vnni_i32_12x32`: 12 x 32 tile, 24 zmm accumulators, one `vpdpbusd` per 4 k.
    Avx512VnniKernel8, name: "avx512vnni_i32_12x32", features: "avx512f,avx512bw,avx512vnni",
    mr: 12, width: w512, dot: dot_vnni, parts: 1, rows: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
);

int8_kernel!(
    /// `avx512bw_i32_12x32`: as the VNNI kernel, with the split weights' two `vpmaddubsw` +
    /// `vpmaddwd` pairs.
    Avx512BwKernel8, name: "avx512bw_i32_12x32", features: "avx512f,avx512bw",
    mr: 12, width: w512, dot: dot_split, parts: 2, rows: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
);

int8_kernel!(
    /// `avxvnni_i32_6x16`: 6 x 16 tile, 12 ymm accumulators, one VEX `vpdpbusd` per 4 k.
    AvxVnniKernel8, name: "avxvnni_i32_6x16", features: "avx2,avxvnni",
    mr: 6, width: w256, dot: dot_vnni, parts: 1, rows: [1, 2, 3, 4, 5, 6]
);

int8_kernel!(
    /// `avx2_i32_6x16`: 6 x 16 tile, the split weights' two `vpmaddubsw` + `vpmaddwd` pairs
    /// per 4 k.
    Avx2Kernel8, name: "avx2_i32_6x16", features: "avx2",
    mr: 6, width: w256, dot: dot_split, parts: 2, rows: [1, 2, 3, 4, 5, 6]
);

/// Defines a throughput probe: 12 independent chains of one kernel's 4-byte dot product.
macro_rules! dot_peak {
    ($(#[$doc:meta])* $fn:ident, features: $features:literal, width: $w:ident, dot: $dot:ident) => {
        $(#[$doc])*
        /// Returns the multiply-accumulates done.
        ///
        /// # Safety
        /// The CPU supports the features named.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $fn(iters: usize) -> f64 {
            // SAFETY: the features are enabled on this fn; no memory is touched.
            unsafe {
                // Each chain feeds its accumulator back as the activations, so that no part of
                // the dot product is loop-invariant (LLVM folds or hoists `vpmaddubsw` and
                // `vpmaddwd` of constants; it did, and the probe then reported 4x the truth).
                let b = std::hint::black_box($w::splat(0x0101_0101));
                let mut acc = [$w::splat(0x0102_0304); 12];
                for _ in 0..iters {
                    for v in acc.iter_mut() {
                        *v = $w::$dot(*v, *v, b, b);
                    }
                }
                std::hint::black_box(acc);
            }
            (iters * 12 * $w::LANES * 4) as f64
        }
    };
}

dot_peak!(peak_vnni512, features: "avx512f,avx512bw,avx512vnni", width: w512, dot: dot_vnni);
dot_peak!(peak_bw512, features: "avx512f,avx512bw", width: w512, dot: dot_split);
dot_peak!(peak_avxvnni, features: "avx2,avxvnni", width: w256, dot: dot_vnni);
dot_peak!(peak_avx2, features: "avx2", width: w256, dot: dot_split);
