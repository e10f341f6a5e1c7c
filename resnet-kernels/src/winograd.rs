//! Winograd F(4x4, 3x3) convolution for 3x3 stride-1 pad-1 layers, NHWC.
//!
//! A 3x3 convolution computes each 4x4 block of outputs from a 6x6 block of inputs with
//! 4·4·9 = 144 multiplications per channel pair. Winograd's minimal filtering (Lavin & Gray
//! 2016) computes the same block as
//!
//! ```text
//! Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A          g: 3x3 filter, d: 6x6 input tile, Y: 4x4 output
//! ```
//!
//! with 36 multiplications: 4x fewer. Summed over input channels, the element-wise product
//! becomes 36 independent GEMMs, one per position `p` of the 6x6 transformed tile:
//!
//! ```text
//! M[p] (tiles x K) = V[p] (tiles x C) · U[p] (C x K)
//! ```
//!
//! `U = G g Gᵀ` is computed once per model (in f64) and packed like any GEMM weight; `V = Bᵀ d B`
//! (the input transform) and `Aᵀ M A` (the output transform, where the fused bias, residual and
//! ReLU are applied) run per call, vectorised over channels. The transforms use the points
//! 0, ±1, ±2, ∞; their larger constants (up to 8 and 1/24) cost accuracy: see the tests for the
//! error against direct convolution.
//!
//! Memory: `U` holds 36/9 = 4x the floats of the 3x3 filter, which is why a model may choose to
//! keep layers with large filters (ResNet-18's layer4) on the direct GEMM path.

use crate::cpu::Isa;
use crate::gemm::{sgemm_packed, ASource, Epilogue, PackedB};
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Each worker's tile buffer for the input and output transforms, reused across tiles,
    /// layers and calls: a warm forward pass allocates nothing here. (Every element a
    /// transform reads is written first for the tile at hand, so stale values never leak.)
    static TILE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Zeros for the input tile's pixels outside the image: only ever grown, never written,
    /// so they are not cleared for every tile.
    static ZEROS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's tile buffer, grown to at least `len` floats.
fn with_tile_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    TILE_SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Runs `f` on `len` zeros of this thread.
fn with_zeros<R>(len: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    ZEROS.with(|z| {
        let mut z = z.borrow_mut();
        if z.len() < len {
            z.resize(len, 0.0);
        }
        f(&z[..len])
    })
}

/// Output tile side (m) and input tile side (m + r - 1).
const M: usize = 4;
const T: usize = 6;

/// `G` (6x3): the filter transform.
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// A 3x3 stride-1 convolution's weights, transformed and packed for the 36 GEMMs.
#[derive(Clone, Debug)]
pub struct WinogradWeights {
    in_channels: usize,
    out_channels: usize,
    /// `U[p]` as a packed `C x K` matrix, for p = 6·i + j.
    packed: Vec<PackedB>,
}

impl WinogradWeights {
    /// Transforms OIHW weights `[K, C, 3, 3]` (BatchNorm already folded) and packs them.
    ///
    /// # Panics
    /// If `weights.len() != out_channels * in_channels * 9`, or `isa` is unsupported.
    pub fn new(weights: &[f32], in_channels: usize, out_channels: usize, isa: Isa) -> Self {
        assert!(isa.is_supported(), "ISA {isa} is not supported by this CPU");
        let kernel = crate::gemm::kernel_for(isa);
        Self::with_kernel(
            weights,
            in_channels,
            out_channels,
            kernel,
            crate::gemm::blocking::DEFAULT,
        )
    }

    /// As [`WinogradWeights::new`], for a given f32 kernel line and blocking of the 36 GEMMs (a
    /// plan's choice).
    ///
    /// # Panics
    /// As [`crate::gemm::PackedB::with_kernel`].
    pub fn with_kernel(
        weights: &[f32],
        in_channels: usize,
        out_channels: usize,
        kernel: &'static crate::gemm::F32Kernel,
        blocking: crate::gemm::Blocking,
    ) -> Self {
        let (c_n, k_n) = (in_channels, out_channels);
        assert_eq!(weights.len(), k_n * c_n * 9, "weights must be [K, C, 3, 3]");
        // One row i of the 6x6 transformed tile per task: its six U[i·6 + j] (C x K,
        // row-major) are computed, packed and dropped, so building holds at most six unpacked
        // matrices per thread beside the packed ones.
        let rows: Vec<Vec<PackedB>> = (0..T)
            .into_par_iter()
            .map(|i| {
                let mut u = vec![vec![0.0f32; c_n * k_n]; T];
                for c in 0..c_n {
                    for k in 0..k_n {
                        let g = &weights[(k * c_n + c) * 9..][..9];
                        // (G g)[i][s], then (G g Gᵀ)[i][j] = Σ_s (G g)[i][s] G[j][s], in f64.
                        let mut gi = [0.0f64; 3];
                        for (s, v) in gi.iter_mut().enumerate() {
                            *v = (0..3).map(|t| G[i][t] * g[t * 3 + s] as f64).sum();
                        }
                        for (j, uj) in u.iter_mut().enumerate() {
                            let v: f64 = (0..3).map(|s| gi[s] * G[j][s]).sum();
                            uj[c * k_n + k] = v as f32;
                        }
                    }
                }
                u.iter()
                    .map(|m| PackedB::with_kernel(m, c_n, k_n, kernel, blocking))
                    .collect()
            })
            .collect();
        let packed = rows.into_iter().flatten().collect();
        WinogradWeights {
            in_channels,
            out_channels,
            packed,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }
}

/// Buffers of one Winograd convolution, reused across calls.
#[derive(Default, Debug)]
pub struct WinogradScratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

/// The NHWC geometry of a 3x3 stride-1 pad-1 convolution (output size = input size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3x3Shape {
    /// Images.
    pub batch: usize,
    /// Height (in = out).
    pub h: usize,
    /// Width (in = out).
    pub w: usize,
}

/// `out = epilogue(conv3x3(input))`, NHWC, stride 1, padding 1, via Winograd F(4x4, 3x3).
/// `out` must hold `batch·h·w·K` floats; a residual, when given, is shaped like `out`.
///
/// # Panics
/// If the slices do not fit the shape (a bug in the caller, never bad user input).
pub fn conv3x3_winograd(
    input: &[f32],
    shape: Conv3x3Shape,
    weights: &WinogradWeights,
    epi: &Epilogue<'_>,
    out: &mut [f32],
    scratch: &mut WinogradScratch,
) {
    let Conv3x3Shape { batch, h, w } = shape;
    let (c_n, k_n) = (weights.in_channels, weights.out_channels);
    assert_eq!(
        input.len(),
        batch * h * w * c_n,
        "input must be N x H x W x C"
    );
    assert_eq!(
        out.len(),
        batch * h * w * k_n,
        "output must be N x H x W x K"
    );
    if let Some((r, ldr)) = epi.residual {
        assert!(
            ldr == k_n && r.len() == out.len(),
            "residual must be shaped like the output"
        );
    }
    if let Some(b) = epi.bias {
        assert_eq!(b.len(), k_n, "one bias per output channel");
    }
    // The transforms compiled for the kernel line the weights were packed for.
    let (input_transform, output_transform) = weights.packed[0].kernel().winograd_transforms();
    let (tiles_h, tiles_w) = (h.div_ceil(M), w.div_ceil(M));
    let tiles = batch * tiles_h * tiles_w;

    // 1. Input transform: V laid out [tile][p][c], so each tile owns a contiguous chunk.
    scratch.v.resize(tiles * T * T * c_n, 0.0);
    crate::team::for_each_chunk_mut(&mut scratch.v, T * T * c_n, |t, v| {
        with_zeros(c_n, |zeros| {
            with_tile_scratch(T * T * c_n, |tmp| {
                let n = t / (tiles_h * tiles_w);
                let (ty, tx) = ((t / tiles_w) % tiles_h, t % tiles_w);
                let tile = InputTile {
                    input,
                    shape: (n, h, w, c_n),
                    origin: (ty * M, tx * M),
                    zeros,
                };
                // SAFETY: the line comes from a PackedB, which is only built for kernels this
                // CPU runs, so the target features the transform is compiled for are present.
                unsafe { input_transform(&tile, tmp, v) };
            })
        })
    });

    // 2. The 36 GEMMs, M laid out [p][tile][k]: M[p] = V[·][p][·] · U[p]. They run in
    //    parallel with each other, each on one thread (a region inside a team region runs on its
    //    thread): at batch 1 a single GEMM is too small to keep two cores busy.
    scratch.m.resize(tiles * T * T * k_n, 0.0);
    let v = &scratch.v;
    crate::team::for_each_chunk_mut(&mut scratch.m, tiles * k_n, |p, mp| {
        let u = &weights.packed[p];
        let a = ASource::Matrix {
            data: &v[p * c_n..],
            rows: tiles,
            lda: T * T * c_n,
        };
        sgemm_packed(&a, u, mp, k_n, &Epilogue::default());
    });

    // 3. Output transform with the epilogue, one band of 4 output rows of one image per task.
    let m = &scratch.m;
    // Per image, then per band (at batch 1 the outer region has one item and runs on the caller,
    // so the bands get the team).
    crate::team::for_each_chunk_mut(out, h * w * k_n, |n, image| {
        crate::team::for_each_chunk_mut(image, M * w * k_n, |ty, band| {
            with_tile_scratch((T * M + M * M) * k_n, |buf| {
                for tx in 0..tiles_w {
                    let t = (n * tiles_h + ty) * tiles_w + tx;
                    let (tmp, y) = buf.split_at_mut(T * M * k_n);
                    let mut tile = OutputTile {
                        band: &mut *band,
                        at: (n, ty * M, tx * M),
                        shape: (h, w, k_n),
                        epi,
                    };
                    // SAFETY: as for the input transform.
                    unsafe { output_transform(&m[t * k_n..], tiles * k_n, tmp, y, &mut tile) };
                }
            })
        });
    });
}

/// The 6x6 input tile whose top-left output is `origin` (input rows and columns from one
/// before it), read where it lies in the NHWC input: each pixel's `C` channels, or `zeros`
/// outside the image. The transform's first pass reads the pixels from here, so the tile is
/// never copied (the copy was about 2% of `native` at batch 8 on the Xeon 167).
pub(crate) struct InputTile<'a> {
    input: &'a [f32],
    /// `(image, height, width, channels)`.
    shape: (usize, usize, usize, usize),
    origin: (usize, usize),
    /// `C` zeros.
    zeros: &'a [f32],
}

impl InputTile<'_> {
    /// The channels of tile pixel `(i, j)`.
    #[inline(always)]
    fn pixel(&self, i: usize, j: usize) -> &[f32] {
        let (n, h, w, c_n) = self.shape;
        let (y, x) = (self.origin.0 + i, self.origin.1 + j);
        if y == 0 || x == 0 || y > h || x > w {
            return self.zeros;
        }
        &self.input[((n * h + y - 1) * w + x - 1) * c_n..][..c_n]
    }
}

/// Where a 4x4 output tile goes: its band of output rows (starting at row `y0` of image `n`),
/// `at = (n, y0, x0)`, the output's `(h, w, K)`, and the epilogue.
pub(crate) struct OutputTile<'a, 'e> {
    band: &'a mut [f32],
    at: (usize, usize, usize),
    shape: (usize, usize, usize),
    epi: &'a Epilogue<'e>,
}

/// Writes the valid part of a 4x4 output tile `y[(r·4 + q)·K + k]` into its band of rows,
/// applying bias, residual and ReLU. Inlined into the output transform, so that it is compiled
/// for the same kernel line (it had run as baseline SSE2 code: 2-4% of `native`).
#[inline(always)]
fn store_output_tile(y: &[f32], tile: &mut OutputTile<'_, '_>) {
    let ((n, y0, x0), (h, w, k_n), epi) = (tile.at, tile.shape, tile.epi);
    let band = &mut *tile.band;
    for r in 0..M.min(h - y0) {
        for q in 0..M.min(w - x0) {
            let dst = &mut band[(r * w + x0 + q) * k_n..][..k_n];
            let src = &y[(r * M + q) * k_n..][..k_n];
            dst.copy_from_slice(src);
            if let Some(b) = epi.bias {
                dst.iter_mut().zip(b).for_each(|(d, b)| *d += b);
            }
            if let Some((res, _)) = epi.residual {
                let at = (((n * h) + y0 + r) * w + x0 + q) * k_n;
                dst.iter_mut()
                    .zip(&res[at..at + k_n])
                    .for_each(|(d, r)| *d += r);
            }
            if epi.relu {
                dst.iter_mut().for_each(|d| *d = d.max(0.0));
            }
        }
    }
}

/// Channels per step of the 1-D transforms: one AVX-512 register, two AVX2 ones. Whole
/// fixed-size chunks compile to vector code with no runtime checks; a plain loop over `c`
/// indexing six strided rows had the compiler keep a scalar fallback, which is the one that
/// ran (`perf` on the Xeon 167: `vaddss`/`vmulss` were most of the input transform).
const LANES: usize = 16;

/// The `LANES` values at `x[at..]`.
#[inline(always)]
fn lanes(x: &[f32], at: usize) -> [f32; LANES] {
    x[at..at + LANES].try_into().expect("LANES values")
}

/// `Bᵀ x` for six channel vectors `x(s)` (`c_n` values each), written to `out[s·ostride ..]`.
#[inline(always)]
fn bt_1d<'x>(x: impl Fn(usize) -> &'x [f32], out: &mut [f32], ostride: usize, c_n: usize) {
    let rows: [&[f32]; T] = std::array::from_fn(|s| &x(s)[..c_n]);
    let full = c_n - c_n % LANES;
    for c in (0..full).step_by(LANES) {
        let d: [[f32; LANES]; T] = std::array::from_fn(|s| lanes(rows[s], c));
        let mut o = [[0.0f32; LANES]; T];
        for l in 0..LANES {
            let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
            o[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
            o[1][l] = -4.0 * (d1 + d2) + d3 + d4;
            o[2][l] = 4.0 * (d1 - d2) - d3 + d4;
            o[3][l] = 2.0 * (d3 - d1) - d2 + d4;
            o[4][l] = 2.0 * (d1 - d3) - d2 + d4;
            o[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
        }
        for (k, row) in o.iter().enumerate() {
            out[k * ostride + c..][..LANES].copy_from_slice(row);
        }
    }
    for c in full..c_n {
        let d = |s: usize| rows[s][c];
        let (d0, d1, d2, d3, d4, d5) = (d(0), d(1), d(2), d(3), d(4), d(5));
        out[c] = 4.0 * d0 - 5.0 * d2 + d4;
        out[ostride + c] = -4.0 * (d1 + d2) + d3 + d4;
        out[2 * ostride + c] = 4.0 * (d1 - d2) - d3 + d4;
        out[3 * ostride + c] = 2.0 * (d3 - d1) - d2 + d4;
        out[4 * ostride + c] = 2.0 * (d1 - d3) - d2 + d4;
        out[5 * ostride + c] = 4.0 * d1 - 5.0 * d3 + d5;
    }
}

/// `Aᵀ x` for six channel vectors, four outputs.
#[inline(always)]
fn at_1d(x: &[f32], stride: usize, out: &mut [f32], ostride: usize, c_n: usize) {
    let full = c_n - c_n % LANES;
    for c in (0..full).step_by(LANES) {
        let m: [[f32; LANES]; T] = std::array::from_fn(|s| lanes(x, s * stride + c));
        let mut o = [[0.0f32; LANES]; M];
        for l in 0..LANES {
            let (a, b) = (m[1][l] + m[2][l], m[1][l] - m[2][l]);
            let (p, q) = (m[3][l] + m[4][l], m[3][l] - m[4][l]);
            o[0][l] = m[0][l] + a + p;
            o[1][l] = b + 2.0 * q;
            o[2][l] = a + 4.0 * p;
            o[3][l] = b + 8.0 * q + m[5][l];
        }
        for (k, row) in o.iter().enumerate() {
            out[k * ostride + c..][..LANES].copy_from_slice(row);
        }
    }
    for c in full..c_n {
        let m = |s: usize| x[s * stride + c];
        let (m0, m1, m2, m3, m4, m5) = (m(0), m(1), m(2), m(3), m(4), m(5));
        let (a, b) = (m1 + m2, m1 - m2);
        let (p, q) = (m3 + m4, m3 - m4);
        out[c] = m0 + a + p;
        out[ostride + c] = b + 2.0 * q;
        out[2 * ostride + c] = a + 4.0 * p;
        out[3 * ostride + c] = b + 8.0 * q + m5;
    }
}

/// `V = Bᵀ d B` for one tile: columns first (read from the input, into `tmp`), then rows
/// (into `v`).
#[inline(always)]
fn input_transform_body(d: &InputTile<'_>, tmp: &mut [f32], v: &mut [f32]) {
    let c_n = d.shape.3;
    for j in 0..T {
        let column: [&[f32]; T] = std::array::from_fn(|i| d.pixel(i, j));
        bt_1d(|s| column[s], &mut tmp[j * c_n..], T * c_n, c_n);
    }
    for i in 0..T {
        let row = &tmp[i * T * c_n..][..T * c_n];
        bt_1d(|s| &row[s * c_n..][..c_n], &mut v[i * T * c_n..], c_n, c_n);
    }
}

/// `Y = Aᵀ M A` for one tile: `m[p·pstride + k]` -> `y[(r·4 + q)·K + k]`, then stored with
/// the epilogue into `tile`.
#[inline(always)]
fn output_transform_body(
    m: &[f32],
    pstride: usize,
    tmp: &mut [f32],
    y: &mut [f32],
    tile: &mut OutputTile<'_, '_>,
) {
    let k_n = tile.shape.2;
    // Columns: tmp[r][j] = Σ_i Aᵀ[r][i] m[i][j]  (4 x 6).
    for j in 0..T {
        at_1d(
            &m[j * pstride..],
            T * pstride,
            &mut tmp[j * k_n..],
            T * k_n,
            k_n,
        );
    }
    // Rows: y[r][q] = Σ_j tmp[r][j] A[j][q].
    for r in 0..M {
        at_1d(&tmp[r * T * k_n..], k_n, &mut y[r * M * k_n..], k_n, k_n);
    }
    store_output_tile(y, tile);
}

/// Winograd's input transform as compiled for one f32 kernel line: `(tile, tmp, v)`.
/// Unsafe: the CPU must have the line's features (guaranteed for a line a `PackedB` holds).
pub(crate) type InputTransform = unsafe fn(&InputTile<'_>, &mut [f32], &mut [f32]);
/// Winograd's output transform and store as compiled for one f32 kernel line:
/// `(m, pstride, tmp, y, tile)`; unsafe as [`InputTransform`].
pub(crate) type OutputTransform =
    unsafe fn(&[f32], usize, &mut [f32], &mut [f32], &mut OutputTile<'_, '_>);

/// The transforms are plain loops over channels; these entry points let the compiler vectorise
/// them for the kernel line chosen at run time (the binary itself targets baseline x86-64).
pub(crate) const PORTABLE_TRANSFORMS: (InputTransform, OutputTransform) =
    (input_transform_body, output_transform_body);
/// The transforms compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX2_TRANSFORMS: (InputTransform, OutputTransform) =
    (simd_transforms::input_avx2, simd_transforms::output_avx2);
/// The transforms compiled for AVX-512 F.
#[cfg(target_arch = "x86_64")]
pub(crate) const AVX512_TRANSFORMS: (InputTransform, OutputTransform) = (
    simd_transforms::input_avx512,
    simd_transforms::output_avx512,
);

#[cfg(target_arch = "x86_64")]
mod simd_transforms {
    use super::{input_transform_body, output_transform_body, InputTile, OutputTile};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn input_avx512(d: &InputTile<'_>, tmp: &mut [f32], v: &mut [f32]) {
        input_transform_body(d, tmp, v)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_avx2(d: &InputTile<'_>, tmp: &mut [f32], v: &mut [f32]) {
        input_transform_body(d, tmp, v)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_avx512(
        m: &[f32],
        pstride: usize,
        tmp: &mut [f32],
        y: &mut [f32],
        tile: &mut OutputTile<'_, '_>,
    ) {
        output_transform_body(m, pstride, tmp, y, tile)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_avx2(
        m: &[f32],
        pstride: usize,
        tmp: &mut [f32],
        y: &mut [f32],
        tile: &mut OutputTile<'_, '_>,
    ) {
        output_transform_body(m, pstride, tmp, y, tile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::{im2col_nhwc, sgemm_naive, ConvGeometry};
    use proptest::prelude::*;

    /// Direct convolution (im2col + the f64 naive GEMM) with the same epilogue.
    fn direct(
        input: &[f32],
        shape: Conv3x3Shape,
        w_oihw: &[f32],
        c_n: usize,
        k_n: usize,
        epi: &Epilogue<'_>,
    ) -> Vec<f32> {
        let g = ConvGeometry {
            batch: shape.batch,
            in_h: shape.h,
            in_w: shape.w,
            in_c: c_n,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let cols = im2col_nhwc(input, &g);
        // B[(kh·3 + kw)·C + c][k] from OIHW.
        let mut b = vec![0.0; 9 * c_n * k_n];
        for k in 0..k_n {
            for c in 0..c_n {
                for s in 0..9 {
                    b[(s * c_n + c) * k_n + k] = w_oihw[(k * c_n + c) * 9 + s];
                }
            }
        }
        let mut out = vec![0.0; g.m() * k_n];
        sgemm_naive(g.m(), k_n, 9 * c_n, &cols, 9 * c_n, &b, &mut out, k_n, epi);
        out
    }

    fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    fn isas() -> Vec<Isa> {
        Isa::supported()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Winograd against direct convolution over odd sizes (partial tiles at every edge),
        /// channel counts that are not multiples of any vector width, and every epilogue, on
        /// every ISA. Tolerance: 2e-4 relative to the output's largest magnitude. F(4x4, 3x3)'s
        /// transforms scale values by up to 8·8 and back, so its float error is a few ulps of
        /// that range (measured max here ~1e-5); an indexing mistake gives errors of order 1.
        #[test]
        fn matches_direct_convolution(
            batch in 1usize..3, h in 1usize..12, w in 1usize..12,
            c_n in 1usize..40, k_n in 1usize..40,
            bias in any::<bool>(), residual in any::<bool>(), relu in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let shape = Conv3x3Shape { batch, h, w };
            let input = values(batch * h * w * c_n, seed, 2.0);
            let wts = values(k_n * c_n * 9, seed ^ 1, 0.5);
            let b = values(k_n, seed ^ 2, 1.0);
            let res = values(batch * h * w * k_n, seed ^ 3, 1.0);
            let epi = Epilogue {
                bias: bias.then_some(&b[..]),
                residual: residual.then_some((&res[..], k_n)),
                relu,
            };
            let want = direct(&input, shape, &wts, c_n, k_n, &epi);
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for isa in isas() {
                let ww = WinogradWeights::new(&wts, c_n, k_n, isa);
                let mut out = vec![f32::NAN; want.len()];
                conv3x3_winograd(&input, shape, &ww, &epi, &mut out, &mut WinogradScratch::default());
                for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                    prop_assert!((g - e).abs() <= 2e-4 * scale, "{isa}: [{i}] {g} vs {e} (scale {scale})");
                }
            }
        }
    }

    #[test]
    fn resnet_sized_layer_error_is_small() {
        // layer1-like: 56x56x64 -> 64, the largest tile count of ResNet-18 at batch 1.
        let shape = Conv3x3Shape {
            batch: 1,
            h: 56,
            w: 56,
        };
        let (c_n, k_n) = (64, 64);
        let input = values(56 * 56 * c_n, 5, 2.0);
        let wts = values(k_n * c_n * 9, 6, 0.2);
        let epi = Epilogue::default();
        let want = direct(&input, shape, &wts, c_n, k_n, &epi);
        let isa = Isa::from_env_or_best().unwrap();
        let ww = WinogradWeights::new(&wts, c_n, k_n, isa);
        let mut out = vec![f32::NAN; want.len()];
        conv3x3_winograd(
            &input,
            shape,
            &ww,
            &epi,
            &mut out,
            &mut WinogradScratch::default(),
        );
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_err = out
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            max_err <= 1e-5 * scale.max(1.0) * 10.0,
            "max error {max_err} at scale {scale}"
        );
    }
}
